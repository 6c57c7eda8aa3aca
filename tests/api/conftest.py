"""Fixtures of the API tests: the medsft CRDs installed into the real apiserver."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"


@pytest.fixture(scope="session")
def medsft_crds(kube) -> list[str]:
    """Installs the checked-in crds/ (as a user would) and waits until they are served."""
    out = kube.kubectl("apply", "--server-side", "-f", str(CRDS_DIR), "-o", "name")
    names = out.stdout.split()
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return names
