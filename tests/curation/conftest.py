"""Fixtures of the curation tests: the tiny model's processor, paths of the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public benchmark samples (../shared/data), read in place."""
    if not (SHARED_DATA / "pubmedqa" / "ori_pqal.json").exists():
        pytest.fail(f"the real benchmark samples are missing under {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The generated fixtures committed next to the tests."""
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny random Qwen2.5-VL (built offline once per user cache): its processor measures
    token lengths."""
    from medsft_pipelines.models.tiny import cached_tiny_model

    return cached_tiny_model(seed=0)


@pytest.fixture(scope="session")
def token_counter(tiny_model_dir: Path):
    """A :class:`TokenCounter` on the tiny model's processor."""
    from medsft_pipelines.curation.lengths import TokenCounter
    from medsft_pipelines.models import load_processor

    return TokenCounter(load_processor(tiny_model_dir))
