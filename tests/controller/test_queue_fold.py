"""Kueue's Workload folded into stage status, the TrainJob backend's manifests and state,
and the rule that the operator never writes ``suspend: false`` — the pure parts, without a
cluster (tests/controller/test_kueue.py and test_trainjob.py run them against the real
controllers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from controller.sft_manifests import STORAGE, build_training_job, sft_job

from medsft_operator import fold, names
from medsft_operator.api import conditions as cond
from medsft_operator.api.kinds import SFTJobSpec
from medsft_operator.api.status import SFTJobStatus
from medsft_operator.config import OperatorConfig
from medsft_operator.reconcilers.sft import backend_of
from medsft_operator.render import children_of

REPO = Path(__file__).resolve().parents[2]


def workload(*conditions: tuple[str, str, str, str], **status) -> dict:
    return {
        "metadata": {"name": "pytorchjob-ft-a0-1a2b3"},
        "status": {
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m} for t, s, r, m in conditions
            ],
            **status,
        },
    }


INSUFFICIENT = (
    "couldn't assign flavors to pod set master: insufficient quota for nvidia.com/gpu "
    "in flavor default, request > maximum capacity (2 > 1)"
)


def test_a_workload_waiting_for_quota_is_queued_with_kueues_message():
    state = fold.workload_state(
        workload(("QuotaReserved", "False", "Pending", INSUFFICIENT)), "gpu"
    )
    assert state.waiting and state.reason == "WaitingForQuota" and state.message == INSUFFICIENT
    missing = fold.workload_state(
        workload(("QuotaReserved", "False", "Inadmissible", "LocalQueue gpu doesn't exist")),
        "gpu",
    )
    assert (missing.reason, missing.message) == ("Inadmissible", "LocalQueue gpu doesn't exist")
    none_yet = fold.workload_state(None, "gpu")
    assert none_yet.waiting and none_yet.reason == "WaitingForWorkload"


def test_admission_names_the_cluster_queue_and_eviction_says_why():
    admitted = fold.workload_state(
        workload(
            ("QuotaReserved", "True", "QuotaReserved", "Quota reserved in ClusterQueue cq"),
            ("Admitted", "True", "Admitted", "The workload is admitted"),
            admission={"clusterQueue": "cq"},
        ),
        "gpu",
    )
    assert not admitted.waiting and admitted.cluster_queue == "cq"
    evicted = fold.workload_state(
        workload(
            ("QuotaReserved", "False", "Pending", "Preempted"),
            ("Admitted", "False", "NoReservation", "The workload has no reservation"),
            ("Evicted", "True", "Preempted", "Preempted to accommodate a workload"),
            ("Preempted", "True", "InClusterQueue", "Preempted to accommodate a workload (UID: 7)"),
            schedulingStats={
                "evictions": [{"reason": "Preempted", "underlyingCause": "", "count": 1}]
            },
        ),
        "gpu",
    )
    assert evicted.waiting and evicted.reason == "Preempted" and evicted.evictions == 1
    assert evicted.evicted == (
        "Preempted",
        "InClusterQueue: Preempted to accommodate a workload (UID: 7)",
    )
    readmitted = fold.workload_state(
        workload(
            ("Admitted", "True", "Admitted", "The workload is admitted"),
            (
                "Evicted",
                "False",
                "QuotaReserved",
                "Previously: Preempted to accommodate a workload",
            ),
            admission={"clusterQueue": "cq"},
        ),
        "gpu",
    )
    assert not readmitted.waiting and readmitted.evicted is None
    assert readmitted.readmitted == "Previously: Preempted to accommodate a workload"


REQUEUE_LIMIT = (
    "The workload is deactivated due to exceeding the maximum number of re-queuing retries"
)


def test_a_deactivated_workload_ends_the_wait_with_kueues_reason():
    """``spec.active: false`` (an admin, or waitForPodsReady's requeuing limit): Kueue never
    re-queues the workload, so its job would stay suspended for good."""
    limit = workload(
        ("Evicted", "True", "Deactivated", REQUEUE_LIMIT),
        ("Requeued", "False", "Deactivated", REQUEUE_LIMIT),
        schedulingStats={"evictions": [{"reason": "PodsReadyTimeout", "count": 3}]},
    )
    limit["spec"] = {"active": False}
    state = fold.workload_state(limit, "gpu")
    assert state.ended == (
        "Deactivated",
        f"Kueue deactivated workload {limit['metadata']['name']} (Deactivated): {REQUEUE_LIMIT}",
    )
    assert state.reason == "Deactivated" and state.evictions == 3
    # Deactivated before Kueue wrote any condition: still ended, with a reason of our own.
    admin = workload(("QuotaReserved", "False", "Pending", INSUFFICIENT))
    admin["spec"] = {"active": False}
    assert fold.workload_state(admin, "gpu").ended[0] == "Deactivated"
    # Finished as failed by Kueue (a rejected admission check) while the job is suspended.
    rejected = workload(("Finished", "True", "AdmissionChecksRejected", "check gpu rejected"))
    assert fold.workload_state(rejected, "gpu").ended == (
        "AdmissionChecksRejected",
        f"Kueue finished workload {rejected['metadata']['name']} (AdmissionChecksRejected): "
        "check gpu rejected",
    )
    done = workload(("Finished", "True", "Succeeded", "Job finished successfully"))
    assert fold.workload_state(done, "gpu").ended is None
    # An eviction Kueue undoes (preemption) and an active workload are not ended.
    preempted = workload(("Evicted", "True", "Preempted", "Preempted to accommodate"))
    preempted["spec"] = {"active": True}
    assert fold.workload_state(preempted, "gpu").ended is None
    assert fold.workload_state(workload(("Evicted", "True", "Preempted", "x")), "gpu").ended is None


def test_queue_conditions_follow_the_workload_through_admission_and_eviction():
    status = SFTJobStatus()
    status = fold.apply_queue(
        status,
        fold.workload_state(workload(("QuotaReserved", "False", "Pending", INSUFFICIENT)), "gpu"),
        "gpu",
        1,
    )
    queued = cond.get_condition(status.conditions, cond.QUEUED)
    assert queued is not None and (queued.status, queued.reason) == ("True", "WaitingForQuota")
    assert cond.get_condition(status.conditions, cond.EVICTED) is None
    admitted_wl = workload(("Admitted", "True", "Admitted", ""), admission={"clusterQueue": "cq"})
    status = fold.apply_queue(status, fold.workload_state(admitted_wl, "gpu"), "gpu", 1)
    assert cond.is_true(status.conditions, cond.ADMITTED)
    assert not cond.is_true(status.conditions, cond.QUEUED)
    assert status.queue is not None and status.queue.cluster_queue == "cq"
    evicted_wl = workload(
        ("Evicted", "True", "Preempted", "Preempted to accommodate a workload"),
        ("Preempted", "True", "InClusterQueue", "Preempted to accommodate a workload"),
        schedulingStats={"evictions": [{"reason": "Preempted", "underlyingCause": "", "count": 1}]},
    )
    status = fold.apply_queue(status, fold.workload_state(evicted_wl, "gpu"), "gpu", 1)
    evicted = cond.get_condition(status.conditions, cond.EVICTED)
    assert evicted is not None and (evicted.status, evicted.reason) == ("True", "Preempted")
    assert not cond.is_true(status.conditions, cond.ADMITTED)
    assert status.queue.evictions == 1 and status.queue.cluster_queue is None
    status = fold.apply_queue(status, fold.workload_state(admitted_wl, "gpu"), "gpu", 1)
    evicted = cond.get_condition(status.conditions, cond.EVICTED)
    assert evicted is not None and (evicted.status, evicted.reason) == ("False", "Readmitted")
    assert status.queue.evictions == 1  # a count Kueue reset would not make us forget it


def test_trainjob_state_reads_its_conditions_and_jobs():
    def job(*types, jobs=(), suspend=None):
        return {
            "spec": {} if suspend is None else {"suspend": suspend},
            "status": {
                "conditions": [
                    {"type": t, "status": "True", "reason": r, "message": m} for t, r, m in types
                ],
                "jobsStatus": list(jobs),
            },
        }

    assert fold.trainjob_state(job()).phase == "Pending"
    assert fold.trainjob_state(job(suspend=True)).reason == "Suspended"
    assert fold.trainjob_state(job(jobs=[{"name": "node", "active": 2}])).phase == "Running"
    done = fold.trainjob_state(job(("Complete", "JobSetCompleted", "done")))
    assert done.phase == "Succeeded"
    failed = fold.trainjob_state(job(("Failed", "JobSetFailed", "node-0 failed")))
    assert (failed.phase, failed.reason, failed.message) == (
        "Failed",
        "JobSetFailed",
        "node-0 failed",
    )


def test_trainjob_carries_nodes_gpus_resources_config_and_the_queue():
    job = build_training_job(
        sft_job(
            nodes=4,
            gpusPerNode=8,
            shmSize="64Gi",
            backend="TrainJob",
            resources={"requests": {"cpu": "16", "memory": "200Gi"}},
            scheduling={"queueName": "gpu", "nodeSelector": {"gpu": "h100"}},
        ),
        backend="TrainJob",
        attempt=2,
    )
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["name"] == "ft-a2"
    assert job["metadata"]["labels"][names.KUEUE_QUEUE] == "gpu"
    assert job["metadata"]["labels"][names.ATTEMPT] == "2"
    spec = job["spec"]
    assert spec["suspend"] is True
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "medsft-torch",
    }
    trainer = spec["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "16", "memory": "200Gi", "nvidia.com/gpu": "8"},
        "limits": {"nvidia.com/gpu": "8"},
    }
    assert trainer["command"][:3] == ["torchrun", "--no-python", "medsft-train"]
    env = {e["name"]: e for e in trainer["env"]}
    assert env["MEDSFT_ATTEMPT"]["value"] == "2"
    assert env["MEDSFT_S3_ENDPOINT"]["value"] == "minio:9000"
    (patch,) = spec["runtimePatches"]
    assert patch["manager"] == "medsft.io/operator"
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert {"name": "config", "configMap": {"name": "ft-config"}} in pod["volumes"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert {"name": "config", "mountPath": "/etc/medsft", "readOnly": True} in pod["containers"][0][
        "volumeMounts"
    ]
    other = build_training_job(sft_job(trainingRuntime="team-torch"), backend="TrainJob")
    assert other["spec"]["runtimeRef"]["name"] == "team-torch" and "suspend" not in other["spec"]


def _suspends(obj, path=""):
    """Every ``suspend`` value anywhere in a manifest, with where it is."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "suspend":
                yield f"{path}.{key}", value
            yield from _suspends(value, f"{path}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _suspends(value, f"{path}[{i}]")


@pytest.mark.parametrize("backend", ["PyTorchJob", "TrainJob"])
@pytest.mark.parametrize(
    "example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name
)
def test_the_operator_never_writes_suspend_false(example, backend):
    """Kueue alone may unsuspend a workload: every child of every example, queued or not,
    either carries ``suspend: true`` or no ``suspend`` at all."""
    config = OperatorConfig(default_sft_backend=backend, default_storage=STORAGE)
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    rendered = [child for doc in docs for child in children_of(doc, config=config)]
    assert rendered
    found = [
        (child["kind"], where, value) for child in rendered for where, value in _suspends(child)
    ]
    assert all(value is True for _, _, value in found), found


def test_an_sftjob_keeps_the_backend_it_started_with():
    spec = SFTJobSpec.model_validate(sft_job(backend="TrainJob")["spec"])
    assert backend_of(spec, SFTJobStatus(), "PyTorchJob").kind == "TrainJob"
    unset = SFTJobSpec.model_validate(sft_job()["spec"])
    assert backend_of(unset, SFTJobStatus(), "TrainJob").kind == "TrainJob"
    started = SFTJobStatus(pytorch_job_name="ft-a0")
    assert backend_of(spec, started, "TrainJob").kind == "PyTorchJob"


def test_the_status_patch_removes_nested_fields_that_are_gone():
    """A JSON merge patch merges nested objects: the ClusterQueue of an evicted workload
    must be nulled explicitly, or the status would still name it."""
    from medsft_operator.controller import merge_patch

    current = {"phase": "Running", "queue": {"localQueue": "gpu", "clusterQueue": "cq"}, "x": 1}
    wanted = {"phase": "Queued", "queue": {"localQueue": "gpu", "evictions": 1}}
    assert merge_patch(current, wanted) == {
        "x": None,
        "phase": "Queued",
        "queue": {"clusterQueue": None, "localQueue": "gpu", "evictions": 1},
    }


def test_a_failed_attempts_pods_count_until_terminated_or_lost():
    """The next attempt waits for these; a pod deleted long ago (its node does not answer)
    no longer holds it back, or a lost node would strand the run."""
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def pod(name: str, phase: str, grace_ended_s_ago: int | None = None) -> dict:
        meta: dict = {"name": name}
        if grace_ended_s_ago is not None:  # the apiserver's format: RFC 3339, "Z"
            ended = at - timedelta(seconds=grace_ended_s_ago)
            meta["deletionTimestamp"] = ended.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"metadata": meta, "status": {"phase": phase}}

    pods = [
        pod("running", "Running"),
        pod("pending", "Pending"),
        pod("terminating", "Running", grace_ended_s_ago=-20),
        pod("slow", "Running", grace_ended_s_ago=fold.LOST_POD_AFTER_S - 1),
        pod("finished", "Succeeded"),
        pod("failed", "Failed"),
        pod("lost", "Running", grace_ended_s_ago=fold.LOST_POD_AFTER_S + 1),
    ]
    assert fold.live_pods(pods, at) == ["running", "pending", "terminating", "slow"]
