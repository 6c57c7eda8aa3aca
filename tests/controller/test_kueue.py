"""Kueue admission for real: the operator's stages against the real Kueue controller
(built from its Go module, webhooks served to the apiserver on 127.0.0.1, integrations
batch/job, kubeflow.org/pytorchjob and trainer.kubeflow.org/trainjob enabled explicitly).

What stands in: no node runs pods, so the PyTorchJob is moved by the harness's fake
training operator (which honours ``runPolicy.suspend`` as the real one does: pods gone
and ``Suspended=True`` while suspended), batch Jobs are finished through their status
subresource as the Job controller would, and what the pods would write to MinIO is
written by the test. Admission, quota, priority preemption and eviction are Kueue's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from controller.operator_harness import (
    FAKE,
    Cluster,
    RunDriver,
    eval_spec,
    resource,
    run_spec,
    sft_spec,
    wait_for,
)
from kubernetes import client

from harness.batch_controllers import BATCH_LABEL

KUEUE = ("kueue.x-k8s.io", "v1beta2")
HELD = {f"{FAKE}outcome": "Running"}  # PyTorchJobs wait for the test to finish them
FLAVOR = "medsft-test-default"
LOW, HIGH = "medsft-test-low", "medsft-test-high"


@dataclass
class Queues:
    """A ClusterQueue for the test's namespace and its LocalQueue ``gpu``."""

    cluster: Cluster
    cluster_queue: str
    local_queue: str = "gpu"

    @property
    def custom(self) -> client.CustomObjectsApi:
        return self.cluster.custom

    def set_gpus(self, gpus: int) -> None:
        cq = self.custom.get_cluster_custom_object(*KUEUE, "clusterqueues", self.cluster_queue)
        group = cq["spec"]["resourceGroups"][0]
        for quota in group["flavors"][0]["resources"]:
            if quota["name"] == "nvidia.com/gpu":
                quota["nominalQuota"] = gpus
        self.custom.patch_cluster_custom_object(
            *KUEUE, "clusterqueues", self.cluster_queue, {"spec": {"resourceGroups": [group]}}
        )

    def workloads(self) -> list[dict]:
        return self.custom.list_namespaced_custom_object(
            *KUEUE, self.cluster.namespace, "workloads"
        )["items"]


def _create_cluster_scoped(api: client.CustomObjectsApi, group, version, plural, body) -> None:
    try:
        api.create_cluster_custom_object(group, version, plural, body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise


@pytest.fixture
def queues(kube, cluster: Cluster, kueue) -> Iterator[Queues]:
    ns = cluster.namespace
    # Kueue's webhooks for Jobs / PyTorchJobs serve only labelled namespaces (harness.batch_controllers).
    cluster.core.patch_namespace(ns, {"metadata": {"labels": {BATCH_LABEL: "true"}}})
    scheduling = client.SchedulingV1Api(cluster.api)
    for name, value in ((LOW, 100), (HIGH, 1000)):
        try:
            scheduling.create_priority_class(
                client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=value)
            )
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    _create_cluster_scoped(
        cluster.custom,
        *KUEUE,
        "resourceflavors",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": FLAVOR},
        },
    )
    cq = f"cq-{ns}"
    cluster.custom.create_cluster_custom_object(
        *KUEUE,
        "clusterqueues",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": FLAVOR,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": 64},
                                    {"name": "memory", "nominalQuota": "256Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": 1},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    cluster.custom.create_namespaced_custom_object(
        *KUEUE,
        ns,
        "localqueues",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "gpu"},
            "spec": {"clusterQueue": cq},
        },
    )
    yield Queues(cluster, cq)
    kube.kubectl("delete", "clusterqueue", cq, "--wait=false", check=False)


def high_priority_job(name: str, gpus: int) -> client.V1Job:
    """Someone else's more important Job in the same ClusterQueue."""
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels={"kueue.x-k8s.io/queue-name": "gpu"}),
        spec=client.V1JobSpec(
            suspend=True,
            template=client.V1PodTemplateSpec(
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    priority_class_name=HIGH,
                    containers=[
                        client.V1Container(
                            name="main",
                            image="registry.example/other:1",
                            resources=client.V1ResourceRequirements(
                                requests={"nvidia.com/gpu": str(gpus)},
                                limits={"nvidia.com/gpu": str(gpus)},
                            ),
                        )
                    ],
                )
            ),
        ),
    )


def suspend_managers(job: dict) -> set[str]:
    """The field managers that own ``spec.runPolicy.suspend`` of a PyTorchJob."""
    return {
        entry["manager"]
        for entry in job["metadata"].get("managedFields") or []
        if "f:suspend" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}).get("f:runPolicy", {})
    }


def test_a_queued_run_waits_for_quota_is_preempted_and_completes_after_readmission(
    cluster, storage, operator, queues
):
    spec = run_spec(storage)
    sft = spec["sft"]["spec"]
    sft["gpusPerNode"] = 2  # more than the quota of 1 GPU
    sft["backoffLimit"] = 0  # an eviction counted as a failure would fail the run
    sft["training"]["globalBatchSize"] = 8
    sft["scheduling"] = {"queueName": queues.local_queue, "priorityClassName": LOW}
    cluster.create(resource("MedSFTRun", "run", spec, annotations=HELD))
    drive = RunDriver(cluster, storage, "run")
    drive.curation()

    # Over quota: the SFTJob (and so the run) is Queued, with Kueue's own explanation.
    status = cluster.wait_phase("SFTJob", "run-sft-g1", "Queued")
    # First WaitingForWorkload, until Kueue has made the Workload; then a generic "waiting in
    # LocalQueue" until Kueue has tried to admit it and written its own reason on the Workload.
    queued = wait_for(
        lambda: (
            (c := cluster.condition("SFTJob", "run-sft-g1", "Queued"))
            and c["reason"] == "WaitingForQuota"
            and "insufficient quota" in c["message"]
            and c
        ),
        what="Queued: WaitingForQuota with Kueue's message",
    )
    assert queued["status"] == "True"
    assert "insufficient quota for nvidia.com/gpu" in queued["message"], queued
    status = cluster.status("SFTJob", "run-sft-g1")
    assert status["queue"]["localQueue"] == "gpu" and status["queue"]["workload"]
    job = cluster.pytorchjob("run-sft-g1-a0")
    assert job["spec"]["runPolicy"]["suspend"] is True
    cluster.wait_phase("MedSFTRun", "run", "Queued")
    wait_for(
        lambda: "insufficient quota" in cluster.status("MedSFTRun", "run")["message"],
        what="Kueue's message in the run's status",
    )
    table = cluster.kube.kubectl("get", "medsft", "-n", cluster.namespace).stdout
    row = next(line for line in table.splitlines() if line.startswith("medsftrun.medsft.io/run "))
    assert "Queued" in row.split(), table

    # Raising the quota admits it: Kueue unsuspends the PyTorchJob, the stage runs.
    queues.set_gpus(2)
    status = cluster.wait_phase("SFTJob", "run-sft-g1", "Running")
    admitted = cluster.condition("SFTJob", "run-sft-g1", "Admitted")
    assert admitted["status"] == "True"
    assert admitted["message"] == f"admitted by ClusterQueue {queues.cluster_queue}"
    assert status["queue"]["clusterQueue"] == queues.cluster_queue
    assert cluster.condition("SFTJob", "run-sft-g1", "Queued")["status"] == "False"
    # Only Kueue ever wrote suspend: false; the operator created the job suspended.
    job = cluster.pytorchjob("run-sft-g1-a0")
    assert "suspend" not in job["spec"]["runPolicy"] or job["spec"]["runPolicy"]["suspend"] is False
    assert "kueue" in suspend_managers(job), job["metadata"]["managedFields"]

    # Training makes progress and checkpoints.
    sft_output = drive.output(1, "sft")
    checkpoint = storage.write_checkpoint(sft_output, 3)
    storage.write_training(sft_output, 3, 5, loss=1.5)
    wait_for(
        lambda: cluster.status("SFTJob", "run-sft-g1").get("latestCheckpointUri") == checkpoint,
        what="the checkpoint in status",
    )

    # A higher-priority workload preempts it: Kueue re-suspends the same PyTorchJob.
    cluster.batch.create_namespaced_job(cluster.namespace, high_priority_job("urgent", 2))
    status = cluster.wait_phase("SFTJob", "run-sft-g1", "Queued", timeout=90)
    evicted = cluster.condition("SFTJob", "run-sft-g1", "Evicted")
    assert evicted["status"] == "True" and evicted["reason"] == "Preempted", evicted
    assert "InClusterQueue" in evicted["message"]
    assert f"resumes from {checkpoint} when re-admitted" in status["message"]
    assert status["queue"]["evictions"] >= 1 and "clusterQueue" not in status["queue"]
    assert cluster.wait_phase("MedSFTRun", "run", "Queued")
    assert cluster.condition("SFTJob", "run-sft-g1", "Admitted")["status"] == "False"
    urgent = wait_for(
        lambda: (j := cluster.job("urgent")).spec.suspend is False and j, what="urgent admitted"
    )
    assert urgent.spec.suspend is False

    # The urgent job finishes; Kueue re-admits the SFT, which resumes (same job, no retry).
    cluster.finish_job("urgent")
    status = cluster.wait_phase("SFTJob", "run-sft-g1", "Running", timeout=90)
    readmitted = cluster.condition("SFTJob", "run-sft-g1", "Evicted")
    assert (readmitted["status"], readmitted["reason"]) == ("False", "Readmitted")
    assert status["latestCheckpointUri"] == checkpoint
    assert [j["metadata"]["name"] for j in cluster.pytorchjobs()] == ["run-sft-g1-a0"]
    assert status.get("restarts", 0) == 0
    cluster.wait_events("run-sft-g1", "Queued", "Preempted")
    assert "Retrying" not in {r for r, _ in cluster.events("run-sft-g1")}

    # The whole run completes after re-admission.
    drive.sft()
    drive.eval()
    status = cluster.wait_phase("MedSFTRun", "run", "Succeeded")
    assert status["stage"] == "Done"


def test_a_stage_in_a_missing_local_queue_is_queued_as_inadmissible(
    cluster, storage, operator, queues
):
    """A batch-Job stage (an EvalJob) naming a LocalQueue that does not exist: Kueue says
    why it cannot admit it, and so does the status."""
    spec = eval_spec(storage, model={"uri": f"s3://{storage.bucket}/models/tiny"})
    spec["scheduling"] = {"queueName": "no-such-queue"}
    cluster.create(resource("EvalJob", "ev", spec))
    cluster.wait_phase("EvalJob", "ev", "Queued")
    queued = wait_for(
        lambda: (
            (c := cluster.condition("EvalJob", "ev", "Queued"))
            and c["reason"] == "Inadmissible"
            and c
        ),
        what="Queued: Inadmissible",
    )
    status = cluster.status("EvalJob", "ev")
    assert "no-such-queue" in queued["message"] and queued["message"] == status["message"]
    assert cluster.job("ev-eval").spec.suspend is True


def deactivate(queues: Queues, job: str) -> dict:
    """Set ``spec.active: false`` on the Workload of PyTorchJob ``job``, as an admin does (and
    as Kueue itself does when waitForPodsReady's requeuing limit is reached)."""
    workload = wait_for(
        lambda: next(
            (
                w
                for w in queues.workloads()
                if any(o["name"] == job for o in w["metadata"].get("ownerReferences") or [])
            ),
            None,
        ),
        what=f"the Workload of {job}",
    )
    name = workload["metadata"]["name"]
    return queues.custom.patch_namespaced_custom_object(
        *KUEUE, queues.cluster.namespace, "workloads", name, {"spec": {"active": False}}
    )


def test_a_deactivated_workload_spends_an_attempt_then_fails_with_kueues_reason(
    cluster, storage, operator, queues
):
    """Before: the SFTJob stayed Queued ("resumes from ... when re-admitted") for good, its
    PyTorchJob suspended by a Workload Kueue never re-queues."""
    dataset = f"s3://{storage.bucket}/datasets/deactivated"
    storage.write_dataset(dataset)
    spec = sft_spec(
        storage,
        dataset={"manifestUri": f"{dataset}/manifest.json"},
        nodes=1,
        gpusPerNode=1,
        backoffLimit=1,
        scheduling={"queueName": queues.local_queue},
    )
    cluster.create(resource("SFTJob", "ft", spec, annotations=HELD))
    cluster.wait_phase("SFTJob", "ft", "Running")

    # Attempt a0's Workload is deactivated: Kueue suspends the job and will not re-queue it.
    deactivate(queues, "ft-a0")
    wait_for(lambda: cluster.pytorchjob("ft-a1"), what="attempt a1")
    status = wait_for(
        lambda: (s := cluster.status("SFTJob", "ft")).get("restarts") == 1 and s,
        what="one attempt spent",
    )
    assert status["phase"] in ("Running", "Queued"), status
    # Kueue's own reason for ending a0, in the event that spends the attempt.
    cluster.wait_events("ft", "Retrying", mentioning="ft-a0 failed (Deactivated)")
    cluster.wait_phase("SFTJob", "ft", "Running")

    # The retry budget is spent: a1's deactivation fails the stage with Kueue's reason.
    deactivate(queues, "ft-a1")
    status = cluster.wait_phase("SFTJob", "ft", "Failed")
    failed = cluster.condition("SFTJob", "ft", "Failed")
    assert failed["reason"] == "Deactivated", failed
    assert "Kueue deactivated workload" in status["message"] and "2 attempt(s)" in status["message"]
    assert sorted(j["metadata"]["name"] for j in cluster.pytorchjobs()) == ["ft-a0", "ft-a1"]
