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
