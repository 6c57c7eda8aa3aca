"""What the builders produce for the shipped examples is accepted by the real apiserver:
the stage resources by the generated CRDs, the PyTorchJob by the upstream Kubeflow CRD, the
Jobs and ConfigMaps by the built-in schemas (server-side dry run: validated, not stored)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medsft_operator.render import children_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def server_dry_run(kube, manifest: dict) -> dict:  # type: ignore[no-untyped-def]
    """``kubectl create --dry-run=server`` of ``manifest``: what the apiserver (schemas,
    webhooks, defaults) would store; fails with the apiserver's message."""
    manifest["metadata"].pop("uid", None)  # render's placeholder; the apiserver assigns one
    result = kube.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-",
        input=json.dumps(manifest), check=False,
    )  # fmt: skip
    what = f"{manifest['kind']} {manifest['metadata']['name']}"
    assert result.returncode == 0, f"{what}: {result.stderr}"
    return json.loads(result.stdout)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_rendered_children_of_every_example_pass_server_side_validation(
    kube, namespace, medsft_crds, kubeflow_crds, example
):
    children = []
    for doc in yaml.safe_load_all((EXAMPLES / example).read_text()):
        if not doc:
            continue
        doc["metadata"]["namespace"] = namespace
        children += children_of(doc, generation=3)
    assert children, f"{example} renders nothing"
    kinds = {c["kind"] for c in children}
    assert kinds & {"Job", "PyTorchJob"}, kinds
    for child in children:
        created = server_dry_run(kube, child)
        assert created["metadata"]["name"] == child["metadata"]["name"]
        if child["kind"] == "PyTorchJob":  # nothing pruned: every field we set is in the schema
            assert created["spec"]["pytorchReplicaSpecs"] == child["spec"]["pytorchReplicaSpecs"]
            policy = dict(created["spec"]["runPolicy"])
            if "suspend" not in child["spec"]["runPolicy"]:
                # The upstream CRD's schema default; the operator itself never writes false.
                assert policy.pop("suspend", False) is False
            assert policy == child["spec"]["runPolicy"]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_trainjob_rendered_for_the_examples_passes_server_side_validation(
    kube, namespace, medsft_crds, trainer, helm_bin, tmp_path, example
):
    """The TrainJob backend: each example's SFT rendered as a TrainJob is accepted by the
    upstream v2.3.0 CRD and by the real Trainer's admission webhooks (which resolve its
    runtimeRef against the ClusterTrainingRuntime the chart installs), nothing pruned."""
    from controller.test_trainjob import chart_runtime

    from medsft_operator.config import OperatorConfig

    runtime = chart_runtime(helm_bin, tmp_path)
    kube.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(runtime)
    )
    config = OperatorConfig.from_env().model_copy(update={"default_sft_backend": "TrainJob"})
    jobs = []
    for doc in yaml.safe_load_all((EXAMPLES / example).read_text()):
        if doc:
            doc["metadata"]["namespace"] = namespace
            jobs += [
                c for c in children_of(doc, generation=3, config=config) if c["kind"] == "TrainJob"
            ]
    if example in ("curationjob.yaml", "evaljob.yaml"):
        assert not jobs
        return
    assert jobs, f"{example} renders no TrainJob"
    for job in jobs:
        created = server_dry_run(kube, job)
        assert created["spec"]["trainer"] == job["spec"]["trainer"]
        (patch,) = created["spec"]["runtimePatches"]
        patch.pop("time", None)  # set by Trainer's defaulting webhook
        assert [patch] == job["spec"]["runtimePatches"]
