"""Fixtures of the eval tests: the tiny offline Qwen2.5-VL (model and a different baseline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny random Qwen2.5-VL (seed 0), built once per user cache."""
    from medsft_pipelines.models import cached_tiny_model

    return cached_tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_baseline() -> Path:
    """Another tiny random Qwen2.5-VL (seed 1), playing the baseline."""
    from medsft_pipelines.models import cached_tiny_model

    return cached_tiny_model(seed=1)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model: Path):
    """The transformers engine on the tiny model, loaded once (batch size 4)."""
    from medsft_pipelines.eval.backends import open_engine

    return open_engine(
        "transformers", str(tiny_model), batch_size=4, max_pixels=65536, max_images=10
    )
