"""Fixtures of the CLI tests: a CLI runner (the medsft CRDs fixture is in tests/harness)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()
