"""Model helpers shared by curation, SFT and eval: fetching a model folder (:mod:`.fetch`),
processor loading and the tiny test model."""

from __future__ import annotations

from medsft_pipelines.models.processor import load_processor, save_processor
from medsft_pipelines.models.tiny import build_tiny_model, cached_tiny_model

__all__ = ["build_tiny_model", "cached_tiny_model", "load_processor", "save_processor"]
