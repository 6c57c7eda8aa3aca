"""Eval-only edits keep the upstream stages: the planner on the flagship example.

Data decontaminated against a set of benchmarks is clean for any subset of it, and fields no
stage reads (a benchmark's ``format``: decontamination never reads it) never reach a hash. At
the recipe's scale a needless curation hash change is the whole teacher bill and the whole
training run again. Each test fails on the planner that hashed the eval benchmark list and
its formats into curation.
"""

from __future__ import annotations

import copy
from typing import Any

from medsft_operator.api.kinds import MedSFTRun
from medsft_operator.builders.stage_resources import stage_resource
from medsft_operator.cli import load_documents
from medsft_operator.names import STAGE_HASH_FULL
from medsft_operator.plan import PreviousCuration, RunPlan, plan_run
from medsft_pipelines.specs.common import StorageSpec

from .conftest import EXAMPLES_DIR

STORAGE = StorageSpec(endpoint="minio.minio.svc:9000", bucket="medsft")


def _flagship() -> dict[str, Any]:
    (doc,) = load_documents(EXAMPLES_DIR / "medsft-run.yaml")
    doc["metadata"]["uid"] = "0b1e0c3a-0000-4000-8000-000000000001"
    return doc


def _plan(doc: dict[str, Any], previous: PreviousCuration | None = None) -> RunPlan:
    run = MedSFTRun.from_manifest(doc)
    if previous is None:  # the planner's first generation (and its signature before #22)
        return plan_run(run, default_storage=STORAGE)
    return plan_run(run, default_storage=STORAGE, previous=previous)


def _hashes(plan: RunPlan) -> dict[str, str]:
    return {s.stage: s.hash for s in plan.stages}


def _previous(doc: dict[str, Any], plan: RunPlan) -> PreviousCuration:
    """What the reconciler reads back: the CurationJob the generation created (its spec holds
    the effective benchmark list), and the hash annotated on it."""
    stage = plan.get("curation")
    assert stage is not None
    child = stage_resource(
        doc, plan, stage, name="octomed-7b-curation-g1", generation=1, upstream={}
    )
    found = PreviousCuration.of_child(child, child["metadata"]["annotations"][STAGE_HASH_FULL])
    assert found is not None
    return found


def _benchmarks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["eval"]["spec"]["benchmarks"]


def test_dropping_an_eval_only_benchmark_keeps_curation_and_sft() -> None:
    doc = _flagship()
    first = _plan(doc)
    previous = _previous(doc, first)
    assert "nejm" in {b.name for b in previous.benchmarks}
    edited = copy.deepcopy(doc)
    edited["spec"]["eval"]["spec"]["benchmarks"] = [
        b for b in _benchmarks(doc) if b["name"] != "nejm"
    ]
    second = _plan(edited, previous)
    before, after = _hashes(first), _hashes(second)
    assert after["curation"] == before["curation"] and after["sft"] == before["sft"]
    assert after["eval"] != before["eval"] and second.key != first.key  # eval re-runs
    # Adding it back: the data was decontaminated against it, still nothing upstream.
    third = _plan(doc, _previous(edited, second))
    assert _hashes(third)["curation"] == before["curation"]
    # A curation edit with the drop: curation re-runs anyway, against exactly what is needed.
    edited["spec"]["curation"]["spec"]["seed"] = 1
    fourth = _plan(edited, previous)
    stage = fourth.get("curation")
    assert stage is not None and stage.hash != before["curation"]
    assert stage.spec is not None
    protected = {b.name for b in stage.spec.decontamination.benchmarks}
    assert "nejm" not in protected and "medqa" in protected


def test_a_benchmarks_format_reaches_no_upstream_hash() -> None:
    doc = _flagship()
    first = _plan(doc)
    edited = copy.deepcopy(doc)
    next(b for b in _benchmarks(edited) if b["name"] == "medqa")["format"] = "parquet"
    second = _plan(edited)  # no previous generation needed: format is simply not hashed
    before, after = _hashes(first), _hashes(second)
    assert after["curation"] == before["curation"] and after["sft"] == before["sft"]
    assert after["eval"] != before["eval"]  # the eval loader reads it


def test_adding_a_benchmark_the_data_was_not_checked_against_re_runs_curation() -> None:
    doc = _flagship()
    first = _plan(doc)
    edited = copy.deepcopy(doc)
    _benchmarks(edited).append({"name": "mmlu-medical", "distribution": "out"})
    second = _plan(edited, _previous(doc, first))
    before, after = _hashes(first), _hashes(second)
    assert after["curation"] != before["curation"] and after["sft"] != before["sft"]
    stage = second.get("curation")
    assert stage is not None and stage.spec is not None
    assert "mmlu-medical" in {b.name for b in stage.spec.decontamination.benchmarks}


def test_teacher_retry_and_cache_settings_reach_no_hash() -> None:
    """How often a request is sent and where responses are cached change no response, so
    editing them starts no generation (on the old code the retry fields were hashed)."""
    doc = _flagship()
    first = _plan(doc)
    edited = copy.deepcopy(doc)
    teachers = edited["spec"]["curation"]["spec"]["teachers"]
    teachers["text"]["retry"] = {"attempts": 5, "timeoutSeconds": 3600, "backoffSeconds": 30}
    teachers["cache"] = {"scope": "Bucket"}
    assert _hashes(_plan(edited)) == _hashes(first)
