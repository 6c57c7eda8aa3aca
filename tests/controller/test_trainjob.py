"""The TrainJob SFT backend against the real Kubeflow Trainer v2 and JobSet controllers
(built from their Go modules, their webhooks served to the apiserver on 127.0.0.1), with
the ClusterTrainingRuntime the chart installs.

What stands in: there is no node, so the pods of the Jobs the JobSet controller creates
never run; the test finishes or fails those Jobs through their status subresource, as the
Job controller would when the pods end, and writes what the trainer would have written to
MinIO. Everything between the SFTJob and those Jobs — TrainJob, JobSet, Jobs, their status
back up the chain — is the real controllers'.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml
from controller.operator_harness import REPO, Cluster, resource, sft_spec, wait_for
from kubernetes import client

from harness.testbin import pinned_versions

TRAINER = ("trainer.kubeflow.org", "v1alpha1")
JOBSET = ("jobset.x-k8s.io", "v1alpha2")


def chart_runtime(helm_bin: Path, tmp_path: Path) -> dict:
    """The ClusterTrainingRuntime as ``helm template`` renders it from charts/medsft."""
    env = {f"HELM_{k}_HOME": str(tmp_path / k.lower()) for k in ("CONFIG", "CACHE", "DATA")}
    out = subprocess.run(
        [
            str(helm_bin),
            "template",
            "medsft",
            str(REPO / "charts" / "medsft"),
            "--set",
            "sft.trainingRuntime.install=true",
            "--set",
            "storage.endpoint=minio.example:9000,storage.credentialsSecret.name=storage-creds",
            "--show-only",
            "templates/clustertrainingruntime.yaml",
            "--kube-version",
            pinned_versions()["K8S_VERSION"],
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=120,
    ).stdout
    return yaml.safe_load(out)


@pytest.fixture
def runtime(kube, trainer, helm_bin, tmp_path) -> dict:
    doc = chart_runtime(helm_bin, tmp_path)
    kube.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump(doc)
    )
    return doc


def trainjob(cluster: Cluster, name: str) -> dict:
    return cluster.custom.get_namespaced_custom_object(
        *TRAINER, cluster.namespace, "trainjobs", name
    )


def jobset_jobs(cluster: Cluster, jobset: str) -> list[client.V1Job]:
    return cluster.batch.list_namespaced_job(
        cluster.namespace, label_selector=f"jobset.sigs.k8s.io/jobset-name={jobset}"
    ).items


def test_trainjob_is_reconciled_into_a_jobset_and_jobs_and_its_end_folded(
    cluster, storage, runtime, start_operator
):
    operator = start_operator(MEDSFT_DEFAULT_SFT_BACKEND="TrainJob")
    operator.wait_leading()
    dataset = f"s3://{storage.bucket}/datasets/d1"
    storage.write_dataset(dataset)
    spec = sft_spec(storage, dataset={"manifestUri": f"{dataset}/manifest.json"}, shmSize="2Gi")
    cluster.create(resource("SFTJob", "tj", spec))

    job = wait_for(lambda: trainjob(cluster, "tj-a0"), what="the TrainJob")
    assert job["metadata"]["ownerReferences"][0]["kind"] == "SFTJob"
    assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
    assert job["spec"]["trainer"]["numNodes"] == 2
    status = wait_for(
        lambda: (s := cluster.status("SFTJob", "tj")).get("trainJobName") and s,
        what="trainJobName in status",
    )
    assert status["trainJobName"] == "tj-a0" and "pytorchJobName" not in status

    # Kubeflow Trainer made a JobSet of it, and JobSet the Jobs, with what we asked for.
    jobset = wait_for(
        lambda: cluster.custom.get_namespaced_custom_object(
            *JOBSET, cluster.namespace, "jobsets", "tj-a0"
        ),
        what="the JobSet",
    )
    assert jobset["metadata"]["ownerReferences"][0]["kind"] == "TrainJob"
    (node,) = wait_for(lambda: jobset_jobs(cluster, "tj-a0"), what="the JobSet's Jobs")
    assert node.spec.parallelism == 2 and node.spec.completions == 2
    pod = node.spec.template.spec
    (container,) = [c for c in pod.containers if c.name == "node"]
    assert container.image == "registry.example/medsft/trainer:test"
    assert container.command[:3] == ["torchrun", "--no-python", "medsft-train"]
    assert container.resources.limits["nvidia.com/gpu"] == "4"
    env = {e.name: e for e in container.env}
    assert env["PET_NNODES"].value == "2" and env["PET_NPROC_PER_NODE"].value == "4"
    assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name == "storage-creds"
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["config"].config_map.name == "tj-config"
    assert volumes["dshm"].empty_dir.size_limit == "2Gi"  # the spec's, over the runtime's
    assert {m.mount_path for m in container.volume_mounts} >= {
        "/etc/medsft",
        "/dev/shm",
        "/scratch",
    }
    assert pod.security_context.run_as_non_root is True

    # The pods finish: JobSet completes, Trainer marks the TrainJob Complete, the SFT is done.
    output = f"s3://{storage.bucket}/{cluster.namespace}/tj/g1/sft"
    storage.write_model(output)
    cluster.finish_job(node.metadata.name)
    wait_for(
        lambda: any(
            c["type"] == "Complete" and c["status"] == "True"
            for c in (trainjob(cluster, "tj-a0").get("status") or {}).get("conditions") or []
        ),
        timeout=90,
        what="TrainJob Complete",
    )
    status = cluster.wait_phase("SFTJob", "tj", "Succeeded")
    assert status["modelUri"] == f"{output}/model"


def test_a_failed_trainjob_is_retried_from_the_latest_checkpoint(
    cluster, storage, runtime, operator
):
    dataset = f"s3://{storage.bucket}/datasets/d1"
    storage.write_dataset(dataset)
    spec = sft_spec(
        storage,
        dataset={"manifestUri": f"{dataset}/manifest.json"},
        backend="TrainJob",
        nodes=1,
        backoffLimit=1,
    )
    cluster.create(resource("SFTJob", "tjr", spec))
    wait_for(lambda: trainjob(cluster, "tjr-a0"), what="the first TrainJob")
    (node,) = wait_for(lambda: jobset_jobs(cluster, "tjr-a0"), what="its Jobs")
    output = f"s3://{storage.bucket}/{cluster.namespace}/tjr/g1/sft"
    checkpoint = storage.write_checkpoint(output, 4)
    # What the Job controller writes when a node's pod fails past its backoff limit.
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    failed = [
        {
            "type": t,
            "status": "True",
            "reason": "BackoffLimitExceeded",
            "message": "node failed",
            "lastTransitionTime": now,
            "lastProbeTime": now,
        }
        for t in ("FailureTarget", "Failed")
    ]
    cluster.batch.patch_namespaced_job_status(
        node.metadata.name,
        cluster.namespace,
        {"status": {"startTime": now, "failed": 1, "conditions": failed}},
    )

    retry = wait_for(lambda: trainjob(cluster, "tjr-a1"), timeout=90, what="the retry")
    env = {e["name"]: e.get("value") for e in retry["spec"]["trainer"]["env"]}
    assert env["MEDSFT_ATTEMPT"] == "1"  # the trainer resumes from the newest checkpoint
    # The retry and the checkpoint it resumes from, together. Once (a full run) the status
    # named the retry without the checkpoint: the status write of the reconcile that made
    # the retry lost to another writer, and the redo did not read the store again. The
    # controller now does (tests/controller/test_status_writes.py); the wait still allows
    # the field to arrive a poll later, and fails if it never does.
    status = wait_for(
        lambda: (
            (s := cluster.status("SFTJob", "tjr")).get("trainJobName") == "tjr-a1"
            and s.get("latestCheckpointUri")
            and s
        ),
        what="the retry and its checkpoint in status",
    )
    assert status["restarts"] == 1 and status["latestCheckpointUri"] == checkpoint
    cluster.wait_events("tjr", "Retrying")
