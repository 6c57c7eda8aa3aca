"""An image the node cannot pull, and a GPU request the node cannot satisfy, each stall their
stage with the cluster's own reason within 2 minutes.

On the real node: the operator (a real process, with its RBAC) creates an EvalJob's Job
whose image no registry serves; the real kubelet tries to pull it (the node sends pulls to a
closed loopback port, so it fails at once, as an unreachable or unknown image would) and
reports ``ErrImagePull`` / ``ImagePullBackOff``. With the operator's default grace period
(60 s: a shorter blip is not news) the EvalJob turns ``Stalled`` with reason
``ImagePullFailed``, the image, the pod and the kubelet's message, and posts a Warning Event
— well within 2 minutes of the stage's creation, not after any timeout. Beside it, an
EvalJob asking more GPUs than the node advertises (it advertises 8, a patched extended
resource, and has none): the real kube-scheduler leaves its pod Pending,
``Unschedulable`` with ``Insufficient nvidia.com/gpu``, and the stage turns ``Stalled`` with
that verdict in the same window. No training: nothing is ever pulled or run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from controller.operator_harness import (
    STORAGE_SECRET,
    Cluster,
    OperatorProcess,
    Storage,
    eval_spec,
    grant_operator,
    install_medsft_crds,
    resource,
    service_account_kubeconfig,
    wait_for,
)

from harness.fixtures import unique
from harness.node import GPUS, Node

pytestmark = pytest.mark.slow

MISSING_IMAGE = "registry.invalid/medsft/no-such-trainer:0.0.0"
WITHIN_S = 120  # the bound: a stuck stage says why within 2 minutes


def test_an_unpullable_image_and_an_unsatisfiable_gpu_request_stall_within_two_minutes(
    node: Node, node_namespace: str, tmp_path: Path
) -> None:
    install_medsft_crds(node.plane)
    ns = node_namespace
    cluster = Cluster(node.plane, ns)
    node.minio.start()  # idempotent; the stage's storage must answer its progress reads
    bucket = unique("failfast")
    node.minio.client().make_bucket(bucket)
    minio = node.minio
    storage = Storage(minio.endpoint, bucket, minio.access_key, minio.secret_key)
    cluster.secret(STORAGE_SECRET, {"accessKey": minio.access_key, "secretKey": minio.secret_key})
    grant_operator(node.plane, ns)
    operator = OperatorProcess(
        service_account_kubeconfig(node.plane, ns, tmp_path / "operator.kubeconfig"),
        ns,
        tmp_path / "operator.log",
        namespaces=[ns],
        identity="operator-a",
        # The default grace period (60 s) as shipped; polls as often as the e2e runs poll.
        env={
            "MEDSFT_DEFAULT_IMAGE": MISSING_IMAGE,
            "MEDSFT_IMAGE_PULL_POLICY": "IfNotPresent",
            "MEDSFT_POLL_INTERVAL_S": "2",
        },
    ).start()
    try:
        operator.wait_leading()
        model = {"uri": f"s3://{bucket}/models/none"}  # never read: the pod never starts
        created = time.monotonic()
        cluster.create(resource("EvalJob", "ev", eval_spec(storage, model=model)))
        more_than_the_node = GPUS + 1  # the node advertises GPUS (a patched extended resource)
        cluster.create(
            resource("EvalJob", "gpus", eval_spec(storage, model=model, gpus=more_than_the_node))
        )

        def kubelet_reason() -> str | None:
            for pod in cluster.core.list_namespaced_pod(ns).items:
                for status in pod.status.container_statuses or []:
                    waiting = status.state.waiting
                    if waiting is not None and waiting.reason in (
                        "ErrImagePull",
                        "ImagePullBackOff",
                    ):
                        return str(waiting.reason)
            return None

        # The real kubelet's own verdict first (what the operator reads).
        wait_for(kubelet_reason, timeout=WITHIN_S, what="the kubelet's image pull failure")
        stalled = wait_for(
            lambda: (
                (c := cluster.condition("EvalJob", "ev", "Stalled")) and c["status"] == "True" and c
            ),
            timeout=WITHIN_S - (time.monotonic() - created),
            what="EvalJob ev Stalled within 2 minutes",
        )
        took = time.monotonic() - created
        assert stalled["reason"] == "ImagePullFailed", stalled
        assert MISSING_IMAGE in stalled["message"] and "ev-eval-" in stalled["message"]
        assert "ErrImagePull" in stalled["message"] or "ImagePullBackOff" in stalled["message"]
        # Not before the grace period (a blip is not news), and not terminal (the kubelet
        # keeps trying; pushing the image or fixing the registry starts the pod).
        assert 55 <= took <= WITHIN_S, took
        status = cluster.status("EvalJob", "ev")
        # The Job counts its pod active, so the stage stays where its Job is (Running), not
        # Failed, with the cause as its message.
        assert status["phase"] == "Running" and MISSING_IMAGE in status["message"], status
        cluster.wait_events("ev", "ImagePullFailed", mentioning=MISSING_IMAGE)

        # The GPU request, created at the same moment: the real scheduler's verdict.
        unschedulable = wait_for(
            lambda: (
                (c := cluster.condition("EvalJob", "gpus", "Stalled"))
                and c["status"] == "True"
                and c
            ),
            timeout=max(5.0, WITHIN_S - (time.monotonic() - created)),
            what="EvalJob gpus Stalled within 2 minutes",
        )
        assert time.monotonic() - created <= WITHIN_S
        assert unschedulable["reason"] == "Unschedulable", unschedulable
        assert "Insufficient nvidia.com/gpu" in unschedulable["message"], unschedulable
        cluster.wait_events("gpus", "Unschedulable", mentioning="nvidia.com/gpu")
    finally:
        operator.stop()
