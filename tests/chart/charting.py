"""Running the real helm binary on charts/medsft, and the value sets the tests render."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from harness.testbin import pinned_versions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "medsft"
# Render for the Kubernetes the tests run (helm's own default may be older than kubeVersion).
KUBE_VERSION = pinned_versions()["K8S_VERSION"].lstrip("v")
SERVICE_MONITOR_API = "monitoring.coreos.com/v1/ServiceMonitor"

EXTERNAL_STORAGE = {
    "endpoint": "s3.storage.example:443",
    "bucket": "team-a-models",
    "prefix": "medsft/runs",
    "region": "eu-west-1",
    "credentialsSecret": {"name": "s3-credentials"},
}

# Value sets a user would install with; "{ns}" is replaced by the test's namespace.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "quickstart-minio": {"minio": {"enabled": True}},
    "minio-ephemeral-fixed-credentials": {
        "minio": {
            "enabled": True,
            "persistence": {"enabled": False},
            "rootUser": "medsft-admin",
            "rootPassword": "not-a-real-password-123",
        },
        "storage": {"bucket": "quickstart", "prefix": "demo"},
    },
    "external-s3-digest-images": {
        "storage": EXTERNAL_STORAGE,
        "image": {"tag": "sha256:" + "a" * 64},
        "trainer": {
            "image": {"repository": "registry.example/ml/medsft-trainer", "tag": "0.1.0-cu13"}
        },
    },
    "watch-two-namespaces": {
        "storage": EXTERNAL_STORAGE,
        "operator": {"watchNamespaces": ["{ns}-team-a", "{ns}-team-b"]},
        "trainer": {"serviceAccount": {"extraNamespaces": ["{ns}-team-c"]}},
    },
    "production": {
        "storage": EXTERNAL_STORAGE,
        "replicaCount": 2,
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
        "resources": {
            "requests": {"cpu": "200m", "memory": "192Mi"},
            "limits": {"memory": "512Mi"},
        },
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
        ],
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "podAnnotations": {"team": "ml-platform"},
        "priorityClassName": "medsft-operator-critical",
        "operator": {"logLevel": "debug", "logFormat": "plain", "pollIntervalSeconds": 5},
    },
    "bring-your-own-accounts": {
        "storage": EXTERNAL_STORAGE,
        "serviceAccount": {"create": False, "name": "platform-medsft"},
        "rbac": {"create": False},
        "trainer": {"serviceAccount": {"create": False, "name": "training-pods"}},
    },
}


def value_set(name: str, namespace: str) -> dict[str, Any]:
    """A value set with its ``{ns}`` placeholders filled in."""
    return _fill(copy.deepcopy(VALUE_SETS[name]), namespace)


def _fill(node: Any, namespace: str) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, namespace) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, namespace) for v in node]
    return node.replace("{ns}", namespace) if isinstance(node, str) else node


def helm(
    helm_bin: Path, *args: str, home: Path, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run helm with its config, cache and data in ``home`` (nothing of the user's)."""
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    result = subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, env=env, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def values_file(values: dict[str, Any], folder: Path, name: str = "values.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(values))
    return path


def template(
    helm_bin: Path,
    home: Path,
    values: dict[str, Any],
    *,
    namespace: str = "medsft",
    release: str = "medsft",
    extra: tuple[str, ...] = (),
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart with ``values``."""
    return helm(
        helm_bin,
        "template", release, str(CHART),
        "--namespace", namespace,
        "--kube-version", KUBE_VERSION,
        "-f", str(values_file(values, home)),
        *extra,
        home=home,
        check=check,
    )  # fmt: skip


def render(
    helm_bin: Path, home: Path, values: dict[str, Any], **kwargs: Any
) -> list[dict[str, Any]]:
    """The manifests ``helm template`` renders (documents parsed, empty ones dropped)."""
    out = template(helm_bin, home, values, **kwargs).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod the manifests would start, by ``Kind/name``: templates of Deployments and
    Jobs, and bare Pods (the helm test)."""
    pods = {}
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "Job"):
            pods[name] = doc["spec"]["template"]
        elif doc["kind"] == "Pod":
            pods[name] = {"metadata": {}, "spec": doc["spec"]}
    return pods


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """Rules as (apiGroup, resource, resourceName, verb) atoms: equal sets grant the same."""
    atoms = set()
    for rule in rules:
        for group in rule.get("apiGroups", [""]):
            for resource in rule.get("resources", []):
                for name in rule.get("resourceNames", None) or ["*any*"]:
                    for verb in rule["verbs"]:
                        atoms.add((group, resource, name, verb))
    return atoms
