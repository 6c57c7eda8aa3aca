"""`medsft render`, `medsft crds` and `medsft rbac`: what they print is what the cluster
accepts and what the operator and the chart use."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medsft_operator import names, rbac
from medsft_operator.api.crdgen import crd_manifests
from medsft_operator.cli import LEASE_NAME_PLACEHOLDER, app

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _pod_templates(doc: dict) -> list[dict]:
    if doc["kind"] == "Job":
        return [doc["spec"]["template"]]
    if doc["kind"] == "PyTorchJob":
        return [r["template"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    return []


def _eval_spec(doc: dict) -> dict:
    """The evaluation spec of an EvalJob or a run, as the example wrote it."""
    spec = doc["spec"]
    return spec if doc["kind"] == "EvalJob" else spec.get("eval", {}).get("spec", {})


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_rendered_children_are_accepted_by_the_apiserver(
    cli, kube, medsft_crds, kubeflow_crds, namespace, tmp_path, monkeypatch, example
):
    monkeypatch.setenv("MEDSFT_JOB_SERVICE_ACCOUNT", "medsft-job")
    monkeypatch.setenv("MEDSFT_DEFAULT_IMAGE", "registry.example/medsft-trainer:1.2.3")
    monkeypatch.setenv("MEDSFT_EVAL_IMAGE", "registry.example/medsft-eval:1.2.3")
    doc = yaml.safe_load(example.read_text())
    doc["metadata"]["namespace"] = namespace
    file = tmp_path / example.name
    file.write_text(yaml.safe_dump(doc))

    result = cli.invoke(app, ["render", str(file)])
    assert result.exit_code == 0, result.output
    children = [c for c in yaml.safe_load_all(result.stdout) if c]
    assert children
    assert all(c["metadata"]["namespace"] == namespace for c in children)
    assert all(c["metadata"].get("ownerReferences") for c in children)
    pods = [t for c in children for t in _pod_templates(c)]
    assert pods, "every example starts at least one pod"
    for pod in pods:
        # Stage pods run without Kubernetes credentials, as the chart's job account.
        assert pod["spec"]["serviceAccountName"] == "medsft-job"
        assert pod["spec"]["automountServiceAccountToken"] is False
        images = {c["image"] for c in pod["spec"]["containers"]}
        # Evaluation with vLLM runs on the eval image (ADR 0005), every other pod on the trainer's.
        vllm = pod["metadata"]["labels"][names.OWNER_KIND] == "EvalJob" and (
            (_eval_spec(doc).get("generation") or {}).get("backend") == "vllm"
        )
        default = f"registry.example/medsft-{'eval' if vllm else 'trainer'}:1.2.3"
        assert images <= {default, doc["spec"].get("image")}

    applied = kube.kubectl(
        "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
        input=result.stdout, check=False,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert len(applied.stdout.splitlines()) == len(children)


def test_render_refuses_an_invalid_manifest(cli, tmp_path):
    doc = yaml.safe_load((REPO / "examples" / "sftjob.yaml").read_text())
    doc["spec"]["nodes"] = 0
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(doc))
    result = cli.invoke(app, ["render", str(file)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "spec.nodes" in result.stderr and "nothing rendered" in result.stderr


def test_crds_prints_every_generated_crd(cli):
    result = cli.invoke(app, ["crds"])
    assert result.exit_code == 0
    printed = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert printed == crd_manifests()


def test_crds_write_to_several_folders_reproduces_the_checked_in_files(cli, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    (first).mkdir()
    (first / "medsft.io_stale.yaml").write_text("old kind")  # a kind that no longer exists
    result = cli.invoke(app, ["crds", "--write", str(first), "--write", str(second)])
    assert result.exit_code == 0, result.output
    checked_in = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    for folder in (first, second):
        assert {p.name: p.read_text() for p in folder.glob("*.yaml")} == checked_in


def test_rbac_prints_the_operators_rules(cli, tmp_path):
    result = cli.invoke(app, ["rbac"])
    assert result.exit_code == 0
    printed = yaml.safe_load(result.stdout)
    assert printed == {
        "clusterRules": rbac.cluster_rules(),
        "namespacedRules": rbac.namespaced_rules(),
        "leaderElectionRules": rbac.leader_election_rules(LEASE_NAME_PLACEHOLDER),
    }
    target = tmp_path / "files" / "rbac.yaml"
    written = cli.invoke(app, ["rbac", "--write", str(target)])
    assert written.exit_code == 0
    assert target.read_text() == result.stdout
