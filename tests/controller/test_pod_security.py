"""Every stage pod passes the `restricted` Pod Security Standard, enforced by the real
apiserver: the pod templates the operator renders for each example (curation workers and
merge, PyTorchJob master and workers, eval) become Pods created with a server-side dry run
in a namespace labelled ``pod-security.kubernetes.io/enforce: restricted`` (admission runs
in full on a dry run; nothing is stored). The operator's own pod is covered by the chart
tests (tests/chart/test_chart_cluster.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from medsft_operator.render import children_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Environment variables naming folders the stage processes write to.
WRITABLE_ENV = (
    "HOME",
    "TMPDIR",
    "MEDSFT_WORK_DIR",
    "MEDSFT_CACHE",
    "HF_HOME",
    "TORCH_EXTENSIONS_DIR",
)


@pytest.fixture
def restricted_namespace(kube, namespace) -> str:
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace


def pod_templates(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template in the rendered children, by ``Kind/name[/replica]``."""
    found = {}
    for child in children:
        where = f"{child['kind']}/{child['metadata']['name']}"
        if child["kind"] == "Job":
            found[where] = child["spec"]["template"]
        elif child["kind"] == "PyTorchJob":
            for replica, spec in child["spec"]["pytorchReplicaSpecs"].items():
                found[f"{where}/{replica}"] = spec["template"]
    return found


def rendered_pods(example: str, namespace: str) -> dict[str, dict[str, Any]]:
    children = []
    for doc in yaml.safe_load_all((EXAMPLES / example).read_text()):
        if doc:
            doc["metadata"]["namespace"] = namespace
            children += children_of(doc, generation=1)
    return pod_templates(children)


def dry_run_pod(kube, namespace: str, name: str, template: dict[str, Any]):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **template.get("metadata", {})},
        "spec": template["spec"],
    }
    return kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)


def _wait_default_service_account(kube, namespace: str) -> None:
    # Pod admission looks the ServiceAccount up; the controller makes `default` shortly
    # after the namespace.
    from controller.operator_harness import wait_for

    wait_for(
        lambda: kube.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
        what="the default ServiceAccount",
    )


def _create_priority_classes(kube, pods: dict[str, dict[str, Any]]) -> None:
    """Admission resolves a pod's priorityClassName: the cluster admin's classes, here."""
    for name in {t["spec"].get("priorityClassName") for t in pods.values()} - {None}:
        kube.kubectl(
            "apply", "-f", "-", input=json.dumps(
                {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                 "metadata": {"name": name}, "value": 1000}
            ),
        )  # fmt: skip


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_stage_pod_is_admitted_under_restricted_pod_security(
    kube, restricted_namespace, example
):
    _wait_default_service_account(kube, restricted_namespace)
    pods = rendered_pods(example, restricted_namespace)
    assert pods, f"{example} renders no pods"
    _create_priority_classes(kube, pods)
    for index, (where, template) in enumerate(sorted(pods.items())):
        result = dry_run_pod(kube, restricted_namespace, f"check-{index}", template)
        assert result.returncode == 0, f"{example} {where}: {result.stderr}"
        assert "Warning" not in result.stderr, f"{example} {where}: {result.stderr}"


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_stage_pods_write_only_to_explicit_empty_dirs(example):
    """Read-only root filesystem; every folder the process writes to is on an emptyDir."""
    for where, template in rendered_pods(example, "default").items():
        spec = template["spec"]
        assert spec["automountServiceAccountToken"] is False, where
        writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, where
            mounts = [
                m["mountPath"]
                for m in c["volumeMounts"]
                if m["name"] in writable and not m.get("readOnly")
            ]
            env = {e["name"]: e.get("value") for e in c["env"]}
            for name in WRITABLE_ENV:
                path = env.get(name)
                assert path, f"{where}: {name} unset (would default into the read-only root)"
                assert any(path == m or path.startswith(m + "/") for m in mounts), (
                    f"{where}: {name}={path} is not on a writable emptyDir ({mounts})"
                )


def test_a_stage_pod_breaking_the_standard_is_refused(kube, restricted_namespace):
    """Control: the admission really enforces (the same pod, one field off, is refused)."""
    _wait_default_service_account(kube, restricted_namespace)
    pods = rendered_pods("medsft-run.yaml", restricted_namespace)
    where, template = sorted(pods.items())[0]
    for field, value, named in [
        ("allowPrivilegeEscalation", True, "allowPrivilegeEscalation"),
        ("capabilities", {"add": ["NET_ADMIN"]}, "capabilities"),
        ("runAsUser", 0, "runAsUser"),
    ]:
        bad = copy.deepcopy(template)
        bad["spec"]["containers"][0]["securityContext"][field] = value
        result = dry_run_pod(kube, restricted_namespace, "bad", bad)
        assert result.returncode != 0, f"{where} with {field}={value} was admitted"
        assert "violates PodSecurity" in result.stderr and named in result.stderr
