"""The CRDs in the real apiserver: examples accepted, malformed manifests rejected by field.

Every manifest goes through `kubectl apply` exactly as a user (or a GitOps tool) sends it,
so these tests also pin the unknown-field policy: kubectl's default strict field
validation rejects them (see docs/api.md).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from medsft_operator.api import KINDS

from .conftest import EXAMPLES_DIR

BY_KIND = {kind.__name__: kind for kind in KINDS}
API = "medsft.io/v1alpha1"
SOURCE = {"name": "pubmedqa", "uri": "s3://raw/pubmedqa/", "task": "mcq"}

MINIMAL: dict[str, dict[str, Any]] = {
    "SFTJob": {
        "model": {"uri": "s3://models/qwen"},
        "dataset": {"manifestUri": "s3://data/ds/manifest.json"},
    },
    "CurationJob": {"sources": [SOURCE], "tracesFrom": {}, "processor": {"model": "s3://models/q"}},
    "EvalJob": {"model": {"uri": "s3://models/qwen"}, "benchmarks": [{"name": "medqa"}]},
    "MedSFTRun": {
        "curation": {"spec": {"sources": [SOURCE], "tracesFrom": {}}},
        "sft": {"spec": {"model": {"uri": "s3://models/qwen"}}},
        "eval": {"spec": {"benchmarks": [{"name": "medqa"}]}},
    },
}


def manifest(kind: str, name: str = "x", **spec_overrides: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL[kind])
    spec.update(spec_overrides)
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}


def apply(kube, namespace: str, doc: dict[str, Any]):
    return kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)


def edit(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``spec.<path>`` (dotted, ints index lists) set to ``value``."""
    doc = copy.deepcopy(doc)
    node: Any = doc["spec"]
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for part in parents:
        node = node[part]
    node[last] = value
    return doc


def drop(doc: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of ``doc`` without ``spec.<path>``."""
    doc = copy.deepcopy(doc)
    node: Any = doc["spec"]
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for part in parents:
        node = node[part]
    del node[last]
    return doc


# --------------------------------------------------------------------------- examples


def _example_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}", doc)
        for path in sorted(EXAMPLES_DIR.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    ]


@pytest.mark.parametrize(("name", "doc"), _example_docs(), ids=[n for n, _ in _example_docs()])
def test_example_is_accepted_and_defaulted_like_the_models(kube, medsft_crds, namespace, name, doc):
    doc = copy.deepcopy(doc)
    doc["metadata"].pop("namespace", None)  # each test gets a fresh namespace
    result = apply(kube, namespace, doc)
    assert result.returncode == 0, result.stderr
    stored = json.loads(
        kube.kubectl(
            "get", "-n", namespace, doc["kind"].lower(), doc["metadata"]["name"], "-o", "json"
        ).stdout
    )
    # The apiserver fills in the same defaults as the models: `kubectl get` shows the
    # effective spec, and spec_hash over the stored spec equals spec_hash over the file.
    model = BY_KIND[doc["kind"]].model_validate(doc)
    assert stored["spec"] == model.spec.to_wire()


def test_get_medsft_lists_every_kind(kube, medsft_crds, namespace):
    for kind in MINIMAL:
        assert apply(kube, namespace, manifest(kind, name=f"m-{kind.lower()}")).returncode == 0
    out = kube.kubectl("get", "medsft", "-n", namespace).stdout
    for kind in MINIMAL:
        assert f"{kind.lower()}.medsft.io/m-{kind.lower()}" in out
    header = kube.kubectl("get", "msr", "-n", namespace).stdout.splitlines()[0].split()
    assert header[:4] == ["NAME", "GEN", "STAGE", "PHASE"]


def test_status_subresource_is_separate_from_spec(kube, medsft_crds, namespace):
    doc = manifest("SFTJob", name="status")
    assert apply(kube, namespace, doc).returncode == 0
    patch = {"status": {"phase": "Running", "step": 10, "totalSteps": 100, "progress": "10/100"}}
    kube.kubectl(
        "patch",
        "sftjob",
        "status",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
    # A status value outside its schema is rejected there too.
    bad = kube.kubectl(
        "patch",
        "sftjob",
        "status",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"phase": "Exploded"}}),
        check=False,
    )
    assert bad.returncode != 0 and "status.phase" in bad.stderr
    row = kube.kubectl("get", "sft", "status", "-n", namespace, "--no-headers").stdout.split()
    assert row[1:3] == ["Running", "10/100"]


# ------------------------------------------------------------------ malformed manifests


@dataclass(frozen=True)
class Bad:
    id: str
    doc: dict[str, Any]
    field: str  # the field path the apiserver's message must name
    message: str = ""  # and, when set, this text
    pydantic: bool = True  # the models reject it too (False: only the apiserver can tell)


SFT = manifest("SFTJob")
CJ = manifest("CurationJob")
EV = manifest("EvalJob")
MSR = manifest("MedSFTRun")
TEACHER = {"endpoint": "http://vllm:8000/v1", "model": "m"}
TEACHING_CJ = edit(drop(CJ, "tracesFrom"), "teachers", {"text": TEACHER})

MALFORMED = [
    # wrong types
    Bad("sft-epochs-string", edit(SFT, "training", {"epochs": "three"}), "spec.training.epochs"),
    Bad(
        "sft-packing-string",
        edit(SFT, "training", {"packing": "sometimes"}),
        "spec.training.packing",
    ),
    Bad("cj-sources-object", edit(CJ, "sources", {"name": "a"}), "spec.sources"),
    Bad("ev-benchmarks-string", edit(EV, "benchmarks", "medqa"), "spec.benchmarks"),
    # unknown enum values
    Bad(
        "sft-scheduler",
        edit(SFT, "training", {"scheduler": "exponential"}),
        "spec.training.scheduler",
        "Unsupported value",
    ),
    Bad("sft-zero-stage-1", edit(SFT, "deepspeed", {"zeroStage": 1}), "spec.deepspeed.zeroStage"),
    Bad(
        "cj-task", edit(CJ, "sources.0.task", "essay"), "spec.sources[0].task", "Unsupported value"
    ),
    Bad("ev-backend", edit(EV, "generation", {"backend": "tgi"}), "spec.generation.backend"),
    Bad(
        "ev-distribution",
        edit(EV, "benchmarks.0.distribution", "sideways"),
        "spec.benchmarks[0].distribution",
    ),
    Bad("msr-policy", edit(MSR, "retraining", {"policy": "Always"}), "spec.retraining.policy"),
    Bad("msr-artifact-policy", edit(MSR, "artifactPolicy", "Archive"), "spec.artifactPolicy"),
    Bad(
        "sft-toleration-operator",
        edit(SFT, "scheduling", {"tolerations": [{"key": "k", "operator": "Maybe"}]}),
        "spec.scheduling.tolerations[0].operator",
    ),
    # missing required fields
    Bad("sft-no-model", drop(SFT, "model"), "spec.model", "Required value"),
    Bad("cj-no-sources", drop(CJ, "sources"), "spec.sources", "Required value"),
    Bad(
        "cj-source-no-uri",
        drop(CJ, "sources.0.uri"),
        "spec.sources[0].uri",
        "Required value",
    ),
    Bad("msr-no-sft", drop(MSR, "sft"), "spec.sft", "Required value"),
    Bad("sft-no-dataset", drop(SFT, "dataset"), "spec.dataset", "dataset is required"),
    Bad("cj-no-processor", drop(CJ, "processor"), "spec.processor", "processor is required"),
    Bad("ev-no-model", drop(EV, "model"), "spec.model", "model is required"),
    # out of range / bad format
    Bad("sft-lr-zero", edit(SFT, "training", {"learningRate": 0}), "spec.training.learningRate"),
    Bad("sft-warmup", edit(SFT, "training", {"warmupRatio": 1.5}), "spec.training.warmupRatio"),
    Bad("sft-nodes-zero", edit(SFT, "nodes", 0), "spec.nodes"),
    Bad("cj-minhash", edit(CJ, "dedup", {"minhashThreshold": 1.5}), "spec.dedup.minhashThreshold"),
    Bad(
        "cj-samples-zero",
        edit(TEACHING_CJ, "teachers.text.samplesPerQuestion", 0),
        "spec.teachers.text.samplesPerQuestion",
    ),
    Bad(
        "ev-temperature", edit(EV, "generation", {"temperature": -1}), "spec.generation.temperature"
    ),
    Bad("ev-no-benchmarks", edit(EV, "benchmarks", []), "spec.benchmarks"),
    Bad(
        "cj-uri-scheme", edit(CJ, "sources.0.uri", "http://example.org/data"), "spec.sources[0].uri"
    ),
    Bad(
        "msr-endpoint-scheme",
        edit(MSR, "storage", {"endpoint": "http://minio:9000"}),
        "spec.storage.endpoint",
    ),
    Bad(
        "sft-quantity",
        edit(SFT, "resources", {"limits": {"memory": "lots"}}),
        "spec.resources.limits",
    ),
    Bad(
        "msr-name-too-long",
        {**MSR, "metadata": {"name": "r" * 41}},
        "metadata.name",
        "at most 40 characters",
    ),
    # one-of: both / neither
    Bad(
        "sft-dataset-both",
        edit(SFT, "dataset", {"manifestUri": "s3://data/m.json", "curationJobRef": {"name": "c"}}),
        "spec.dataset",
        "exactly one of curationJobRef or manifestUri",
    ),
    Bad(
        "sft-dataset-neither",
        edit(SFT, "dataset", {}),
        "spec.dataset",
        "exactly one of curationJobRef or manifestUri",
    ),
    Bad(
        "cj-teachers-and-traces",
        edit(CJ, "teachers", {"text": TEACHER}),
        "spec",
        "exactly one of teachers or tracesFrom",
    ),
    Bad(
        "cj-neither-teachers-nor-traces",
        drop(CJ, "tracesFrom"),
        "spec",
        "exactly one of teachers or tracesFrom",
    ),
    Bad(
        "cj-teachers-empty",
        edit(drop(CJ, "tracesFrom"), "teachers", {}),
        "spec.teachers",
        "at least one of text or image",
    ),
    Bad(
        "ev-model-both",
        edit(EV, "model", {"uri": "s3://m/x", "sftJobRef": {"name": "s"}}),
        "spec.model",
        "exactly one of sftJobRef or uri",
    ),
    Bad(
        "msr-curation-both",
        edit(
            MSR,
            "curation",
            {"ref": {"name": "c"}, "spec": MINIMAL["MedSFTRun"]["curation"]["spec"]},
        ),
        "spec.curation",
        "exactly one of ref",
    ),
    Bad(
        "msr-two-datasets",
        edit(MSR, "sft.spec.dataset", {"manifestUri": "s3://data/m.json"}),
        "spec.sft",
        "exactly one dataset",
    ),
    # other cross-field rules
    Bad(
        "sft-batch-not-divisible",
        edit(edit(SFT, "nodes", 3), "training", {"microBatchSize": 2}),
        "spec.training.globalBatchSize",
        "divisible",
    ),
    Bad(
        "sft-offload-params-zero2",
        edit(SFT, "deepspeed", {"zeroStage": 2, "offloadParams": True}),
        "spec.deepspeed.offloadParams",
        "requires zeroStage 3",
    ),
    Bad("cj-duplicate-sources", edit(CJ, "sources", [SOURCE, SOURCE]), "spec.sources", "unique"),
    Bad(
        "cj-pixels",
        edit(CJ, "images", {"minPixels": 500000}),
        "spec.images",
        "minPixels must not exceed maxPixels",
    ),
    Bad(
        "cj-bucket-fractions",
        edit(
            CJ,
            "lengths",
            {"buckets": [{"maxTokens": 100, "fraction": 0.6}, {"maxTokens": 200, "fraction": 0.6}]},
        ),
        "spec.lengths.buckets",
        "sum to at most 1",
    ),
    Bad(
        "ev-vllm-on-cpu",
        edit(edit(EV, "gpus", 0), "generation", {"backend": "vllm"}),
        "spec.generation.backend",
        "needs gpus",
    ),
    Bad(
        "msr-eval-model",
        edit(MSR, "eval.spec.model", {"uri": "s3://m/x"}),
        "spec.eval",
        "evaluates its own SFT model",
    ),
    Bad(
        "msr-promotion-without-eval",
        edit(drop(MSR, "eval"), "promotion", {"thresholds": [{"metric": "mean", "min": 0.5}]}),
        "spec.promotion",
        "needs an eval stage",
    ),
    # unknown fields (rejected under kubectl's default strict field validation)
    Bad("sft-unknown-top", edit(SFT, "trainig", {"epochs": 1}), "spec.trainig", "unknown field"),
    Bad(
        "msr-unknown-nested",
        edit(MSR, "sft.spec.training", {"lr": 0.1}),
        "spec.sft.spec.training.lr",
        "unknown field",
    ),
]


def test_table_is_big_enough():
    assert len(MALFORMED) >= 25
    assert len({bad.id for bad in MALFORMED}) == len(MALFORMED)


@pytest.mark.parametrize("bad", MALFORMED, ids=[b.id for b in MALFORMED])
def test_malformed_manifest_is_rejected_naming_the_field(kube, medsft_crds, namespace, bad):
    result = apply(kube, namespace, bad.doc)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert bad.field in result.stderr, result.stderr
    assert bad.message in result.stderr, result.stderr
    if bad.pydantic:
        with pytest.raises(ValidationError):
            BY_KIND[bad.doc["kind"]].model_validate(bad.doc)


# ----------------------------------------------------------------------- immutability

IMMUTABLE = [
    ("sft-model", SFT, edit(SFT, "model", {"uri": "s3://models/other"}), "spec.model"),
    ("sft-training", SFT, edit(SFT, "training", {"epochs": 1}), "spec.training"),
    ("sft-dataset", SFT, edit(SFT, "dataset", {"manifestUri": "s3://data/o.json"}), "spec.dataset"),
    ("cj-sources", CJ, edit(CJ, "sources", [{**SOURCE, "name": "other"}]), "spec.sources"),
    ("cj-traces-to-teachers", CJ, TEACHING_CJ, "spec.teachers"),
    ("ev-benchmarks", EV, edit(EV, "benchmarks", [{"name": "pubmedqa"}]), "spec.benchmarks"),
    ("msr-storage", MSR, edit(MSR, "storage", {"bucket": "other"}), "spec.storage"),
]


@pytest.mark.parametrize(
    ("case", "before", "after", "field"), IMMUTABLE, ids=[c[0] for c in IMMUTABLE]
)
def test_immutable_field_cannot_be_edited(kube, medsft_crds, namespace, case, before, after, field):
    assert apply(kube, namespace, before).returncode == 0
    result = apply(kube, namespace, after)
    assert result.returncode != 0, "edit of an immutable field was accepted"
    assert field in result.stderr and "immutable" in result.stderr, result.stderr


def test_runtime_fields_and_run_specs_stay_editable(kube, medsft_crds, namespace):
    assert apply(kube, namespace, SFT).returncode == 0
    moved = edit(SFT, "scheduling", {"queueName": "other-queue", "priorityClassName": "low"})
    result = apply(kube, namespace, edit(moved, "backoffLimit", 7))
    assert result.returncode == 0, result.stderr
    # Editing a MedSFTRun's recipe is how a team retrains: allowed.
    assert apply(kube, namespace, MSR).returncode == 0
    result = apply(kube, namespace, edit(MSR, "sft.spec.training", {"epochs": 2}))
    assert result.returncode == 0, result.stderr


def test_unknown_fields_are_rejected_when_strict_and_never_stored_otherwise(
    kube, medsft_crds, namespace
):
    """The documented policy (docs/api.md): Strict rejects; a client asking for less gets
    the field pruned (with a warning), so it is never stored or acted upon."""
    from kubernetes import client

    api = client.CustomObjectsApi(kube.api_client())
    body = edit(manifest("SFTJob", name="typo"), "trainig", {"epochs": 1})
    with pytest.raises(client.ApiException) as rejected:
        api.create_namespaced_custom_object(
            "medsft.io", "v1alpha1", namespace, "sftjobs", body, field_validation="Strict"
        )
    assert (
        rejected.value.status == 400 and 'unknown field \\"spec.trainig\\"' in rejected.value.body
    )
    created = api.create_namespaced_custom_object(
        "medsft.io", "v1alpha1", namespace, "sftjobs", body, field_validation="Ignore"
    )
    assert "trainig" not in created["spec"]
    stored = api.get_namespaced_custom_object("medsft.io", "v1alpha1", namespace, "sftjobs", "typo")
    assert "trainig" not in stored["spec"] and stored["spec"]["training"]["epochs"] == 3
