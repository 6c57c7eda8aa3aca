"""Fixtures for the SFT tests: the tiny offline Qwen2.5-VL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "medsft" / "torch_extensions")
)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL built offline once per test session."""
    from medsft_pipelines.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same, with the Qwen3-VL architecture."""
    from medsft_pipelines.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3", arch="qwen3_vl")


@pytest.fixture(params=["qwen2_5_vl", "qwen3_vl"])
def any_tiny_model(request: pytest.FixtureRequest) -> Path:
    """Each supported architecture in turn."""
    fixture = "tiny_model_dir" if request.param == "qwen2_5_vl" else "tiny_qwen3_dir"
    return request.getfixturevalue(fixture)
