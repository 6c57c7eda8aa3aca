"""Faults on the real cluster path (the quickstart MedSFTRun of test_cluster_run.py, with a
checkpoint every 20 steps, so that there is a checkpoint to resume from mid-training):

* the Worker pod is deleted mid-training → the PyTorchJob fails (retries are the operator's:
  ``restartPolicy: Never``, ``backoffLimit: 0``), the operator starts its next attempt and
  training resumes from the newest checkpoint complete on both nodes — judged
  from the trainer's own metrics: the step counter continues after that checkpoint and no
  step up to it is trained again;
* the medsft operator is SIGKILLed mid-run → a restarted one finds what the first created
  (no duplicate children) and the run completes;
* MinIO is stopped for a few seconds mid-training → the storage retries of the trainer and the
  operator absorb it without spending an attempt; stopped again for longer than the retry
  budget → that attempt fails with reason ``StorageUnavailable`` (the trainer's termination
  message) and the next resumes once MinIO is back; the run is promoted, and no partial
  checkpoint, dataset or model is ever visible to a reader that trusts completion markers and
  manifests.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from cluster import ClusterRun, quickstart_on_cluster
from kubernetes import client

from medsft_pipelines.storage.checkpoints import CheckpointStore
from medsft_pipelines.storage.progress import read_metrics

# The first run builds the trainer image (minutes, cached afterwards) before the cluster run.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
RUN = "chaos"
# The run of test_cluster_run.py (4 epochs, ~200 steps: there is a "mid-training" to hit),
# with a checkpoint every 20 steps on both nodes.
CHECKPOINTED = {"checkpointing": {"everySteps": 20, "keepLast": 3}}


def sft_output(run: ClusterRun) -> str:
    return f"s3://{run.bucket}/{run.namespace}/{RUN}/g1/sft"


def common_checkpoints(run: ClusterRun) -> list[int]:
    """Steps checkpointed completely on both nodes (what a resume may start from)."""
    out = run.storage.store(sft_output(run))
    per_node = [
        set(CheckpointStore(out.child(f"checkpoints/node-{n:03d}")).steps()) for n in (0, 1)
    ]
    return sorted(per_node[0] & per_node[1])


def current_pytorchjob(run: ClusterRun) -> dict[str, Any] | None:
    """The newest attempt's PyTorchJob (the operator names attempts ``...-a<N>``)."""
    jobs = run.cluster.pytorchjobs()
    return max(jobs, key=lambda j: int(j["metadata"]["name"].rpartition("-a")[2]), default=None)


def pytorchjob_pod(run: ClusterRun, replica: str) -> client.V1Pod | None:
    job = current_pytorchjob(run)
    if job is None:
        return None
    name = f"{job['metadata']['name']}-{replica}-0"
    try:
        return run.cluster.core.read_namespaced_pod(name, run.namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def trained_records(run: ClusterRun) -> list[dict[str, Any]]:
    """The trainer's metrics of each step it trained, in the order it logged them."""
    return [r for r in read_metrics(run.storage.store(sft_output(run))) if "loss" in r]


class AttemptPods:
    """Watches the namespace's training pods and records, when the first pod of an attempt
    appears, which pods of earlier attempts still hold resources (Pending or Running): a
    failed attempt's survivors must be gone before the next attempt starts."""

    def __init__(self, run: ClusterRun) -> None:
        self.run = run
        self.survivors_at_start: dict[int, list[str]] = {}  # attempt -> earlier attempts' pods
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @staticmethod
    def attempt(pod: client.V1Pod) -> int | None:
        name = pod.metadata.name  # <run>-sft-g1-a<N>-master-0 / -worker-0
        head, sep, tail = name.rpartition("-a")
        if "-sft-" not in head or not sep:
            return None
        number = tail.split("-", 1)[0]
        return int(number) if number.isdigit() else None

    def _watch(self) -> None:
        while not self._stop.is_set():
            attempts = {}
            for pod in self.run.pods():
                attempt = self.attempt(pod)
                if attempt is not None:
                    attempts[pod.metadata.name] = (attempt, pod.status.phase)
            # A terminating pod still holds its node until it is gone: it counts as live.
            live = {n: a for n, (a, phase) in attempts.items() if phase in ("Pending", "Running")}
            for attempt, _ in attempts.values():
                if attempt not in self.survivors_at_start:
                    self.survivors_at_start[attempt] = sorted(
                        name for name, a in live.items() if a < attempt
                    )
            time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_worker_pod_deleted_mid_training_resumes_from_the_latest_checkpoint(
    cluster_run: ClusterRun,
) -> None:
    run = cluster_run
    run.start_operator()
    pods = AttemptPods(run)
    run.apply(quickstart_on_cluster(RUN, run.bucket, run.node.minio.endpoint, sft=CHECKPOINTED))
    checkpoint = run.wait(
        lambda: common_checkpoints(run), timeout=1200, what="a checkpoint on both nodes"
    )[-1]
    worker = pytorchjob_pod(run, "worker")
    assert worker is not None and worker.status.phase == "Running", run.describe()
    run.cluster.core.delete_namespaced_pod(worker.metadata.name, run.namespace)

    status = run.finish(RUN)
    pods.stop()
    assert status["phase"] == "Succeeded", run.describe()
    assert run.cluster.condition("MedSFTRun", RUN, "Promoted")["status"] == "True"
    # No pod of a failed attempt still held its node when the next attempt's pods appeared
    # (finished pods keep their logs and hold nothing; cleanPodPolicy Running deletes the rest
    # and the operator waits for them to go).
    assert len(pods.survivors_at_start) >= 2, pods.survivors_at_start
    assert all(not names for names in pods.survivors_at_start.values()), pods.survivors_at_start

    # The lost node cost one attempt: the PyTorchJob (restartPolicy Never, backoffLimit 0:
    # retries are the operator's) failed, and the operator's next attempt resumed.
    sft = run.cluster.status("SFTJob", f"{RUN}-sft-g1")
    assert sft["restarts"] >= 1 and sft["step"] == sft["totalSteps"], sft
    summary = run.store_json(f"{run.namespace}/{RUN}/g1/sft/train_summary.json")
    resumed = summary["resumed_from"]
    assert resumed is not None and resumed >= checkpoint, summary
    assert summary["attempt"] >= 1 and summary["steps"] == sft["totalSteps"]

    # The trainer's own record of the steps it trained (its metrics, every attempt's, in
    # order): the last attempt starts right after the checkpoint it resumed from and runs to
    # the end; the first ran from step 1 until it died past that checkpoint; where both
    # trained a step, they trained the very same batch (the resume is exact).
    records = trained_records(run)
    total = summary["steps"]
    last = records[len(records) - (total - resumed) :]
    first = records[: len(records) - (total - resumed)]
    assert [r["step"] for r in last] == list(range(resumed + 1, total + 1))
    assert [r["step"] for r in first] == list(range(1, len(first) + 1))
    assert len(first) >= resumed  # kept up to its death, beyond the checkpoint
    batches = {r["step"]: r["batch_fingerprint"] for r in first}
    for record in last:
        if record["step"] in batches:
            assert record["batch_fingerprint"] == batches[record["step"]], record["step"]


def test_operator_killed_mid_run_restarts_without_duplicates(cluster_run: ClusterRun) -> None:
    run = cluster_run
    first = run.start_operator("operator-a")
    run.apply(quickstart_on_cluster(RUN, run.bucket, run.node.minio.endpoint))
    # Mid-run: curation is done and the training pods exist.
    run.wait(
        lambda: run.cluster.pytorchjobs() and pytorchjob_pod(run, "master"),
        timeout=900,
        what="the training pods",
    )
    first.kill()
    run.start_operator("operator-b")
    status = run.finish(RUN)
    assert status["phase"] == "Succeeded", run.describe()
    assert run.cluster.condition("MedSFTRun", RUN, "Promoted")["status"] == "True"

    for kind in ("CurationJob", "SFTJob", "EvalJob"):
        assert len(run.cluster.list(kind)) == 1, kind
    assert [j["metadata"]["name"] for j in run.cluster.pytorchjobs()] == [f"{RUN}-sft-g1-a0"]
    assert run.cluster.jobs() == sorted(
        [f"{RUN}-curation-g1-work", f"{RUN}-curation-g1-merge", f"{RUN}-eval-g1-eval"]
    )
    summary = run.store_json(f"{run.namespace}/{RUN}/g1/sft/train_summary.json")
    assert summary["resumed_from"] is None  # the training itself never noticed


# The stages' storage retry budget in the outage test (spec.storage.retryTimeoutSeconds):
# longer than the short outage, which it must absorb, shorter than the long one.
RETRY_BUDGET_S = 15
SHORT_OUTAGE_S = 5


def pytorchjob_failed(run: ClusterRun, name: str) -> bool:
    job = next((j for j in run.cluster.pytorchjobs() if j["metadata"]["name"] == name), None)
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Failed" and c["status"] == "True" for c in conditions)


def test_minio_outages_mid_training_never_show_partial_artifacts(cluster_run: ClusterRun) -> None:
    """A 5 s outage is absorbed by the storage retries: no attempt spent. A later one, past
    the retry budget, fails that attempt; while MinIO stays down the SFTJob says so
    (StorageUnavailable) instead of an unexplained wait, and the next attempt resumes from
    the newest checkpoint once MinIO is back: the run still ends Promoted, and nothing
    partial is ever visible."""
    run = cluster_run
    run.start_operator()
    pods = AttemptPods(run)
    manifest = quickstart_on_cluster(RUN, run.bucket, run.node.minio.endpoint, sft=CHECKPOINTED)
    manifest["spec"]["storage"]["retryTimeoutSeconds"] = RETRY_BUDGET_S
    run.apply(manifest)
    sft_name, first_attempt = f"{RUN}-sft-g1", f"{RUN}-sft-g1-a0"
    before = run.wait(lambda: common_checkpoints(run), timeout=1200, what="a checkpoint")[-1]
    run.node.minio.stop()
    time.sleep(SHORT_OUTAGE_S)  # the short outage
    run.node.minio.start()
    # Absorbed: the same attempt trains on and checkpoints again.
    run.wait(
        lambda: (steps := common_checkpoints(run)) and steps[-1] > before,
        timeout=600,
        what="the next checkpoint after the short outage",
    )
    assert [j["metadata"]["name"] for j in run.cluster.pytorchjobs()] == [first_attempt]
    assert not run.cluster.status("SFTJob", sft_name).get("restarts")

    run.node.minio.stop()  # the long outage: until the attempt has failed of it
    try:
        run.wait(
            lambda: pytorchjob_failed(run, first_attempt),
            timeout=300,
            what=f"{first_attempt} failed of an outage past the {RETRY_BUDGET_S}s budget",
        )
        # The stage says why it waits, while it waits: the store does not answer. (The failed
        # rank's own line, StorageUnavailable in /dev/termination-log, is the reason when its
        # pod is still there; the Kubeflow training operator often deletes the attempt's
        # pods with the job, and then the operator's own read of the store tells.)
        waiting = run.wait(
            lambda: (
                (c := run.cluster.condition("SFTJob", sft_name, "Progressing"))
                and c["reason"] == "StorageUnavailable"
                and c
            ),
            timeout=120,
            what="the SFTJob saying the store does not answer",
        )
    finally:
        run.node.minio.start()
    assert first_attempt in waiting["message"], waiting
    assert "attempt 2 starts once the object store answers" in waiting["message"], waiting

    status = run.finish(RUN)
    pods.stop()
    assert status["phase"] == "Succeeded", run.describe()
    assert run.cluster.condition("MedSFTRun", RUN, "Promoted")["status"] == "True"
    sft = run.cluster.status("SFTJob", sft_name)
    assert sft["restarts"] == 1 and sft["step"] == sft["totalSteps"], sft
    # The spent attempt is announced. Its reason is the trainer's line only when its pod
    # outlived the job (see above), so the Event is matched by the attempt, not the reason.
    retried = run.cluster.wait_events(sft_name, "Retrying", mentioning=first_attempt)
    assert retried, retried
    summary = run.store_json(f"{run.namespace}/{RUN}/g1/sft/train_summary.json")
    assert summary["resumed_from"] is not None and summary["resumed_from"] > before, summary
    assert all(not names for names in pods.survivors_at_start.values()), pods.survivors_at_start

    # Whatever is published is whole: every checkpoint with a completion marker has all the
    # files (and sizes) the marker lists; every shard the dataset manifest lists is there.
    out = run.storage.store(sft_output(run))
    for node in (0, 1):
        checkpoints = CheckpointStore(out.child(f"checkpoints/node-{node:03d}"))
        for step in checkpoints.steps():
            files = checkpoints.info(step)["files"]
            prefix = f"step-{step:09d}/"
            for name, size in files.items():
                assert checkpoints.store.size(prefix + name) == size
    root = f"{run.namespace}/{RUN}/g1"
    dataset = run.storage.store(f"s3://{run.bucket}/{root}/curation")
    for shard in dataset.get_json("manifest.json")["shards"]:
        assert dataset.size(shard["key"]) == shard["numBytes"]
    model = run.storage.store(f"{sft_output(run)}/model")
    exported = model.get_json("export.json")["files"]
    assert "config.json" in exported, exported
    for name, size in exported.items():
        assert model.size(name) == size
