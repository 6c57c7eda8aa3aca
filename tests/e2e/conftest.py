"""Fixtures of the end-to-end tests on the real node (tests/harness/node.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster import ClusterRun, stage_inputs
from controller.operator_harness import install_medsft_crds

from harness.fixtures import unique
from harness.mlflow_server import MlflowServer
from harness.node import Node


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart's tiny random Qwen2.5-VL, built offline once per session."""
    folder = tmp_path_factory.mktemp("model") / "tiny-qwen2_5_vl"
    subprocess.run(
        [sys.executable, "-m", "medsft_pipelines.models", "build-tiny", str(folder)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return folder


@pytest.fixture(scope="session")
def trainer_image(node: Node) -> str:
    """The trainer image built here from trainer-image/Dockerfile, imported into the node."""
    from harness.images import trainer_image as build

    return node.import_image(build())


@pytest.fixture(scope="session")
def medsft_crds(node: Node) -> None:
    """medsft's CRDs on the node's apiserver, as `kubectl apply -f crds/` installs them."""
    install_medsft_crds(node.plane)


@pytest.fixture(scope="session")
def node_mlflow(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` where the node's pods reach it (beside the node's MinIO,
    run artifacts in it)."""
    server = MlflowServer(
        node.minio, "mlflow", tmp_path_factory.mktemp("mlflow"), host=node.minio.host
    ).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def cluster_run(
    node: Node,
    node_namespace: str,
    medsft_crds: None,
    trainer_image: str,
    tiny_model: Path,
    tmp_path: Path,
) -> Iterator[ClusterRun]:
    bucket = unique("e2e")
    node.minio.start()  # a fault test may have left it stopped
    node.minio.client().make_bucket(bucket)
    stage_inputs(node.minio, bucket, tiny_model)
    run = ClusterRun(node, node_namespace, bucket, trainer_image, tmp_path)
    yield run
    run.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """On failure, attach the operators' logs and where the run stood."""
    outcome = yield
    report = outcome.get_result()
    run = item.funcargs.get("cluster_run")
    if report.when == "call" and report.failed and isinstance(run, ClusterRun):
        for op in run.operators:
            report.sections.append((f"operator log {op.log.name}", op.tail(80)))
        try:
            report.sections.append(("cluster", run.describe()))
        except Exception as exc:  # the failure may be that the cluster is gone
            report.sections.append(("cluster", f"<unavailable: {exc}>"))
