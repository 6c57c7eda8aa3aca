"""Bad input at volume: hypothesis generates medsft resources — the shipped examples, as
they are and mutated (fields deleted, nulled, retyped, pushed out of range, emptied,
duplicated, unknown fields added), and with the fields that end up in the stage pods drawn
from generators of their own (resources, tolerations, nodeSelector, image, GPU counts,
model URIs, the resource's labels) — and checks, against the real apiserver with the
checked-in CRDs:

1. ``medsft validate`` (offline) and the apiserver (server-side dry run with strict field
   validation, what ``kubectl apply`` does) agree on the resource: both accept, or both
   refuse — or validate refuses only for what Kubernetes refuses in the children (pod-level
   rules the apiserver applies to a Job's pod template, not to a custom resource), and then
   the apiserver does refuse a rendered child;
2. everything validate accepts renders (``medsft render``) into children — stage resources,
   Jobs, PyTorchJobs, TrainJobs, ConfigMaps — that the apiserver admits, their pod templates
   included (a PyTorchJob's or TrainJob's pod template is checked as a core/v1 PodTemplate:
   the Kubeflow CRDs do not apply the pod rules, the pods their controllers create would).

Generation is derandomized (the same examples on every run, no example database written)
so that a failure reproduces; a failure prints the mutated document.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client

from medsft_operator.cli import validate_documents
from medsft_operator.plan import PlanError
from medsft_operator.render import children_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
KINDS = {
    "MedSFTRun": "medsftruns",
    "CurationJob": "curationjobs",
    "SFTJob": "sftjobs",
    "EvalJob": "evaljobs",
}
DOCS = [
    doc
    for path in sorted(EXAMPLES.glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc and doc.get("kind") in KINDS
]
Path_ = tuple[str | int, ...]


def _paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every place in ``node`` (a spec): dict keys and list items, at any depth."""
    found: list[Path_] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*prefix, key))
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((*prefix, index))
            found += _paths(value, (*prefix, index))
    return found


def _parent(doc: dict[str, Any], path: Path_) -> Any:
    node: Any = doc["spec"]
    for step in path[:-1]:
        node = node[step]
    return node


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.sampled_from([-1, 0, 1, 2, 7, 65536, 2**31, 2**53]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(
        ["", "x", "0", "-1", "1.5", "s3://", "s3://b/k", "UPPER", "a" * 300, "http://h/v1"]
    ),
    st.text(max_size=12),
    st.just([]),
    st.just({}),
    st.just(["x"]),
    st.just({"unknownField": 1}),
)


@st.composite
def medsft_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(DOCS)))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        places = _paths(doc["spec"])
        if not places:
            break
        path = draw(st.sampled_from(places))
        parent, last = _parent(doc, path), path[-1]
        action = draw(st.sampled_from(["delete", "replace", "replace", "duplicate", "unknown"]))
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(ODD_VALUES)
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        elif isinstance(parent, dict):
            parent[f"unknown{draw(st.integers(0, 9))}"] = draw(ODD_VALUES)
    return doc


# ------------------------------------------------------------------ pod-level generators

QUANTITIES = st.sampled_from([0, 1, 2, 8, -1, "0", "1", "2", "500m", "1.5", "16Gi", "64Gi", "lots"])
RESOURCE_NAMES = st.sampled_from(
    ["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu", "example.com/fpga", "gpu", "a b/c"]
)
LABEL_KEYS = st.sampled_from(
    ["pool", "nvidia.com/gpu.product", "team", "bad key!", "a/b/c", "x" * 64, "Example.com/x"]
)
LABEL_VALUES = st.sampled_from(["a", "H100-80GB", "", "a b", "a/b", "x" * 64, "-x"])
IMAGES = st.sampled_from(
    [
        "registry.example.org/ml/trainer:0.1.0",
        "localhost:5000/trainer@sha256:" + "a" * 64,
        "trainer",
        "Registry.example.org/ml/trainer:1",
        "registry.example.org/ML/trainer",
        "trainer:1 ",
        "a b",
        "trainer:-x",
    ]
)
MODEL_URIS = st.sampled_from(
    ["s3://models/qwen", "file:///models/qwen", "models/qwen", "hf://Qwen/Qwen2.5", "https://x/m"]
)


@st.composite
def tolerations(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in (
        ("key", [None, "nvidia.com/gpu", "gpu", "bad key"]),
        ("operator", [None, "Exists", "Equal"]),
        ("value", [None, "", "x", "a/b"]),
        ("effect", [None, "NoSchedule", "NoExecute", "PreferNoSchedule"]),
        ("tolerationSeconds", [None, 0, 30]),
    ):
        value = draw(st.sampled_from(values))
        if value is not None:
            out[name] = value
    return out


def _stage_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The stage specs of ``doc`` (itself, or a run's inline stages), with the GPU count's name."""
    if doc["kind"] != "MedSFTRun":
        return [doc["spec"]]
    return [
        stage["spec"]
        for name in ("curation", "sft", "eval")
        if isinstance(stage := doc["spec"].get(name), dict) and isinstance(stage.get("spec"), dict)
    ]


@st.composite
def pod_level_documents(draw: st.DrawFn) -> dict[str, Any]:
    """An example with pod-level fields of one stage (and the resource's labels) drawn."""
    doc = copy.deepcopy(draw(st.sampled_from(DOCS)))
    spec = draw(st.sampled_from(_stage_specs(doc)))
    field = draw(
        st.sampled_from(
            ["resources", "tolerations", "nodeSelector", "image", "gpus", "uri", "labels"]
        )
    )
    if field == "resources":
        spec["resources"] = {
            part: draw(st.dictionaries(RESOURCE_NAMES, QUANTITIES, max_size=3))
            for part in ("requests", "limits")
        }
    elif field == "tolerations":
        spec.setdefault("scheduling", {})["tolerations"] = draw(st.lists(tolerations(), max_size=2))
    elif field == "nodeSelector":
        spec.setdefault("scheduling", {})["nodeSelector"] = draw(
            st.dictionaries(LABEL_KEYS, LABEL_VALUES, min_size=1, max_size=2)
        )
    elif field == "image":
        target = doc["spec"] if doc["kind"] == "MedSFTRun" and draw(st.booleans()) else spec
        target["image"] = draw(IMAGES)
    elif field == "gpus":
        count = "gpusPerNode" if "training" in spec else "gpus"
        spec[count] = draw(st.sampled_from([1, 2, 4]))
        limit = draw(st.sampled_from([None, 1, 2, 4, "4"]))
        if limit is not None:
            spec.setdefault("resources", {}).setdefault("limits", {})["nvidia.com/gpu"] = limit
        if "training" in spec:  # keep the batch divisible: the rule tested is the GPUs'
            spec["training"]["microBatchSize"] = 1
            spec["training"]["globalBatchSize"] = spec.get("nodes", 1) * spec[count] * 4
    elif field == "uri":
        for source in ("model", "baseline"):
            if isinstance(spec.get(source), dict) and "uri" in spec[source]:
                spec[source]["uri"] = draw(MODEL_URIS)
    else:
        doc["metadata"]["labels"] = draw(st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=2))
    if "backend" not in spec and "training" in spec and draw(st.booleans()):
        spec["backend"] = "TrainJob"
    return doc


def _offline_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{p.path}: {p.message}" for p in validate_documents([doc]) if p.severity == "error"]


def _server_errors(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> list[str]:
    """What the apiserver says to a strict server-side dry-run create (nothing: accepted)."""
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "medsft.io",
            "v1alpha1",
            namespace,
            KINDS[doc["kind"]],
            doc,
            dry_run="All",
            field_validation="Strict",
        )
    except client.ApiException as exc:
        return [str(json.loads(exc.body).get("message", exc.reason))]
    return []


def _storages_without_endpoint(node: Any) -> bool:
    if isinstance(node, dict):
        if isinstance(node.get("storage"), dict) and not node["storage"].get("endpoint"):
            return True
        return any(_storages_without_endpoint(v) for v in node.values())
    if isinstance(node, list):
        return any(_storages_without_endpoint(v) for v in node)
    return False


def _has_null(node: Any) -> bool:
    if node is None:
        return True
    if isinstance(node, dict):
        return any(_has_null(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_null(v) for v in node)
    return False


def as_pod_templates(child: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod templates inside a PyTorchJob or TrainJob as core/v1 PodTemplates, so that the
    apiserver applies the pod rules to them (a TrainJob's: its runtime patch with the
    trainer's image and resources in the ``node`` container, as Trainer merges them)."""
    templates = []
    if child["kind"] == "PyTorchJob":
        templates = [r["template"] for r in child["spec"]["pytorchReplicaSpecs"].values()]
    elif child["kind"] == "TrainJob":
        trainer = child["spec"]["trainer"]
        for patch in child["spec"]["runtimePatches"]:
            for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
                template = copy.deepcopy(job["template"]["spec"]["template"])
                node = template["spec"]["containers"][0]
                node["image"] = trainer["image"]
                node["resources"] = trainer["resourcesPerNode"]
                templates.append(template)
    name = child["metadata"]["name"]
    return [
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{name}-{i}", "namespace": child["metadata"]["namespace"]},
            "template": template,
        }
        for i, template in enumerate(templates)
    ]


def _child_errors(kube, namespace: str, doc: dict[str, Any]) -> list[str]:
    """What a strict server-side dry run says to the children of ``doc`` (one kubectl call
    for all of them: an error per refused child)."""
    doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    try:
        children = children_of(doc, generation=2)
    except PlanError as error:
        # Known, by design: a `storage` without an endpoint is valid (the field is optional),
        # and the operator reports StorageNotConfigured at run time instead of rendering.
        if error.reason == "StorageNotConfigured" and _storages_without_endpoint(doc["spec"]):
            return []
        raise
    sent = []
    for child in children:
        child["metadata"].pop("uid", None)
        sent += [child, *as_pod_templates(child)]
    result = kube.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-f", "-",
        input="\n---\n".join(json.dumps(c) for c in sent), check=False,
    )  # fmt: skip
    # Warnings are admissions (e.g. a fractional byte value such as memory: 500m, rounded up).
    return [
        line
        for line in result.stderr.splitlines()
        if line.strip() and not line.startswith("Warning: ")
    ]


#: How validate says that Kubernetes refuses a child (not the resource itself).
CHILD_REFUSAL = "Kubernetes would refuse"


@pytest.fixture(scope="module")
def property_namespace(kube) -> str:
    name = f"prop-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(kube.api_client()).create_namespace({"metadata": {"name": name}})
    return name


def test_the_examples_are_all_generated_from():
    assert {d["kind"] for d in DOCS} == set(KINDS)


PROPERTY_SETTINGS = settings(
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is API calls
    report_multiple_bugs=True,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check_agreement(kube, namespace: str, doc: dict[str, Any]) -> None:
    """Validate and the apiserver agree on ``doc`` (or validate refuses only what the
    apiserver refuses in its children), and what validate accepts renders admitted children."""
    api = kube.api_client()
    offline = _offline_errors(doc)
    server = _server_errors(api, namespace, doc)
    listing = yaml.safe_dump(doc, sort_keys=False)
    if offline and not server and _has_null(doc["spec"]):
        # Known, open: the apiserver prunes a null of a non-nullable field as if it were
        # absent (so `kubectl apply` takes such a file); the models refuse the null.
        return
    if offline and all(CHILD_REFUSAL in e for e in offline):
        assert not server, f"offline: {offline}\nserver: {server}\n{listing}"
        refused = _child_errors(kube, namespace, doc)
        assert refused, f"validate refuses children the apiserver admits: {offline}\n{listing}"
        return
    assert bool(offline) == bool(server), (
        f"medsft validate {'refuses' if offline else 'accepts'} but the apiserver "
        f"{'refuses' if server else 'accepts'}:\noffline: {offline}\nserver: {server}\n{listing}"
    )
    if not offline:
        assert _child_errors(kube, namespace, doc) == [], listing


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(doc=medsft_documents())
def test_validate_and_the_apiserver_agree_and_accepted_specs_render_valid_children(
    kube, medsft_crds, kubeflow_crds, property_namespace, doc
):
    check_agreement(kube, property_namespace, doc)


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(doc=pod_level_documents())
def test_pod_level_fields_validate_accepts_render_children_the_apiserver_admits(
    kube, medsft_crds, kubeflow_crds, property_namespace, doc
):
    check_agreement(kube, property_namespace, doc)
