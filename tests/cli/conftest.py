"""Fixtures of the CLI tests: the medsft CRDs in the real apiserver, a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"


@pytest.fixture(scope="session")
def medsft_crds(kube) -> list[str]:
    """The checked-in crds/, installed as a user would, once they are served."""
    out = kube.kubectl("apply", "--server-side", "-f", str(CRDS_DIR), "-o", "name")
    names = out.stdout.split()
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    return names


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()
