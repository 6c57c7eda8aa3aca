"""Fixtures of the operator tests: CRDs, a namespace with the operator's ServiceAccount and
RBAC, a storage Secret, and operator processes running as that ServiceAccount."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from controller.operator_harness import (
    STORAGE_SECRET,
    Cluster,
    OperatorProcess,
    Storage,
    grant_operator,
    service_account_kubeconfig,
)


@pytest.fixture
def storage(minio, minio_bucket) -> Storage:
    return Storage(minio.endpoint, minio_bucket, minio.access_key, minio.secret_key)


@pytest.fixture
def cluster(kube, namespace, medsft_crds, fake_training_operator, storage) -> Cluster:
    cluster = Cluster(kube, namespace)
    cluster.secret(
        STORAGE_SECRET, {"accessKey": storage.access_key, "secretKey": storage.secret_key}
    )
    return cluster


OperatorFactory = Callable[..., OperatorProcess]


@pytest.fixture
def start_operator(kube, cluster: Cluster, tmp_path: Path) -> Iterator[OperatorFactory]:
    """Starts operators serving the test namespace as the operator's ServiceAccount (RBAC
    from ``rbac.py``); every one is stopped at the end, and its log shown on failure."""
    grant_operator(kube, cluster.namespace)
    kubeconfig = service_account_kubeconfig(
        kube, cluster.namespace, tmp_path / "operator.kubeconfig"
    )
    started: list[OperatorProcess] = []

    def start(
        identity: str = "operator-a", *, front_door: str = "python -m medsft_operator", **env: str
    ) -> OperatorProcess:
        op = OperatorProcess(
            kubeconfig,
            cluster.namespace,
            tmp_path / f"{identity}-{len(started)}.log",
            namespaces=[cluster.namespace],
            identity=identity,
            env=env,
            front_door=front_door,
        ).start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def operator(start_operator: OperatorFactory) -> OperatorProcess:
    op = start_operator()
    op.wait_leading()
    return op


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the operator logs (the place to look first)."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        logs = (
            sorted(Path(item.funcargs["tmp_path"]).glob("*.log"))
            if "tmp_path" in item.funcargs
            else []
        )
        for log in logs:
            report.sections.append(
                (f"operator log {log.name}", log.read_text(errors="replace")[-6000:])
            )
