"""Deletion in order: with ``artifactPolicy: Delete`` a run's storage prefix is deleted only
after every pod that can write under it is gone.

There is no kubelet here, so the training pod is played faithfully by what matters: a Pod
object owned by the PyTorchJob (as the training operator makes it, blocking its owner's
deletion), held by a finalizer the test's kubelet stand-in removes only once the pod's
process has exited — and that process is real: it writes checkpoints to the real MinIO with
the credentials the pod's environment resolves to (from its Secret), through its
termination grace period, like a trainer that gets SIGTERM and keeps flushing.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time

from controller.operator_harness import FAKE, REPO, RunDriver, resource, run_spec, wait_for

HELD = {f"{FAKE}outcome": "Running"}
KUBELET = "test.medsft.io/kubelet"
GRACE_S = 3.0  # the pod's termination grace: it keeps writing this long after deletion

WRITER = """
import itertools, sys, time
from medsft_pipelines.storage import open_store
store = open_store(sys.argv[1])  # StorageSettings.from_env(): the pod's variables
for i in itertools.count():
    store.put_json(f"obj-{i:05d}.json", {"i": i})
    print(i, time.time(), flush=True)
    time.sleep(0.05)
"""


def pod_env(cluster, template: dict) -> dict[str, str]:
    """The container's environment as the kubelet would resolve it (Secret keys read)."""
    env = {}
    for var in template["spec"]["containers"][0]["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            secret = cluster.core.read_namespaced_secret(ref["name"], cluster.namespace)
            env[var["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
    return env


def test_a_runs_prefix_is_deleted_only_after_its_writing_pods_are_gone(
    cluster, storage, operator, tmp_path
):
    ns = cluster.namespace
    cluster.create(
        resource("MedSFTRun", "d", run_spec(storage, artifactPolicy="Delete"), annotations=HELD)
    )
    drive = RunDriver(cluster, storage, "d")
    drive.curation()
    drive.sft(finish=False)  # training, held Running
    job = cluster.pytorchjob("d-sft-g1-a0")
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]

    # The training pod, as the training operator would create it.
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", ns), what="SA")
    pod = cluster.core.create_namespaced_pod(
        ns,
        {
            "metadata": {
                "name": "d-sft-g1-a0-master-0",
                "labels": template["metadata"].get("labels", {}),
                "finalizers": [KUBELET],
                "ownerReferences": [
                    {
                        "apiVersion": "kubeflow.org/v1",
                        "kind": "PyTorchJob",
                        "name": job["metadata"]["name"],
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
        },
    )
    target = f"{drive.output(1, 'sft')}/checkpoints/node-000"
    log = tmp_path / "writer.out"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, target],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO / "pipelines"),
            **pod_env(cluster, template),
        },
    )
    terminating_at: list[float] = []

    def kubelet() -> None:
        """Deletion requested -> grace period -> process gone -> finalizer off."""
        wait_for(
            lambda: (
                cluster.core.read_namespaced_pod(pod.metadata.name, ns).metadata.deletion_timestamp
            ),
            timeout=120,
            what="the pod's deletion",
        )
        terminating_at.append(time.time())
        time.sleep(GRACE_S)
        writer.terminate()
        writer.wait(10)
        cluster.core.patch_namespaced_pod(pod.metadata.name, ns, {"metadata": {"finalizers": None}})

    stand_in = threading.Thread(target=kubelet, daemon=True)
    stand_in.start()
    try:
        wait_for(lambda: len(log.read_text().splitlines()) > 5, what="the writer writing")
        assert storage.keys(f"{ns}/d/g1/sft/checkpoints/")

        deleted_at = time.time()
        cluster.delete("MedSFTRun", "d")
        wait_for(lambda: cluster.find("MedSFTRun", "d") is None, timeout=120, what="the run gone")
        stand_in.join(10)
    finally:
        if writer.poll() is None:
            writer.kill()

    writes = [float(line.split()[1]) for line in log.read_text().splitlines() if line.strip()]
    # The race was real: the pod kept writing after the run's deletion began, and through
    # its own termination grace period...
    assert terminating_at and sum(t > terminating_at[0] for t in writes) >= 10
    assert sum(t > deleted_at for t in writes) >= 10
    # ...and still nothing is left: the prefix went after the pod did.
    assert storage.keys(f"{ns}/d/") == []
    cluster.wait_events("d", "ArtifactsDeleted")
    for kind in ("CurationJob", "SFTJob", "EvalJob"):
        assert cluster.list(kind) == []
