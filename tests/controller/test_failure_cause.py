"""A stage that fails names its cause, read from its pods (issue 23, item 7): a storage outage
past the retry budget reads ``StorageUnavailable`` with the store's error and how long it was
tried, not "1 Master replica(s) failed".

The operator runs as its ServiceAccount against the real apiserver and MinIO. No kubelet runs
here: the test writes the failed pod's status as the kubelet does, with the container's
``/dev/termination-log`` content in ``state.terminated.message``, and the line itself comes
from the stage's own code (``medsft_pipelines.termination``) for a real StorageUnavailable
(tests/storage/test_faults.py raises one against a stopped MinIO). The kubelet's side, the
file copied into the status, is Kubernetes' own (``terminationMessagePath``)."""

from __future__ import annotations

import time
from typing import Any

import yaml
from controller.operator_harness import FAKE, curation_spec, resource, sft_spec, wait_for
from kubernetes import client

from harness.tcpproxy import TcpProxy
from medsft_pipelines.storage import ShardIntegrityError, StorageUnavailable
from medsft_pipelines.termination import termination_line


def fail_pod(cluster, owner: dict[str, Any], template: dict[str, Any], name: str, line: str):
    """A pod of ``owner`` (a Job or PyTorchJob) whose container ended with ``line`` in its
    termination message, as the kubelet reports it."""
    meta = owner["metadata"]
    owner_ref = client.V1OwnerReference(
        api_version=owner["apiVersion"], kind=owner["kind"], name=meta["name"], uid=meta["uid"]
    )
    container = template["spec"]["containers"][0]
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name, labels=template["metadata"]["labels"], owner_references=[owner_ref]
        ),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name=container["name"], image=container["image"])],
            restart_policy="Never",
        ),
    )
    cluster.core.create_namespaced_pod(cluster.namespace, pod)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ended = {"exitCode": 2, "reason": "Error", "message": line, "startedAt": now, "finishedAt": now}
    status = {
        "phase": "Failed",
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": ended},
            }
        ],
    }
    cluster.core.patch_namespaced_pod_status(name, cluster.namespace, {"status": status})


def test_an_outage_past_the_retry_budget_fails_each_attempt_and_the_stage_with_its_cause(
    cluster, storage, operator
):
    """Both attempts die of the outage; when the second does, the store is still down for the
    operator too (its storage goes through a proxy the test cuts): the stage fails with the
    cause all the same, instead of retrying until the store answers."""
    dataset = f"s3://{storage.bucket}/datasets/outage"
    storage.write_dataset(dataset)
    proxy = TcpProxy(int(storage.endpoint.rsplit(":", 1)[1])).start()
    spec = sft_spec(
        storage,
        dataset={"manifestUri": f"{dataset}/manifest.json"},
        backoffLimit=1,
        nodes=1,
    )
    spec["storage"] |= {"endpoint": f"127.0.0.1:{proxy.port}", "retryTimeoutSeconds": 5}
    cluster.create(resource("SFTJob", "out", spec, annotations={f"{FAKE}outcome": "Running"}))
    outage = StorageUnavailable(
        f"PUT s3://{storage.bucket}/{cluster.namespace}/out/g1/sft/checkpoints/node-0/"
        "step-000000004/mp_rank_00_model_states.pt failed: MaxRetryError: Connection refused; "
        "gave up after 6 attempt(s) over 5s (retry budget 5s)"
    )

    for attempt in (0, 1):
        job = wait_for(lambda a=attempt: cluster.pytorchjob(f"out-a{a}"), what=f"out-a{attempt}")
        template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
        if attempt == 1:
            proxy.cut()  # from here on nobody reaches the store
        if attempt == 0:  # the pods are told the budget: the trainer builds its settings from it
            volumes = template["spec"]["volumes"]
            config_name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
            config_map = cluster.core.read_namespaced_config_map(config_name, cluster.namespace)
            configs = [yaml.safe_load(text) for text in config_map.data.values()]
            config = next(c for c in configs if c.get("kind") == "SFTJobConfig")
            assert config["storage"]["retryTimeoutSeconds"] == 5
        fail_pod(cluster, job, template, f"out-a{attempt}-master-0", termination_line(outage))
        cluster.steer(f"out-a{attempt}", "Failed")
        if attempt == 0:
            # The retry says why the first attempt failed, in the Event users read first.
            events = cluster.wait_events("out", "Retrying", mentioning="StorageUnavailable")
            assert any("out-a0" in message for _, message in events)

    try:
        status = cluster.wait_phase("SFTJob", "out", "Failed")
    finally:
        proxy.close()
    failed = cluster.condition("SFTJob", "out", "Failed")
    assert failed["reason"] == "StorageUnavailable", failed
    assert "after 2 attempt(s)" in status["message"]
    assert "pod out-a1-master-0 (exit 2)" in status["message"]
    assert "retry budget 5s" in status["message"]


def test_a_curation_worker_that_fails_on_a_corrupt_shard_names_it(cluster, storage, operator):
    cluster.create(resource("CurationJob", "bad-shard", curation_spec(storage)))
    work = wait_for(lambda: cluster.job("bad-shard-work"), what="the worker Job")
    owner = cluster.batch.api_client.sanitize_for_serialization(work)
    owner |= {"apiVersion": "batch/v1", "kind": "Job"}
    line = termination_line(ShardIntegrityError("shard 00003 of src: sha256 mismatch"))
    fail_pod(cluster, owner, owner["spec"]["template"], "bad-shard-work-0-x1", line)
    cluster.finish_job("bad-shard-work", succeeded=False, reason="BackoffLimitExceeded")

    status = cluster.wait_phase("CurationJob", "bad-shard", "Failed")
    failed = cluster.condition("CurationJob", "bad-shard", "Failed")
    assert failed["reason"] == "ShardIntegrityError", failed
    assert "BackoffLimitExceeded" in status["message"]  # the Job's own words stay
    assert (
        "pod bad-shard-work-0-x1 (exit 2): shard 00003 of src: sha256 mismatch"
        in (status["message"])
    )


def test_with_no_pod_left_and_the_store_down_the_stage_names_the_store(cluster, storage, operator):
    """The Kubeflow training operator may delete a failed attempt's pods with the job (seen
    on the real node): nothing tells why. If the operator cannot reach the store either, that
    is the cause it reports, not the PyTorchJob's generic reason."""
    dataset = f"s3://{storage.bucket}/datasets/gone"
    storage.write_dataset(dataset)
    proxy = TcpProxy(int(storage.endpoint.rsplit(":", 1)[1])).start()
    spec = sft_spec(
        storage, dataset={"manifestUri": f"{dataset}/manifest.json"}, backoffLimit=0, nodes=1
    )
    spec["storage"] |= {"endpoint": f"127.0.0.1:{proxy.port}"}
    cluster.create(resource("SFTJob", "gone", spec, annotations={f"{FAKE}outcome": "Running"}))
    wait_for(lambda: cluster.pytorchjob("gone-a0"), what="gone-a0")
    proxy.cut()
    cluster.steer("gone-a0", "Failed")
    try:
        status = cluster.wait_phase("SFTJob", "gone", "Failed")
    finally:
        proxy.close()
    assert cluster.condition("SFTJob", "gone", "Failed")["reason"] == "StorageUnavailable"
    assert "the object store does not answer" in status["message"], status
