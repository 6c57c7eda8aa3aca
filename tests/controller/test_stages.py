"""Each stage kind alone, reconciled by the operator (running as its ServiceAccount with
the shipped RBAC) against the real apiserver and the real MinIO."""

from __future__ import annotations

from controller.operator_harness import (
    FAKE,
    STORAGE_SECRET,
    curation_spec,
    eval_spec,
    resource,
    sft_spec,
    wait_for,
)


def test_curation_job_runs_workers_then_merge_and_reports_the_dataset(cluster, storage, operator):
    cluster.create(resource("CurationJob", "cur", curation_spec(storage)))
    output = f"s3://{storage.bucket}/{cluster.namespace}/cur/g1/curation"

    # The Indexed worker Job comes first, with its config; no merge yet.
    work = wait_for(lambda: cluster.job("cur-work"), what="the worker Job")
    assert work.spec.completion_mode == "Indexed"
    assert work.spec.completions == work.spec.parallelism == 2
    assert work.metadata.owner_references[0].kind == "CurationJob"
    assert cluster.jobs() == ["cur-work"]
    assert cluster.core.read_namespaced_config_map("cur-config", cluster.namespace).data[
        "work.yaml"
    ]
    env = {e.name: e for e in work.spec.template.spec.containers[0].env}
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == STORAGE_SECRET
    assert env["AWS_SECRET_ACCESS_KEY"].value is None  # by reference, never copied

    # Progress written by the workers is folded into the status by the timer.
    storage.write_progress(output, 5, 20, counts={"rows_read": 5})
    wait_for(
        lambda: cluster.status("CurationJob", "cur").get("progress") == "5/20", what="progress 5/20"
    )
    assert cluster.status("CurationJob", "cur")["inputRows"] == 5

    cluster.finish_job("cur-work")
    wait_for(lambda: "cur-merge" in cluster.jobs(), what="the merge Job")
    storage.write_dataset(output, rows=12)
    cluster.finish_job("cur-merge")

    status = cluster.wait_phase("CurationJob", "cur", "Succeeded")
    assert status["manifestUri"] == f"{output}/manifest.json"
    assert status["keptSamples"] == 12
    assert status["tracesAccepted"] == 12 and status["tracesGenerated"] == 24
    assert status["removed"] == {"duplicate_exact": 3}
    assert status["totalTokens"] == 1000 and status["questions"] == 12
    ready = cluster.condition("CurationJob", "cur", "Ready")
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    cluster.wait_events("cur", "Created", "Succeeded")


def test_curation_job_failure_is_reported_with_the_jobs_reason(cluster, storage, operator):
    cluster.create(resource("CurationJob", "bad", curation_spec(storage)))
    wait_for(lambda: cluster.job("bad-work"), what="the worker Job")
    cluster.finish_job("bad-work", succeeded=False, reason="BackoffLimitExceeded")
    status = cluster.wait_phase("CurationJob", "bad", "Failed")
    assert "BackoffLimitExceeded" in status["message"]
    assert cluster.condition("CurationJob", "bad", "Failed")["reason"] == "BackoffLimitExceeded"
    assert "bad-merge" not in cluster.jobs()


def test_missing_secret_is_a_condition_rechecked_until_it_appears(cluster, storage, operator):
    spec = curation_spec(
        storage, storage={**storage.spec(), "credentialsSecret": {"name": "later"}}
    )
    cluster.create(resource("CurationJob", "waits", spec))
    inputs = wait_for(
        lambda: (
            (c := cluster.condition("CurationJob", "waits", "InputsReady"))
            and c["status"] == "False"
            and c
        ),
        what="InputsReady=False",
    )
    assert inputs["reason"] == "SecretNotFound"
    assert "'later'" in inputs["message"]
    assert cluster.status("CurationJob", "waits")["phase"] == "Pending"
    assert cluster.jobs() == []
    # No crash loop: the operator is alive and keeps re-checking; the Secret appears...
    assert operator.health()["status"] == "ok"
    cluster.secret("later", {"accessKey": storage.access_key, "secretKey": storage.secret_key})
    wait_for(lambda: "waits-work" in cluster.jobs(), what="the worker Job once the Secret exists")
    wait_for(
        lambda: cluster.condition("CurationJob", "waits", "InputsReady")["status"] == "True",
        what="InputsReady=True",
    )
    # ...and secret values never reach status or events.
    assert storage.secret_key not in str(cluster.get("CurationJob", "waits"))
    assert all(storage.secret_key not in m for _, m in cluster.events("waits"))
    assert storage.secret_key not in operator.log.read_text()


def test_sft_job_builds_a_valid_pytorchjob_retries_a_failure_and_resumes(
    cluster, storage, operator
):
    dataset = f"s3://{storage.bucket}/datasets/d1"
    storage.write_dataset(dataset)
    spec = sft_spec(storage, dataset={"manifestUri": f"{dataset}/manifest.json"})
    # Born "Running": the fake training operator holds it there until the test says otherwise.
    cluster.create(resource("SFTJob", "ft", spec, annotations={f"{FAKE}outcome": "Running"}))
    output = f"s3://{storage.bucket}/{cluster.namespace}/ft/g1/sft"

    # The apiserver accepted it against the upstream PyTorchJob CRD.
    first = wait_for(lambda: cluster.pytorchjob("ft-a0"), what="PyTorchJob ft-a0")
    replicas = first["spec"]["pytorchReplicaSpecs"]
    assert first["spec"]["nprocPerNode"] == "4"
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1
    pod = replicas["Worker"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    assert first["spec"]["runPolicy"]["backoffLimit"] == 0  # the operator's attempts retry
    wait_for(lambda: cluster.status("SFTJob", "ft").get("phase") == "Running", what="SFT Running")

    # Telemetry from storage lands in the status.
    storage.write_training(output, step=40, total=100, loss=1.25)
    status = wait_for(
        lambda: (s := cluster.status("SFTJob", "ft")).get("step") == 40 and s, what="step 40"
    )
    assert (
        status["totalSteps"] == 100
        and status["loss"] == 1.25
        and status["tokensPerSecond"] == 1234.5
    )
    assert status["progress"] == "40/100"

    # Node 0 alone saved step 60: not a checkpoint of a 2-node job.
    storage.write_checkpoint(output, step=60, nodes=1)
    # The attempt fails after a checkpoint: the next attempt resumes from it.
    checkpoint = storage.write_checkpoint(output, step=40, nodes=2)
    cluster.steer("ft-a0", "Failed")
    second = wait_for(lambda: cluster.pytorchjob("ft-a1"), what="PyTorchJob ft-a1")
    env = {
        e["name"]: e.get("value")
        for e in second["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][
            0
        ]["env"]
    }
    # The next attempt runs the same job config against the same output, so its trainer
    # resumes from the checkpoint by itself (shown with the real trainer in
    # tests/sft/test_train_distributed.py::test_the_operators_next_attempt_resumes_...).
    assert env["MEDSFT_ATTEMPT"] == "1"

    def config_maps(job: dict) -> list[str]:
        pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        return [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]

    assert config_maps(second) == config_maps(first) and config_maps(first)
    status = wait_for(
        lambda: (s := cluster.status("SFTJob", "ft")).get("restarts") == 1 and s, what="restarts 1"
    )
    assert status["latestCheckpointUri"] == checkpoint
    assert status["phase"] == "Running"
    cluster.wait_events("ft", "Retrying", mentioning="ft-a0")

    storage.write_model(output)
    cluster.steer("ft-a1", "Succeeded")
    status = cluster.wait_phase("SFTJob", "ft", "Succeeded")
    assert status["modelUri"] == f"{output}/model"
    assert status["pytorchJobName"] == "ft-a1"
    assert sorted(j["metadata"]["name"] for j in cluster.pytorchjobs()) == ["ft-a0", "ft-a1"]


def test_sft_job_fails_with_the_childs_reason_beyond_the_backoff_limit(cluster, storage, operator):
    dataset = f"s3://{storage.bucket}/datasets/d2"
    storage.write_dataset(dataset)
    spec = sft_spec(
        storage, dataset={"manifestUri": f"{dataset}/manifest.json"}, backoffLimit=0, nodes=1
    )
    cluster.create(resource("SFTJob", "once", spec, annotations={f"{FAKE}outcome": "Failed"}))
    status = cluster.wait_phase("SFTJob", "once", "Failed")
    assert (
        status["conditions"]
        and cluster.condition("SFTJob", "once", "Failed")["reason"] == "PyTorchJobFailed"
    )
    assert "once-a0" in status["message"] and "1 attempt" in status["message"]
    assert [j["metadata"]["name"] for j in cluster.pytorchjobs()] == ["once-a0"]


def test_sft_job_waits_for_a_missing_dataset_manifest(cluster, storage, operator):
    dataset = f"s3://{storage.bucket}/datasets/later"
    spec = sft_spec(storage, dataset={"manifestUri": f"{dataset}/manifest.json"})
    cluster.create(resource("SFTJob", "early", spec, annotations={f"{FAKE}outcome": "Running"}))
    inputs = wait_for(
        lambda: (
            (c := cluster.condition("SFTJob", "early", "InputsReady"))
            and c["status"] == "False"
            and c
        ),
        what="InputsReady=False",
    )
    assert inputs["reason"] == "DatasetNotFound" and dataset in inputs["message"]
    assert cluster.pytorchjobs() == []
    storage.write_dataset(dataset)
    wait_for(lambda: cluster.pytorchjob("early-a0"), what="the PyTorchJob once the dataset exists")


def test_eval_job_waits_for_its_model_then_reports_scores(cluster, storage, operator):
    cluster.create(
        resource("EvalJob", "ev", eval_spec(storage, model={"sftJobRef": {"name": "nope"}}))
    )
    inputs = wait_for(
        lambda: (
            (c := cluster.condition("EvalJob", "ev", "InputsReady"))
            and c["status"] == "False"
            and c
        ),
        what="InputsReady=False",
    )
    assert inputs["reason"] == "ReferenceNotFound"
    model, vllm = {"uri": f"s3://{storage.bucket}/m"}, {"backend": "vllm"}
    cluster.create(
        resource("EvalJob", "ev2", eval_spec(storage, model=model, gpus=2, generation=vllm))
    )
    job = wait_for(lambda: cluster.job("ev2-eval"), what="the eval Job")
    limits = job.spec.template.spec.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "2"
    # Generation with vLLM runs on the operator's eval image, the image that carries vLLM.
    assert job.spec.template.spec.containers[0].image == "registry.example/medsft/eval:test"
    storage.write_eval_summary(
        f"s3://{storage.bucket}/{cluster.namespace}/ev2/g1/eval", {"pubmedqa": 0.5, "medqa": 0.7}
    )
    cluster.finish_job("ev2-eval")
    status = cluster.wait_phase("EvalJob", "ev2", "Succeeded")
    assert status["meanAccuracy"] == 0.6
    assert {r["name"]: r["accuracy"] for r in status["results"]} == {"pubmedqa": 0.5, "medqa": 0.7}


def test_a_spec_without_storage_uses_the_operators_default(cluster, storage, start_operator):
    op = start_operator(
        MEDSFT_STORAGE_ENDPOINT=storage.endpoint,
        MEDSFT_STORAGE_BUCKET=storage.bucket,
        MEDSFT_STORAGE_SECURE="false",
        MEDSFT_STORAGE_SECRET=STORAGE_SECRET,
    )
    op.wait_leading()
    spec = curation_spec(storage)
    del spec["storage"]
    cluster.create(resource("CurationJob", "dflt", spec))
    job = wait_for(lambda: cluster.job("dflt-work"), what="the worker Job")
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["MEDSFT_S3_ENDPOINT"].value == storage.endpoint
    assert env["MEDSFT_S3_SECURE"].value == "false"
    assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name == STORAGE_SECRET
    config = cluster.core.read_namespaced_config_map("dflt-config", cluster.namespace).data[
        "work.yaml"
    ]
    assert f"s3://{storage.bucket}/{cluster.namespace}/dflt/g1/curation" in config


def test_an_unknown_benchmark_is_a_condition_not_a_pod(cluster, storage, operator):
    """The apiserver cannot know the registry's names (`medsft validate` does): the operator
    says so in the status and creates nothing."""
    bad = [{"name": "usmle-step9"}, {"name": "medqa"}]
    model = {"uri": f"s3://{storage.bucket}/m"}
    cluster.create(resource("EvalJob", "typo", eval_spec(storage, model=model, benchmarks=bad)))
    status = cluster.wait_phase("EvalJob", "typo", "Failed")
    failed = cluster.condition("EvalJob", "typo", "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "unknown benchmark 'usmle-step9'; known: " in status["message"]
    assert "medqa" in status["message"] and "vqa-rad" in status["message"]
    run = {
        "storage": storage.spec(),
        "sft": {
            "spec": {
                "model": model,
                "dataset": {"manifestUri": f"s3://{storage.bucket}/d/manifest.json"},
            }
        },
        "eval": {"spec": {"benchmarks": bad}},
    }
    cluster.create(resource("MedSFTRun", "typo-run", run))
    status = cluster.wait_phase("MedSFTRun", "typo-run", "Failed")
    assert "unknown benchmark 'usmle-step9'" in status["message"]
    assert cluster.jobs() == [] and cluster.list("SFTJob") == []
    assert [e["metadata"]["name"] for e in cluster.list("EvalJob")] == ["typo"]


def test_the_next_attempt_waits_until_the_failed_attempts_pods_are_gone(cluster, storage, operator):
    """A survivor of attempt a0 (here a pod no kubelet runs: it stays Pending, as a rank
    blocked in a collective stays Running) would hold GPUs and write checkpoints beside a1.
    The PyTorchJob's cleanPodPolicy: Running has the training operator delete them; the operator
    starts a1 only once they are gone. Before: a1 was created at once."""
    from kubernetes import client

    dataset = f"s3://{storage.bucket}/datasets/survivor"
    storage.write_dataset(dataset)
    spec = sft_spec(storage, dataset={"manifestUri": f"{dataset}/manifest.json"}, nodes=1)
    cluster.create(resource("SFTJob", "ft", spec, annotations={f"{FAKE}outcome": "Running"}))
    first = wait_for(lambda: cluster.pytorchjob("ft-a0"), what="PyTorchJob ft-a0")
    assert first["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    labels = first["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    survivor = client.V1Pod(
        metadata=client.V1ObjectMeta(name="ft-a0-master-0", labels=labels),
        spec=client.V1PodSpec(
            containers=[client.V1Container(name="pytorch", image="registry.example/trainer:1")]
        ),
    )
    cluster.core.create_namespaced_pod(cluster.namespace, survivor)

    cluster.steer("ft-a0", "Failed")

    def waiting_for_pods() -> dict | None:
        # One read: the condition and the message of the same status (two reads could pair
        # a status from before the wait with a condition from after it).
        s = cluster.status("SFTJob", "ft")
        progressing = [c for c in s.get("conditions") or [] if c["type"] == "Progressing"]
        return s if progressing and progressing[0]["reason"] == "WaitingForPods" else None

    waiting = wait_for(waiting_for_pods, what="Progressing: WaitingForPods")
    assert "1 pod(s)" in waiting["message"] and waiting["phase"] == "Running", waiting
    # Three more polls of the SFTJob (the operator polls every second): still no a1.
    polls = operator.metric("medsft_reconciles_total", kind="SFTJob", trigger="poll")
    wait_for(
        lambda: (
            operator.metric("medsft_reconciles_total", kind="SFTJob", trigger="poll") >= polls + 3
        ),
        what="three more polls",
    )
    assert [j["metadata"]["name"] for j in cluster.pytorchjobs()] == ["ft-a0"]
    assert cluster.condition("SFTJob", "ft", "Progressing")["reason"] == "WaitingForPods"

    cluster.core.delete_namespaced_pod("ft-a0-master-0", cluster.namespace, grace_period_seconds=0)
    wait_for(lambda: cluster.pytorchjob("ft-a1"), what="attempt a1 once the pod is gone")
    status = wait_for(
        lambda: (s := cluster.status("SFTJob", "ft")).get("restarts") == 1 and s, what="restarts 1"
    )
    assert status["phase"] == "Running"


def test_an_sft_job_refuses_checkpoints_of_another_shape(cluster, storage, operator):
    """The output already holds checkpoints of a 1-node x 4-GPU job (a reused outputUri, or a
    standalone SFTJob whose nodes were changed): a 2-node job would find no step complete on
    both nodes and train from step 0 without a word. It fails before starting, naming both."""
    import tempfile
    from pathlib import Path

    from medsft_pipelines.storage.checkpoints import CheckpointStore, Shape

    dataset = f"s3://{storage.bucket}/datasets/reshaped"
    storage.write_dataset(dataset)
    output = f"s3://{storage.bucket}/{cluster.namespace}/grown/g1/sft"
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "model.bin").write_bytes(b"weights")
        node0 = CheckpointStore(storage.store(f"{output}/checkpoints/node-000"))
        node0.upload(folder, 300, metadata=Shape(1, 4).record())
    spec = sft_spec(storage, dataset={"manifestUri": f"{dataset}/manifest.json"}, nodes=2)
    cluster.create(resource("SFTJob", "grown", spec, annotations={f"{FAKE}outcome": "Running"}))
    status = cluster.wait_phase("SFTJob", "grown", "Failed")
    assert cluster.condition("SFTJob", "grown", "Failed")["reason"] == "TopologyChanged"
    assert "1 node(s) x 4 process(es) (world size 4)" in status["message"], status
    assert "2 node(s) x 4 process(es) (world size 8)" in status["message"], status
    assert cluster.pytorchjobs() == []
