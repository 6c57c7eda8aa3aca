"""What only the cluster knows reaches the stage and the run in seconds, not never.

Against the real apiserver, with the operator as a real process and its RBAC:

* a **real kube-scheduler** (its own profile, so it schedules only the pods that name it and
  no other test's) and a Node object without GPUs: an eval pod asking for GPUs gets the
  scheduler's own ``Unschedulable`` verdict, the EvalJob turns ``Stalled`` with the
  scheduler's message and a Warning Event, and once the node advertises GPUs the scheduler
  binds the pod and the stall is resolved (not terminal: capacity comes and goes). A run's
  curation pod with a ``nodeSelector`` no node has stalls the MedSFTRun the same way.
* a **real admission refusal**: a ValidatingAdmissionPolicy (built into the apiserver) that
  denies the stage's Job; the operator's create gets 422 and the stage fails at once as
  ``ChildRejected`` with the policy's message, instead of retrying forever.

No kubelet and no Job controller run here (tests/node/test_fail_fast.py has the real
kubelet's ``ErrImagePull``): the test creates the Job's pod from its template as the Job
controller would (adding only ``schedulerName``), and posts the Job controller's
``FailedCreate`` Event for a pod refused over quota.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from controller.operator_harness import Cluster, eval_spec, resource, run_spec, wait_for
from kubernetes import client

from harness import processes
from harness.controlplane import ControlPlane
from harness.fixtures import unique
from harness.testbin import binary

SCHEDULER = "medsft-fail-fast"
GRACE = {"MEDSFT_STALL_GRACE_S": "1"}


@pytest.fixture(scope="module")
def scheduler(kube: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real kube-scheduler for the pods that name :data:`SCHEDULER`, and a Node object
    (4 CPUs, no GPUs) for it to place them on; the Node's name."""
    root = tmp_path_factory.mktemp("scheduler")
    config = root / "scheduler.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": str(kube.kubeconfig)},
                "leaderElection": {"leaderElect": False},
                "profiles": [{"schedulerName": SCHEDULER}],
            }
        )
    )
    log = root / "kube-scheduler.log"
    proc = processes.start(
        [
            binary("kube-scheduler"),
            f"--config={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={processes.free_port()}",
        ],
        log,
    )
    core = client.CoreV1Api(kube.api_client())
    node = unique("fail-fast-node")
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=node)))
    # The apiserver taints a new Node not-ready until a kubelet says otherwise; none will.
    core.patch_node(node, {"spec": {"taints": []}})
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "10"}
    core.patch_node_status(node, {"status": {"capacity": capacity, "allocatable": capacity}})
    try:
        yield node
    finally:
        processes.stop(proc)
        core.delete_node(node)


def pod_of(job: client.V1Job) -> dict[str, Any]:
    """The pod the Job controller would create for ``job`` (here for the test scheduler)."""
    api = client.ApiClient()
    template = api.sanitize_for_serialization(job.spec.template)
    pod = copy.deepcopy(template)
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    pod["metadata"] = {
        "name": f"{job.metadata.name}-{unique('p')[-5:]}",
        "labels": template["metadata"]["labels"],
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": job.metadata.name,
                "uid": job.metadata.uid,
                "controller": True,
            }
        ],
    }
    pod["spec"]["schedulerName"] = SCHEDULER
    return pod


def stalled(cluster: Cluster, kind: str, name: str, status: str = "True") -> dict[str, Any]:
    return wait_for(
        lambda: (c := cluster.condition(kind, name, "Stalled")) and c["status"] == status and c,
        timeout=60,
        what=f"{kind} {name} Stalled={status}",
    )


def test_a_gpu_request_no_node_has_stalls_the_stage_until_one_has(
    cluster, storage, start_operator, scheduler, kube
):
    start_operator(**GRACE).wait_leading()
    model = {"uri": f"s3://{storage.bucket}/models/tiny"}
    started = time.monotonic()
    cluster.create(resource("EvalJob", "ev", eval_spec(storage, model=model, gpus=2)))
    job = wait_for(lambda: cluster.job("ev-eval"), what="Job ev-eval")
    pod = cluster.core.create_namespaced_pod(cluster.namespace, pod_of(job))

    condition = stalled(cluster, "EvalJob", "ev")
    # The real scheduler's own words: which resource no node has.
    assert condition["reason"] == "Unschedulable", condition
    assert "Insufficient nvidia.com/gpu" in condition["message"]
    assert pod.metadata.name in condition["message"]
    status = cluster.status("EvalJob", "ev")
    assert status["phase"] == "Pending" and "Insufficient nvidia.com/gpu" in status["message"]
    assert time.monotonic() - started < 60  # seconds after the pod, not a stage's timeout
    cluster.wait_events("ev", "Unschedulable", mentioning="nvidia.com/gpu")

    # Not terminal: the node gets GPUs, the scheduler places the pod, the stall is over.
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "10", "nvidia.com/gpu": "4"}
    core = client.CoreV1Api(kube.api_client())
    core.patch_node_status(scheduler, {"status": {"capacity": capacity, "allocatable": capacity}})
    try:
        resolved = stalled(cluster, "EvalJob", "ev", "False")
        assert resolved["reason"] == "Resolved"
        assert cluster.status("EvalJob", "ev")["phase"] == "Pending"  # not Failed
        cluster.wait_events("ev", "Resolved")
    finally:
        gpuless = {"cpu": "4", "memory": "8Gi", "pods": "10"}
        core.patch_node_status(scheduler, {"status": {"capacity": gpuless, "allocatable": gpuless}})


def test_a_runs_stalled_stage_stalls_the_run_with_its_cause(
    cluster, storage, start_operator, scheduler
):
    start_operator(**GRACE).wait_leading()
    spec = run_spec(storage)
    spec["curation"]["spec"]["scheduling"] = {"nodeSelector": {"medsft.io/pool": "nowhere"}}
    cluster.create(resource("MedSFTRun", "r", spec))
    job = wait_for(lambda: cluster.job("r-curation-g1-work"), what="the curation Job")
    cluster.core.create_namespaced_pod(cluster.namespace, pod_of(job))

    condition = stalled(cluster, "MedSFTRun", "r")
    assert condition["reason"] == "Unschedulable"
    assert "generation 1: Curation" in condition["message"]
    assert "node affinity/selector" in condition["message"]  # the scheduler's words
    assert cluster.status("MedSFTRun", "r")["phase"] == "Running"
    cluster.wait_events("r", "Unschedulable", mentioning="r-curation-g1")


def test_a_pod_the_job_controller_cannot_create_stalls_the_stage(cluster, storage, start_operator):
    start_operator(**GRACE).wait_leading()
    model = {"uri": f"s3://{storage.bucket}/models/tiny"}
    cluster.create(resource("EvalJob", "quota", eval_spec(storage, model=model)))
    job = wait_for(lambda: cluster.job("quota-eval"), what="Job quota-eval")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    said = 'Error creating: pods "quota-eval-x" is forbidden: exceeded quota: gpu, used: pods=4'
    cluster.core.create_namespaced_event(
        cluster.namespace,
        {
            "metadata": {"name": unique("quota-eval")},
            "involvedObject": {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "namespace": cluster.namespace,
                "name": "quota-eval",
                "uid": job.metadata.uid,
            },
            "type": "Warning",
            "reason": "FailedCreate",
            "message": said,
            "source": {"component": "job-controller"},
            "count": 3,
            "firstTimestamp": now,
            "lastTimestamp": now,
        },
    )
    condition = stalled(cluster, "EvalJob", "quota")
    assert condition["reason"] == "PodsRejected" and "exceeded quota" in condition["message"]
    assert cluster.status("EvalJob", "quota")["phase"] == "Pending"  # quota may free up

    # Quota freed, the pod ran and the Job completed before the next poll: the stall that
    # was never seen to pass is over with the stage's success.
    storage.write_eval_summary(
        f"s3://{storage.bucket}/{cluster.namespace}/quota/g1/eval", {"pubmedqa": 0.5}
    )
    cluster.finish_job("quota-eval")
    cluster.wait_phase("EvalJob", "quota", "Succeeded")
    resolved = cluster.condition("EvalJob", "quota", "Stalled")
    assert resolved is not None and resolved["status"] == "False", resolved


def test_a_child_the_apiserver_refuses_fails_the_stage_at_once(
    cluster, storage, start_operator, kube
):
    """A cluster policy denies every Job asking for more than 1 GPU in this namespace."""
    admission = client.AdmissionregistrationV1Api(kube.api_client())
    policy = unique("no-big-gpu-jobs")
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["batch"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["jobs"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "object.spec.template.spec.containers.all(c, "
                        "!has(c.resources) || !has(c.resources.limits) "
                        "|| !('nvidia.com/gpu' in c.resources.limits) "
                        "|| int(c.resources.limits['nvidia.com/gpu']) <= 1)",
                        "message": "jobs in this namespace may use at most 1 GPU per pod",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "metadata": {"name": policy},
            "spec": {
                "policyName": policy,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": cluster.namespace}
                    }
                },
            },
        }
    )
    try:
        # The policy takes effect once the apiserver has compiled it: wait for a dry run
        # of such a Job to be refused, so the operator meets the policy, not a race.
        wait_for(lambda: refused(cluster, policy), timeout=30, what="the policy in force")
        start_operator(**GRACE).wait_leading()
        model = {"uri": f"s3://{storage.bucket}/models/tiny"}
        cluster.create(resource("EvalJob", "big", eval_spec(storage, model=model, gpus=2)))
        status = cluster.wait_phase("EvalJob", "big", "Failed", timeout=30)
        failed = cluster.condition("EvalJob", "big", "Failed")
        assert failed is not None and failed["reason"] == "ChildRejected"
        assert "at most 1 GPU per pod" in status["message"] and "big-eval" in status["message"]
        assert cluster.jobs() == []
        cluster.wait_events("big", "ChildRejected", mentioning="at most 1 GPU")
    finally:
        admission.delete_validating_admission_policy_binding(policy)
        admission.delete_validating_admission_policy(policy)


def refused(cluster: Cluster, policy: str) -> bool:
    gpu = {"nvidia.com/gpu": "2"}
    job = {
        "metadata": {"name": "probe"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "c",
                            "image": "busybox",
                            "resources": {"limits": gpu, "requests": gpu},
                        }
                    ],
                }
            }
        },
    }
    try:
        cluster.batch.create_namespaced_job(cluster.namespace, job, dry_run="All")
    except client.ApiException as exc:
        return exc.status == 422 and policy in (exc.body or "")
    return False
