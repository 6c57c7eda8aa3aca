"""Fixtures of the chart tests: an isolated helm home, CRDs in the real apiserver."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="session")
def helm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HELM_{CONFIG,CACHE,DATA}_HOME for every helm call of the session."""
    return tmp_path_factory.mktemp("helm-home")


@pytest.fixture(scope="session")
def service_monitor_crd(kube) -> str:
    """A stand-in ServiceMonitor CRD (see servicemonitor-crd.yaml for what it does not check)."""
    out = kube.kubectl(
        "apply", "--server-side", "-f", str(HERE / "servicemonitor-crd.yaml"), "-o", "name"
    )
    name = out.stdout.strip()
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", name)
    return name
