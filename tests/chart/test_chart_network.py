"""Nobody else on the network: kube-score (a widely used manifest linter, the real binary
built by hack/build-testbin.sh) on every value set finds nothing CRITICAL beyond what the
chart README lists with a reason; and the NetworkPolicies select what they promise.

No NetworkPolicy is *enforced* in the test clusters: the control plane alone has no pods,
and the real node (tests/harness/node.py) networks its pods with the CNI bridge plugin, which
does not implement NetworkPolicy (that takes a policy engine: Calico, Cilium, kube-router). What is tested is what the policies say, evaluated
with the NetworkPolicy semantics (label selectors, namespace selectors, ports) against the
labels the real pods carry: the chart's pods as rendered, the stage pods as the operator's
builders render them.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.charting import (
    CHART,
    SERVICE_MONITOR_API,
    VALUE_SETS,
    of_kind,
    pod_specs,
    render,
    template,
    value_set,
)

from harness.testbin import binary, pinned_versions
from medsft_operator.render import children_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CRITICAL = 1  # kube-score's grade of a CRITICAL finding


def _extra(name: str) -> tuple[str, ...]:
    return ("--api-versions", SERVICE_MONITOR_API) if name == "production" else ()


def documented_exceptions() -> list[tuple[str, str, str]]:
    """(kube-score check id, objects glob, reason), from the table under "kube-score" in
    the chart README."""
    text = (CHART / "README.md").read_text()
    section = text.split("### kube-score", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| `([^`]+)` \| (.+?) \|$", section, re.MULTILINE)
    return [(check, objects, reason.strip()) for check, objects, reason in rows]


def excused(where: str, check: str) -> bool:
    return any(
        c == check and fnmatch.fnmatch(where, objects) for c, objects, _ in documented_exceptions()
    )


def kube_score(manifests: str) -> list[dict[str, Any]]:
    """kube-score's findings (one per object and check) as JSON."""
    result = subprocess.run(
        # No CPU limits, by design: see the chart README.
        [
            str(binary("kube-score")),
            "score",
            "--ignore-container-cpu-limit",
            "--output-format",
            "json",
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: something was found
    return json.loads(result.stdout)


def critical_findings(manifests: str) -> dict[tuple[str, str], list[str]]:
    found = {}
    for obj in kube_score(manifests):
        where = f"{obj['type_meta']['kind']}/{obj['object_meta']['name']}"
        for check in obj["checks"]:
            if check["grade"] == CRITICAL and not check["skipped"]:
                found[(where, check["check"]["id"])] = [
                    f"{c.get('path', '')} {c['summary']}" for c in check.get("comments") or []
                ]
    return found


def test_the_pinned_kube_score_runs():
    out = subprocess.run(
        [str(binary("kube-score")), "version"], capture_output=True, text=True, check=True
    )
    assert pinned_versions()["KUBE_SCORE_VERSION"] in out.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_kube_score_finds_nothing_critical_but_the_documented_exceptions(helm_bin, helm_home, name):
    manifests = template(helm_bin, helm_home, value_set(name, "ops"), extra=_extra(name)).stdout
    assert all(len(reason) > 40 for _, _, reason in documented_exceptions())
    found = critical_findings(manifests)
    unexplained = {k: v for k, v in found.items() if not excused(*k)}
    assert unexplained == {}


def test_kube_score_would_catch_a_pod_without_policy(helm_bin, helm_home):
    """Control: the same chart with its NetworkPolicies off has CRITICAL findings again."""
    values = {**value_set("quickstart-minio", "ops"), "networkPolicy": {"enabled": False}}
    found = critical_findings(template(helm_bin, helm_home, values).stdout)
    assert ("Deployment/medsft-minio", "pod-networkpolicy") in found


# ------------------------------------------------------------------ policy semantics


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector: every matchLabels pair and matchExpression holds."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op, values = labels.get(expr["key"]), expr["operator"], expr.get("values") or []
        if (
            (op == "In" and value not in values)
            or (op == "NotIn" and value in values)
            or (op == "Exists" and value is None)
            or (op == "DoesNotExist" and value is not None)
        ):
            return False
    return True


Pod = tuple[str, dict[str, str]]  # (namespace, labels)


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    ns, labels = pod
    if "ipBlock" in peer:
        return False  # pods are not addressed by IP here
    ns_ok = (
        _matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns})
        if "namespaceSelector" in peer
        else ns == policy_ns
    )
    return ns_ok and _matches(peer.get("podSelector"), labels)


def _selects(policy: dict[str, Any], pod: Pod) -> bool:
    return policy["metadata"]["namespace"] == pod[0] and _matches(
        policy["spec"]["podSelector"], pod[1]
    )


def allowed(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    """Whether a TCP connection source -> target:port is allowed by the policies (both the
    source's egress and the target's ingress, each open when no policy selects the pod)."""

    def permits(direction: str, pod: Pod, other: Pod) -> bool:
        key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        selecting = [
            p
            for p in policies
            if _selects(p, pod) and direction in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not selecting:
            return True
        for policy in selecting:
            for rule in policy["spec"].get(key) or []:
                ports = rule.get("ports")
                if ports and not any(
                    p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports
                ):
                    continue
                peers = rule.get(peers_key)
                if not peers or any(
                    _peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers
                ):
                    return True
        return False

    return permits("Egress", source, target) and permits("Ingress", target, source)


def _labels(template_: dict[str, Any]) -> dict[str, str]:
    return dict(template_["metadata"].get("labels") or {})


def _chart_pods(docs: list[dict[str, Any]], namespace: str = "ops") -> dict[str, Pod]:
    """Every pod the chart starts, with the labels it will carry."""
    pods = {w: (namespace, _labels(t)) for w, t in pod_specs(docs).items()}
    for doc in of_kind(docs, "Pod"):  # bare pods: their own labels
        pods[f"Pod/{doc['metadata']['name']}"] = (namespace, _labels(doc))
    return pods


def _stage_pods(namespace: str) -> dict[str, Pod]:
    """The labels of every stage pod the operator would start for the run example."""
    doc = yaml.safe_load((EXAMPLES / "medsft-run.yaml").read_text())
    doc["metadata"]["namespace"] = namespace
    pods = {}
    for child in children_of(doc):
        if child["kind"] == "Job":
            pods[child["metadata"]["name"]] = (namespace, _labels(child["spec"]["template"]))
        elif child["kind"] == "PyTorchJob":
            for replica, spec in child["spec"]["pytorchReplicaSpecs"].items():
                pods[f"{child['metadata']['name']}/{replica}"] = (
                    namespace,
                    _labels(spec["template"]),
                )
    assert len(pods) >= 4
    return pods


@pytest.mark.parametrize("watch", [[], ["team-a"]])
def test_minio_is_reachable_only_from_the_operator_the_stage_pods_and_its_bucket_job(
    helm_bin, helm_home, watch
):
    docs = render(
        helm_bin,
        helm_home,
        {"minio": {"enabled": True}, "operator": {"watchNamespaces": watch}},
        namespace="ops",
    )
    policies = of_kind(docs, "NetworkPolicy")
    chart_pods = _chart_pods(docs)
    minio = chart_pods["Deployment/medsft-minio"]
    operator = chart_pods["Deployment/medsft"]
    bucket = next(p for w, p in chart_pods.items() if w.startswith("Job/medsft-minio-bucket"))
    stages = _stage_pods(watch[0] if watch else "anywhere")

    assert allowed(policies, operator, minio, 9000)
    assert allowed(policies, bucket, minio, 9000)
    for where, pod in stages.items():
        assert allowed(policies, pod, minio, 9000), where
    # Nobody else: any other pod, the helm test pod, a lookalike in an unwatched namespace,
    # and the right pods on another port.
    assert not allowed(policies, ("ops", {"app": "curious"}), minio, 9000)
    assert not allowed(policies, chart_pods["Pod/medsft-test"], minio, 9000)
    assert not allowed(policies, ("ops", {}), minio, 9000)
    if watch:
        stage_labels = next(iter(stages.values()))[1]
        assert not allowed(policies, ("elsewhere", stage_labels), minio, 9000)
    assert not allowed(policies, operator, minio, 9001)
    # MinIO itself connects nowhere.
    assert not allowed(policies, minio, operator, 8080)


def test_stage_pods_reach_storage_dns_peers_and_teachers_only(helm_bin, helm_home):
    docs = render(
        helm_bin,
        helm_home,
        {"minio": {"enabled": True}, "operator": {"watchNamespaces": ["team-a"]}},
        namespace="ops",
    )
    policies = of_kind(docs, "NetworkPolicy")
    assert {
        p["metadata"]["namespace"] for p in policies if p["metadata"]["name"] == "medsft-stages"
    } == {
        "ops",
        "team-a",
    }
    chart_pods = _chart_pods(docs)
    stages = _stage_pods("team-a")
    master = next(p for w, p in stages.items() if w.endswith("/Master"))
    worker = next(p for w, p in stages.items() if w.endswith("/Worker"))
    curation = next(p for w, p in stages.items() if "curation" in w)
    kube_dns = ("kube-system", {"k8s-app": "kube-dns"})
    assert allowed(policies, worker, master, 23456)  # torchrun rendezvous, NCCL: peers
    assert allowed(policies, master, worker, 40000)
    assert allowed(policies, curation, chart_pods["Deployment/medsft-minio"], 9000)
    assert allowed(policies, curation, kube_dns, 53)
    # Not the operator, not the API server's pods, not a random service in the cluster
    # (only 443: the teachers' HTTPS, by default anywhere — see networkPolicy.stageEgress).
    assert not allowed(policies, master, chart_pods["Deployment/medsft"], 8080)
    assert not allowed(policies, master, ("ops", {"app": "database"}), 5432)
    # Nothing outside reaches a stage pod.
    assert not allowed(policies, ("team-a", {"app": "curious"}), master, 23456)
    assert not allowed(policies, chart_pods["Deployment/medsft"], master, 23456)


def test_the_operator_reaches_the_api_server_dns_and_storage_only(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, {"minio": {"enabled": True}}, namespace="ops")
    policies = of_kind(docs, "NetworkPolicy")
    chart_pods = _chart_pods(docs)
    operator = chart_pods["Deployment/medsft"]
    assert allowed(policies, operator, ("default", {"component": "apiserver"}), 6443)
    assert allowed(policies, operator, chart_pods["Deployment/medsft-minio"], 9000)
    assert not allowed(policies, operator, ("ops", {"app": "database"}), 5432)
    # Probes, Prometheus and `helm test` reach its http port, and only that.
    assert allowed(policies, chart_pods["Pod/medsft-test"], operator, 8080)
    assert allowed(policies, ("monitoring", {"app": "prometheus"}), operator, 8080)
    assert not allowed(policies, ("monitoring", {"app": "prometheus"}), operator, 9999)


def test_every_chart_pod_is_selected_by_an_ingress_and_an_egress_policy(helm_bin, helm_home):
    for name in sorted(VALUE_SETS):
        docs = render(
            helm_bin, helm_home, value_set(name, "ops"), extra=_extra(name), namespace="ops"
        )
        policies = of_kind(docs, "NetworkPolicy")
        for where, pod in _chart_pods(docs).items():
            for direction in ("Ingress", "Egress"):
                assert any(
                    _selects(p, pod) and direction in p["spec"]["policyTypes"] for p in policies
                ), f"{name}: {where} has no {direction} policy"
