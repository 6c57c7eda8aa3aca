"""`medsft plan`: what an edit re-runs, said before it is applied (issue 22).

Offline against another file, and against the live resource's children (built here by the
operator's own builders, as the reconciler would have created them; reading them from a
cluster is :mod:`medsft_operator.cli.cluster`'s, tested with the status command).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from medsft_operator.api.kinds import MedSFTRun
from medsft_operator.builders.stage_resources import stage_resource
from medsft_operator.cli import app, load_documents
from medsft_operator.cli.plan import live_changes
from medsft_operator.plan import plan_run
from medsft_pipelines.specs.common import StorageSpec

from .conftest import EXAMPLES_DIR


def _flagship() -> dict[str, Any]:
    (doc,) = load_documents(EXAMPLES_DIR / "medsft-run.yaml")
    return doc


def _without(doc: dict[str, Any], benchmark: str) -> dict[str, Any]:
    edited = copy.deepcopy(doc)
    bench = edited["spec"]["eval"]["spec"]["benchmarks"]
    edited["spec"]["eval"]["spec"]["benchmarks"] = [b for b in bench if b["name"] != benchmark]
    return edited


def _rows(output: str) -> dict[str, tuple[str, str]]:
    """``{stage: (verdict, why)}`` of the printed table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 3 and cells[0] in ("curation", "sft", "eval"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_plan_against_a_file_says_an_eval_only_edit_re_runs_only_eval(cli, tmp_path: Path):
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(yaml.safe_dump(_flagship()))
    new.write_text(yaml.safe_dump(_without(_flagship(), "nejm")))
    result = cli.invoke(app, ["plan", str(new), "--against", str(old)])
    assert result.exit_code == 0, result.output
    assert _rows(result.stdout) == {
        "curation": ("reused", "unchanged: reused"),
        "sft": ("reused", "unchanged: reused"),
        "eval": ("re-runs", "its spec changed"),
    }

    seeded = _flagship()
    seeded["spec"]["curation"]["spec"]["seed"] = 7
    new.write_text(yaml.safe_dump(seeded))
    result = cli.invoke(app, ["plan", str(new), "--against", str(old)])
    assert result.exit_code == 0, result.output
    rows = _rows(result.stdout)
    assert [verdict for verdict, _ in rows.values()] == ["re-runs"] * 3
    assert rows["curation"][1] == "its spec changed" and rows["sft"][1].startswith("curation")


def test_live_changes_read_the_latest_generations_children() -> None:
    """A run that leaves storage to the operator's default: the children carry the storage
    the operator resolved, so the CLI's hashes compare with the operator's."""
    doc = _flagship()
    del doc["spec"]["storage"]
    doc["metadata"]["uid"] = "0b1e0c3a-0000-4000-8000-000000000002"
    operator_default = StorageSpec(endpoint="minio.storage.svc:9000", bucket="team-a")
    plan = plan_run(MedSFTRun.from_manifest(doc), default_storage=operator_default)
    children: dict[str, dict[str, Any]] = {}
    upstream: dict[str, str] = {}
    for stage in plan.stages:
        name = f"octomed-7b-{stage.stage}-g1"
        children[stage.stage] = stage_resource(
            doc,
            plan,
            stage,
            name=name,
            generation=1,
            upstream=upstream,  # type: ignore[arg-type]
        )
        upstream[stage.stage] = name
    unchanged = live_changes(MedSFTRun.from_manifest(doc), children)  # type: ignore[arg-type]
    assert [c.reruns for c in unchanged] == [False, False, False]
    dropped = live_changes(MedSFTRun.from_manifest(_without(doc, "nejm")), children)  # type: ignore[arg-type]
    assert [(c.stage, c.reruns) for c in dropped] == [
        ("curation", False),
        ("sft", False),
        ("eval", True),
    ]
