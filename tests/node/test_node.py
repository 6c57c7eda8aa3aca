"""The real node runs pods the way a cluster does, inside the network rule.

Each test runs real pods (busybox probe image) on the harness node in a namespace that
enforces the ``restricted`` Pod Security profile: scheduling, ConfigMap volumes and
Secret env, pod-to-pod traffic through headless-Service DNS, ``nvidia.com/gpu`` requests,
and what pods must NOT reach.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness.node import GATEWAY, NODE_NAME, RESTRICTED, Node

pytestmark = pytest.mark.slow


def pod(name: str, image: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
        "securityContext": RESTRICTED,
    }
    container |= spec.pop("container", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def wait_pod(node: Node, ns: str, name: str, timeout: float = 120) -> str:
    core = client.CoreV1Api(node.api_client())
    deadline = time.monotonic() + timeout
    phase = None
    while time.monotonic() < deadline:
        phase = core.read_namespaced_pod(name, ns).status.phase
        if phase in ("Succeeded", "Failed"):
            return phase
        time.sleep(0.5)
    raise AssertionError(f"pod {name} still {phase} after {timeout}s\n{node.why_waiting(ns)}")


def logs(core: client.CoreV1Api, ns: str, name: str) -> str:
    return core.read_namespaced_pod_log(name, ns)


def test_pod_runs_with_config_map_volume_and_secret_env(node: Node, node_namespace: str) -> None:
    core = client.CoreV1Api(node.api_client())
    ns = node_namespace
    core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata={"name": "cfg"}, data={"job.yaml": "answer: 42\n"})
    )
    core.create_namespaced_secret(
        ns, client.V1Secret(metadata={"name": "creds"}, string_data={"key": "s3cr3t"})
    )
    manifest = pod(
        "probe",
        node.probe,
        'cat /etc/cfg/job.yaml; echo "key=$KEY"; id -u',
        container={
            "env": [
                {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}}
            ],
            "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True}],
        },
        volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}],
    )
    core.create_namespaced_pod(ns, manifest)
    assert wait_pod(node, ns, "probe") == "Succeeded"
    out = logs(core, ns, "probe")  # through the apiserver → kubelet path
    assert out.split() == ["answer:", "42", "key=s3cr3t", "65534"]
    assert core.read_namespaced_pod("probe", ns).spec.node_name == NODE_NAME


def test_restricted_namespace_rejects_a_privileged_pod(node: Node, node_namespace: str) -> None:
    core = client.CoreV1Api(node.api_client())
    manifest = pod("root", node.probe, "true", container={"securityContext": {}})
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_pod(node_namespace, manifest)
    assert err.value.status == 403 and "restricted" in err.value.body


def test_pods_talk_through_headless_service_dns(node: Node, node_namespace: str) -> None:
    core = client.CoreV1Api(node.api_client())
    ns = node_namespace
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "rdzv"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "server"},
                "ports": [{"port": 23456}],
            },
        },
    )
    server = pod(
        "server",
        node.probe,
        'msg=$(nc -l -p 23456); echo "got: $msg"',
        labels={"app": "server"},
        hostname="server",
        subdomain="rdzv",
    )
    fqdn = f"server.rdzv.{ns}.svc.cluster.local"
    client_pod = pod(
        "client",
        node.probe,
        # The server may not listen yet, and its DNS record appears once it is Ready.
        f"for i in $(seq 60); do echo hello | nc -w 2 {fqdn} 23456 && exit 0; sleep 1; done;"
        " exit 1",
    )
    core.create_namespaced_pod(ns, server)
    core.create_namespaced_pod(ns, client_pod)
    assert wait_pod(node, ns, "client") == "Succeeded"
    assert wait_pod(node, ns, "server") == "Succeeded"
    assert logs(core, ns, "server").strip() == "got: hello"


def test_gpu_requests_schedule_on_the_advertised_capacity(node: Node, node_namespace: str) -> None:
    core = client.CoreV1Api(node.api_client())
    gpu = {"nvidia.com/gpu": "1"}
    manifest = pod(
        "gpu", node.probe, "true", container={"resources": {"limits": gpu, "requests": gpu}}
    )
    core.create_namespaced_pod(node_namespace, manifest)
    assert wait_pod(node, node_namespace, "gpu") == "Succeeded"
    too_many = {"nvidia.com/gpu": "99"}
    greedy = pod(
        "greedy",
        node.probe,
        "true",
        container={"resources": {"limits": too_many, "requests": too_many}},
    )
    core.create_namespaced_pod(node_namespace, greedy)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        conditions = core.read_namespaced_pod("greedy", node_namespace).status.conditions or []
        unschedulable = [c for c in conditions if c.reason == "Unschedulable"]
        if unschedulable:
            assert "nvidia.com/gpu" in unschedulable[0].message
            return
        time.sleep(0.5)
    raise AssertionError("a pod asking for more GPUs than the node has was not refused")


def test_pods_reach_only_the_bridge(node: Node, node_namespace: str) -> None:
    """No default route and no upstream DNS in pods; the gateway's services answer."""
    core = client.CoreV1Api(node.api_client())
    host, port = node.minio.start().endpoint.split(":")
    script = (
        "ip route; echo ---;"
        # The harness's MinIO on the gateway answers ...
        f"printf 'GET /minio/health/live HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n'"
        f" | nc -w 3 {host} {port} 2>&1 | head -1;"
        # ... an address outside the bridge is unreachable (no route: nothing is sent).
        # nc's complaint goes to stdout: the kubelet merges the two streams by arrival,
        # so on stderr it could land after the next separator.
        "echo | nc -w 2 192.0.2.1 80 2>&1 && echo OUTSIDE-REACHED; echo ---;"
        # ... and CoreDNS answers cluster names only (it has no upstream).
        "nslookup example.com >/dev/null 2>&1 && echo UPSTREAM-RESOLVED;"
        "nslookup kubernetes.default.svc.cluster.local >/dev/null && echo cluster-dns-ok"
    )
    core.create_namespaced_pod(node_namespace, pod("net", node.probe, script))
    assert wait_pod(node, node_namespace, "net") == "Succeeded"
    routes, answers, dns = logs(core, node_namespace, "net").split("---")
    assert "default" not in routes and "10.244.0.0/24" in routes
    assert "200 OK" in answers and "OUTSIDE-REACHED" not in answers
    assert "Network is unreachable" in answers
    assert dns.split() == ["cluster-dns-ok"]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"
    assert host == GATEWAY


def test_a_missing_image_is_never_pulled_from_outside(node: Node, node_namespace: str) -> None:
    """Images are imported; a pull the kubelet asks for goes to a closed loopback port."""
    core = client.CoreV1Api(node.api_client())
    manifest = pod("absent", "registry.example.org/medsft/absent:1", "true")
    core.create_namespaced_pod(node_namespace, manifest)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (status,) = core.read_namespaced_pod(
            "absent", node_namespace
        ).status.container_statuses or [None]
        waiting = status and status.state.waiting
        if waiting and waiting.reason in ("ErrImagePull", "ImagePullBackOff") and waiting.message:
            assert "127.0.0.1:9" in waiting.message
            # What a stalled test prints names the pod's own reason and the node's state.
            why = node.why_waiting(node_namespace)
            assert "pod absent Pending: " in why and f"main waiting: {waiting.reason}" in why
            assert "node: Ready, no pressure" in why and "GiB" in why
            return
        time.sleep(0.5)
    raise AssertionError("the pull of an absent image did not fail")
