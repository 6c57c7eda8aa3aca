"""Helpers of the end-to-end tests on the real node: the run's inputs in the node's MinIO,
the quickstart as a cluster MedSFTRun, the operator as a real process, and what a person
would look at (pods, children, artifacts).

The inputs are the quickstart's (the PubMedQA and VQA-RAD samples in examples/data, the tiny model)
uploaded to the node's MinIO, because pods see storage, not the test machine's files.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from controller.operator_harness import (
    STORAGE_SECRET,
    Cluster,
    OperatorProcess,
    Storage,
    grant_operator,
    service_account_kubeconfig,
)
from kubernetes import client
from minio import Minio

from harness.minio_server import MinioServer
from harness.node import Node
from harness.testbin import REPO_ROOT

QUICKSTART = REPO_ROOT / "examples" / "quickstart.yaml"
MODEL = "models/tiny-qwen2_5_vl"
EPOCHS = 4
# The demo's fine-tuned tiny model reaches ~50 % on its 16 PubMedQA items (untrained: 0 %);
# a third is the prior of three answers, so above it the model has learned something.
PROMOTION_MIN_PUBMEDQA = 0.34


def upload_folder(s3: Minio, bucket: str, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.fput_object(bucket, f"{prefix}/{path.relative_to(folder)}", str(path))


def stage_inputs(minio: MinioServer, bucket: str, model_dir: Path) -> None:
    """The quickstart's data and model, where the run's pods read them."""
    s3 = minio.client()
    data = REPO_ROOT / "examples" / "data"
    upload_folder(s3, bucket, data / "pubmedqa", "data/pubmedqa")
    upload_folder(s3, bucket, data / "vqa-rad", "data/vqa-rad")
    upload_folder(s3, bucket, model_dir, MODEL)


def quickstart_on_cluster(
    name: str, bucket: str, endpoint: str, *, sft: dict[str, Any] | None = None
) -> dict[str, Any]:
    """examples/quickstart.yaml with its inputs in storage, curation on 2 workers and SFT on
    2 nodes (Master + 1 Worker, one process each); ``sft`` overrides the SFT spec."""
    run = yaml.safe_load(QUICKSTART.read_text())
    spec = run["spec"]
    s3 = f"s3://{bucket}"
    run["metadata"]["name"] = name
    spec["storage"] = {
        "endpoint": endpoint,
        "bucket": bucket,
        "secure": False,
        "credentialsSecret": {"name": STORAGE_SECRET},
    }
    curation = spec["curation"]["spec"]
    curation["workers"] = 2
    curation["sources"][0]["uri"] = f"{s3}/data/pubmedqa/ori_pqal.json"
    curation["processor"]["model"] = f"{s3}/{MODEL}"
    training = spec["sft"]["spec"]
    # The recipe's own path: whole epochs, not the demo's step budget; 4 epochs of the ~100
    # curated samples are about the demo's 200 steps, enough for the tiny model to learn the
    # answer format and beat its untrained self.
    del training["training"]["maxSteps"]
    training["training"]["epochs"] = EPOCHS
    training["model"]["uri"] = f"{s3}/{MODEL}"
    training["nodes"] = 2
    training["gpusPerNode"] = 1  # the node advertises nvidia.com/gpu; the trainer uses CPU
    for key, value in (sft or {}).items():
        training[key] = (
            {**training[key], **value} if isinstance(value, dict) and key in training else value
        )
    spec["eval"]["spec"]["baseline"]["uri"] = f"{s3}/{MODEL}"
    # Promoted only if the fine-tuned model beats the untrained one, as a user would gate it.
    spec["promotion"] = {
        "thresholds": [{"metric": "pubmedqa", "min": PROMOTION_MIN_PUBMEDQA}],
        "mustBeatBaseline": True,
    }
    for bench in spec["eval"]["spec"]["benchmarks"]:
        bench["uri"] = f"{s3}/data/{bench['name']}"
    return copy.deepcopy(run)


@dataclass
class ClusterRun:
    """One MedSFTRun on the node, driven only through the apiserver and kubectl."""

    node: Node
    namespace: str
    bucket: str
    image: str
    logs: Path

    def __post_init__(self) -> None:
        self.cluster = Cluster(self.node.plane, self.namespace)
        minio = self.node.minio
        self.cluster.secret(
            STORAGE_SECRET, {"accessKey": minio.access_key, "secretKey": minio.secret_key}
        )
        grant_operator(self.node.plane, self.namespace)
        self.kubeconfig = service_account_kubeconfig(
            self.node.plane, self.namespace, self.logs / "operator.kubeconfig"
        )
        self.operators: list[OperatorProcess] = []

    def start_operator(self, identity: str = "operator-a") -> OperatorProcess:
        op = OperatorProcess(
            self.kubeconfig,
            self.namespace,
            self.logs / f"{identity}-{len(self.operators)}.log",
            namespaces=[self.namespace],
            identity=identity,
            env={
                "MEDSFT_DEFAULT_IMAGE": self.image,
                # Imported into the node's containerd: nothing is ever pulled.
                "MEDSFT_IMAGE_PULL_POLICY": "IfNotPresent",
                "MEDSFT_POLL_INTERVAL_S": "2",
            },
        ).start()
        self.operators.append(op)
        op.wait_leading()
        return op

    def stop(self) -> None:
        for op in self.operators:
            op.stop()

    def apply(self, manifest: dict[str, Any]) -> str:
        path = self.logs / f"{manifest['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        return self.kubectl("apply", "-f", str(path)).stdout

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.node.kubectl("-n", self.namespace, *args)

    def wait(
        self, predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 1.0
    ) -> Any:
        """Polls ``predicate``; fails early with the pods' state when a run went wrong."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for op in self.operators:
                if op.proc is not None and op.proc.poll() not in (None, -9, -15, 0):
                    raise AssertionError(f"operator exited:\n{op.tail()}")
            value = predicate()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(
            f"timed out after {timeout:.0f}s waiting for {what}\n{self.describe()}"
        )

    def finish(self, name: str) -> dict[str, Any]:
        """Waits until the MedSFTRun ``name`` succeeded or failed; its status."""
        return self.wait(
            lambda: (
                (s := self.cluster.status("MedSFTRun", name)).get("phase")
                in ("Succeeded", "Failed")
                and s
            ),
            timeout=1500,
            what=f"the run {name} to finish",
            every=2,
        )

    def pods(self) -> list[client.V1Pod]:
        return self.cluster.core.list_namespaced_pod(self.namespace).items

    def pod_log(self, name: str, container: str | None = None, previous: bool = False) -> str:
        try:
            return self.cluster.core.read_namespaced_pod_log(
                name, self.namespace, container=container, previous=previous
            )
        except client.ApiException as exc:
            return f"<no log: {exc.status}>"

    def describe(self) -> str:
        """Where everything stands: resources, pods and their last log lines."""
        out = [self.kubectl("get", "medsft,jobs,pytorchjobs,pods", "-o", "wide").stdout]
        for pod in self.pods():
            phase = pod.status.phase
            if phase in ("Failed", "Running") or any(
                (s.restart_count or 0) > 0 for s in pod.status.container_statuses or []
            ):
                log = self.pod_log(pod.metadata.name)
                out.append(f"--- {pod.metadata.name} ({phase})\n" + log[-3000:])
        out.append(self.node.why_waiting(self.namespace))
        return "\n".join(out)

    @property
    def storage(self) -> Storage:
        """The run's bucket on the node's MinIO, as the data plane reads it."""
        minio = self.node.minio
        return Storage(minio.endpoint, self.bucket, minio.access_key, minio.secret_key)

    def store_json(self, key: str) -> Any:
        return json.loads(self.node.minio.client().get_object(self.bucket, key).read())

    def keys(self, prefix: str) -> list[str]:
        s3 = self.node.minio.client()
        return [o.object_name for o in s3.list_objects(self.bucket, prefix, recursive=True)]
