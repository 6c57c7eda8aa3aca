"""Generation backends behind one interface: transformers (always) and vLLM (GPU, when installed).

:func:`generate` drives any :class:`Engine`: batching, the seed of each batch, and the
forced think exit. Engines only turn prompts (plus optional continuation tokens) into new
token ids. Importing this package does not import torch; :func:`open_engine` does.
"""

from __future__ import annotations

from .base import Engine, Generation, RawOutput, Request, Sampling, generate

__all__ = ["Engine", "Generation", "RawOutput", "Request", "Sampling", "generate", "open_engine"]


def open_engine(
    backend: str, model_dir: str, *, batch_size: int, max_pixels: int, max_images: int
) -> Engine:
    """The engine named by ``GenerationSpec.backend`` for the model in ``model_dir``."""
    if backend == "transformers":
        from .hf import TransformersEngine

        return TransformersEngine(model_dir, batch_size=batch_size, max_pixels=max_pixels)
    if backend == "vllm":
        from .vllm import VLLMEngine

        return VLLMEngine(
            model_dir, batch_size=batch_size, max_pixels=max_pixels, max_images=max_images
        )
    raise ValueError(f"unknown backend {backend!r} (transformers, vllm)")
