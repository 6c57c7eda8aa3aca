"""The chart on the real node: ``helm install`` of charts/medsft with the operator image built
here (trainer-image/Dockerfile.operator, imported into the node's containerd, never pulled).
The operator runs as the Deployment's pod — its own ServiceAccount token, the chart's RBAC,
restricted Pod Security, read-only root filesystem — and carries a MedSFTRun that names no
storage and no image (the chart's defaults) through curation, 2-node SFT and eval to Promoted.

The one thing the node lacks is kube-proxy, so the ``kubernetes`` Service's ClusterIP leads
nowhere; the test points the in-cluster client at the apiserver's address on the node's
bridge with the chart's ``operator.extraEnv`` (KUBERNETES_SERVICE_HOST/PORT, which the
Kubernetes clients read in-cluster). Nothing else about the Deployment is changed.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from chart.charting import CHART, helm, values_file
from cluster import quickstart_on_cluster, stage_inputs
from controller.operator_harness import Cluster, wait_for
from kubernetes import client

from harness.fixtures import unique
from harness.images import operator_image
from harness.node import Node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
RELEASE = "medsft"
RUN = "chart-run"


def _split(ref: str) -> dict[str, str]:
    repository, _, tag = ref.rpartition(":")
    return {"repository": repository, "tag": tag, "pullPolicy": "Never"}


def test_helm_installed_operator_pod_carries_a_run_to_promoted(
    node: Node, node_namespace: str, trainer_image: str, tiny_model: Path, helm_bin, tmp_path
) -> None:
    ns = node_namespace
    operator_ref = node.import_image(operator_image())
    bucket = unique("chart")
    node.minio.start()
    node.minio.client().make_bucket(bucket)
    stage_inputs(node.minio, bucket, tiny_model)
    core = client.CoreV1Api(node.api_client())
    credentials = {"accessKey": node.minio.access_key, "secretKey": node.minio.secret_key}
    core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="object-store"),
        data={k: base64.b64encode(v.encode()).decode() for k, v in credentials.items()},
    ))  # fmt: skip

    values = {
        "image": _split(operator_ref),
        "trainer": {"image": _split(trainer_image)},
        "storage": {
            "endpoint": node.minio.endpoint,
            "bucket": bucket,
            "secure": False,
            "credentialsSecret": {"name": "object-store"},
        },
        "operator": {
            "watchNamespaces": [ns],
            "pollIntervalSeconds": 2,
            "logFormat": "plain",
            # No kube-proxy on the test node: the apiserver where pods can reach it.
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": node.plane.host},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(node.plane.port)},
            ],
        },
    }
    home = tmp_path / "helm"
    args = ["--kubeconfig", str(node.plane.kubeconfig), "--namespace", ns]
    helm(helm_bin, "install", RELEASE, str(CHART), "-f", str(values_file(values, tmp_path)),
         "--wait", "--timeout", "10m", *args, home=home)  # fmt: skip
    try:
        [pod] = core.list_namespaced_pod(
            ns, label_selector="app.kubernetes.io/component=operator"
        ).items
        assert pod.status.phase == "Running" and pod.spec.node_name == "medsft-node"
        assert pod.spec.service_account_name == RELEASE
        [container] = pod.spec.containers
        assert container.image == operator_ref
        assert container.security_context.read_only_root_filesystem is True

        run = quickstart_on_cluster(RUN, bucket, node.minio.endpoint)
        run["metadata"]["namespace"] = ns
        del run["spec"]["storage"]  # the chart's default storage
        cluster = Cluster(node.plane, ns)
        cluster.custom.create_namespaced_custom_object(
            "medsft.io", "v1alpha1", ns, "medsftruns", run
        )

        def finished() -> dict | None:
            status = cluster.status("MedSFTRun", RUN)
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_for(finished, timeout=1500, what="the run driven by the chart's operator")
        log = core.read_namespaced_pod_log(pod.metadata.name, ns)
        assert status["phase"] == "Succeeded", log[-4000:]
        promoted = cluster.condition("MedSFTRun", RUN, "Promoted")
        assert promoted is not None and promoted["status"] == "True"

        # The operator pod did it (no restarts) and the stage pods ran the chart's trainer
        # image under the chart's job ServiceAccount.
        pod = core.read_namespaced_pod(pod.metadata.name, ns)
        assert pod.status.container_statuses[0].restart_count == 0, log[-4000:]
        stage_pods = [
            p for p in core.list_namespaced_pod(ns).items
            if (p.metadata.labels or {}).get("app.kubernetes.io/component") != "operator"
        ]  # fmt: skip
        assert stage_pods
        assert {c.image for p in stage_pods for c in p.spec.containers} == {trainer_image}
        assert {p.spec.service_account_name for p in stage_pods} == {f"{RELEASE}-job"}
        summary = node.minio.client().get_object(bucket, f"{ns}/{RUN}/g1/sft/train_summary.json")
        assert summary.read()
    finally:
        helm(helm_bin, "uninstall", RELEASE, *args, home=home, check=False)
