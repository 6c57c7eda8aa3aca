"""The real Kubeflow training operator runs a PyTorchJob on the real node.

Master + 1 Worker: the operator creates the pods and their headless Services, gives each
the rendezvous environment (``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``), holds
the Worker in its ``init-pytorch`` container until the Master's name resolves, and moves the
job to ``Succeeded`` when the Master exits 0. The pods here are busybox probes that do the
rendezvous by hand (the Worker connects to ``MASTER_ADDR:MASTER_PORT`` and says its rank);
the torch rendezvous over the same path is what the end-to-end run in tests/e2e exercises.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client

from harness.node import RESTRICTED, Node

pytestmark = pytest.mark.slow


def replica(image: str, script: str, restart: str = "OnFailure") -> dict[str, Any]:
    return {
        "replicas": 1,
        "restartPolicy": restart,
        "template": {
            "spec": {
                "containers": [
                    {
                        # The training operator finds the container to configure by this name.
                        "name": "pytorch",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", script],
                        "securityContext": RESTRICTED,
                    }
                ]
            }
        },
    }


MASTER = (
    'echo "master rank=$RANK world=$WORLD_SIZE";'
    'msg=$(nc -l -p "$MASTER_PORT"); echo "master got: $msg"; [ "$msg" = "rank 1 of 2" ]'
)
# nc's retries complain on stdout: the kubelet merges stdout and stderr by arrival, so
# a complaint on stderr could come before the first line that the test reads.
WORKER = (
    'echo "worker rank=$RANK world=$WORLD_SIZE master=$MASTER_ADDR";'
    "for i in $(seq 60); do"
    ' echo "rank $RANK of $WORLD_SIZE" | nc -w 2 "$MASTER_ADDR" "$MASTER_PORT" 2>&1 && exit 0; sleep 1;'
    " done; exit 1"
)


def log_of(core: client.CoreV1Api, ns: str, pod: str, container: str) -> str:
    try:
        return core.read_namespaced_pod_log(pod, ns, container=container)
    except client.ApiException as exc:
        return f"<no log: {exc.reason}>"


def conditions(job: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in (job.get("status") or {}).get("conditions") or []}


def test_pytorchjob_master_and_worker_rendezvous(node: Node, node_namespace: str) -> None:
    api = node.api_client()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    ns = node_namespace
    job = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "rdzv"},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": replica(node.probe, MASTER),
                "Worker": replica(node.probe, WORKER),
            }
        },
    }
    custom.create_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", job)

    # Alone this takes seconds. The limit is for a loaded CI machine: the Worker's init
    # container (capped at 100m CPU, as upstream's template caps it) and its nc loop each
    # retry for up to about two minutes, and CI once saw the job still Running at 180 s.
    deadline = time.monotonic() + 360
    state: dict[str, str] = {}
    while time.monotonic() < deadline:
        state = conditions(
            custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", "rdzv")
        )
        if state.get("Succeeded") == "True" or state.get("Failed") == "True":
            break
        time.sleep(1)
    logs = {
        (pod, container): log_of(core, ns, pod, container)
        for pod, container in [
            ("rdzv-master-0", "pytorch"),
            ("rdzv-worker-0", "init-pytorch"),
            ("rdzv-worker-0", "pytorch"),
        ]
    }
    # CI's summary keeps the start and the end of a long message: the pods' states first,
    # then the last lines of each log, so a stall says where it stalled.
    tails = "\n".join(
        f"{pod}/{container}: {' | '.join(log.splitlines()[-3:])}"
        for (pod, container), log in logs.items()
    )
    assert state.get("Succeeded") == "True", f"{state}\n{node.why_waiting(ns)}\n{tails}"
    master_log, worker_log = logs["rdzv-master-0", "pytorch"], logs["rdzv-worker-0", "pytorch"]

    assert master_log.splitlines() == ["master rank=0 world=2", "master got: rank 1 of 2"]
    assert worker_log.splitlines()[0] == "worker rank=1 world=2 master=rdzv-master-0"
    # The operator's headless Service is what the Worker resolved the Master through.
    service = core.read_namespaced_service("rdzv-master-0", ns)
    assert service.spec.cluster_ip == "None"
    worker = core.read_namespaced_pod("rdzv-worker-0", ns)
    assert [c.name for c in worker.spec.init_containers] == ["init-pytorch"]
