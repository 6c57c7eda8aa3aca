"""pytest fixtures over the real components (registered by tests/conftest.py).

Session-scoped servers are started lazily — a test run that needs no apiserver
never starts one — and always stopped, also when tests fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from kubernetes import client

from .batch_controllers import JobSet, Kueue, Trainer, install_crds
from .batch_controllers import crd_files as upstream_crd_files
from .controlplane import ControlPlane
from .fake_training_operator import FakeTrainingOperator
from .minio_server import MinioServer
from .mlflow_server import MlflowServer
from .node import Node, kubeflow_crd_files
from .testbin import REPO_ROOT, binary, shared_dir


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(tmp_path_factory.mktemp("kube"))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@contextmanager
def _namespace(api: client.ApiClient, labels: dict[str, str] | None = None) -> Iterator[str]:
    core = client.CoreV1Api(api)
    name = unique("t")
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
    )
    yield name
    try:
        core.delete_namespace(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def namespace(kube: ControlPlane) -> Iterator[str]:
    with _namespace(kube.api_client()) as name:
        yield name


@pytest.fixture(scope="session")
def kubeflow_crds(kube: ControlPlane) -> list[str]:
    """Installs the upstream Kubeflow CRDs (PyTorchJob v1 and Trainer v2), unmodified."""
    return kube.apply_crds(kubeflow_crd_files())


@pytest.fixture(scope="session")
def medsft_crds(kube: ControlPlane) -> list[str]:
    """Installs the checked-in crds/ (as a user would) and waits until they are served."""
    out = kube.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"), "-o", "name")
    names = out.stdout.split()
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return names


@pytest.fixture(scope="session")
def fake_training_operator(
    kube: ControlPlane, kubeflow_crds: list[str]
) -> Iterator[FakeTrainingOperator]:
    operator = FakeTrainingOperator(kube.api_client()).start()
    yield operator
    operator.stop()


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    server = MinioServer(tmp_path_factory.mktemp("minio")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mlflow_server(
    minio: MinioServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer]:
    """A real ``mlflow server``: SQLite backend, run artifacts in the test MinIO."""
    server = MlflowServer(minio, "mlflow", tmp_path_factory.mktemp("mlflow")).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def minio_bucket(minio: MinioServer) -> str:
    minio.start()  # a fault test may have left it stopped
    name = unique("t")
    minio.client().make_bucket(name)
    return name


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A real single-node cluster with its own control plane, MinIO on the node's bridge,
    CoreDNS and the real training operator (tests/harness/node.py). Needs root; one per
    machine, so a second test session waits for the first to finish with it."""
    if os.geteuid() != 0:
        pytest.fail("the node tests run a kubelet and containerd, which need root")
    real = Node(tmp_path_factory.mktemp("node")).start()
    try:
        yield real
    finally:
        real.stop()


@pytest.fixture
def node_namespace(node: Node) -> Iterator[str]:
    """A namespace on the node's cluster that enforces the ``restricted`` Pod Security
    profile, as a security-conscious cluster would for training workloads."""
    restricted = {"pod-security.kubernetes.io/enforce": "restricted"}
    with _namespace(node.api_client(), restricted) as name:
        yield name


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    return binary("kubectl")


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return binary("helm")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: real public benchmark samples (read in place, never copied)."""
    return shared_dir() / "data"


# -- batch scheduling (issue 16): the real Kueue, JobSet and Kubeflow Trainer v2 controllers,
# started once per session on the shared control plane when a test asks for them.


@pytest.fixture(scope="session")
def jobset(kube: ControlPlane) -> Iterator[JobSet]:
    manager = JobSet(kube)
    yield manager.start()
    manager.stop()


@pytest.fixture(scope="session")
def trainer(kube: ControlPlane, jobset: JobSet) -> Iterator[Trainer]:
    """Kubeflow Trainer v2 (its own release's CRDs, the same as the vendored v2.3.0 ones)."""
    manager = Trainer(kube)
    yield manager.start()
    manager.stop()


@pytest.fixture(scope="session")
def kueue(kube: ControlPlane, kubeflow_crds: list[str]) -> Iterator[Kueue]:
    """Kueue with batch/job, PyTorchJob and TrainJob integrations (the CRDs of every
    integrated kind are installed first: PyTorchJob, TrainJob, JobSet)."""
    install_crds(kube, upstream_crd_files("jobset"))
    manager = Kueue(kube)
    yield manager.start()
    manager.stop()
