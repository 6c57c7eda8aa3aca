"""How an eval engine spreads one model over the GPUs of its pod (pure; no torch import).

An EvalJob with ``gpus: N`` gets N GPUs in one pod, and the engine must use them:

* **vLLM: tensor parallelism over all of them** (``tensor_parallel_size``). One engine, one
  process tree, one set of generations in one order: the forced-exit pass, the per-request
  seeds and the report stay exactly as with one GPU, and a model larger than one GPU can be
  evaluated at all. Data-parallel replicas would give more tokens/s for a model that fits one
  GPU, but need a process per replica, a split of the items and a merge; N single-GPU
  EvalJobs on disjoint benchmarks already are that. See docs/adr/0006-eval-gpu-layout.md.
* The tensor-parallel size must divide the model's attention heads (and its key/value heads
  must divide it or be divisible by it, and the vision tower's heads too); the largest such
  size ≤ N is used and the rest is reported as idle, so ``gpus`` should be a divisor of the
  head counts (1, 2, 4 for Qwen2.5-VL-7B: 28 heads, 4 KV heads, 16 vision heads).
* **transformers: ``device_map="auto"``** on more than one GPU: accelerate places consecutive
  layers on consecutive GPUs. That is memory, not speed (one GPU computes at a time); the
  vLLM backend is the fast path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelLayout:
    """The GPUs an engine uses and how; recorded in the eval report."""

    backend: str
    """``transformers`` or ``vllm``."""
    gpus: int
    """GPUs visible to the eval process (0: CPU)."""
    tensor_parallel: int
    """vLLM ``tensor_parallel_size`` (1 for transformers)."""
    device_map: str | None
    """transformers placement: ``"auto"`` (layers over all GPUs), ``"cuda"`` or ``"cpu"``."""
    idle_gpus: int
    """Visible GPUs the layout leaves unused (a head count the GPU count does not divide)."""

    def describe(self) -> str:
        """One line for the report."""
        if self.backend == "vllm":
            text = f"vllm, tensor parallel over {self.tensor_parallel} of {self.gpus} GPU(s)"
        elif self.gpus == 0:
            text = "transformers on CPU"
        elif self.device_map == "auto":
            text = f"transformers, layers spread over {self.gpus} GPUs (device_map=auto)"
        else:
            text = "transformers on 1 GPU"
        return text + (f", {self.idle_gpus} idle" if self.idle_gpus else "")

    def as_dict(self) -> dict[str, Any]:
        """The layout as the report's JSON records it."""
        return {**asdict(self), "description": self.describe()}


@dataclass(frozen=True)
class HeadCounts:
    """The head counts that constrain tensor parallelism."""

    attention: int | None = None
    key_value: int | None = None
    vision: int | None = None


def head_counts(config: Mapping[str, Any]) -> HeadCounts:
    """Head counts from a Hugging Face ``config.json`` (top level, ``text_config``, vision)."""
    text = config.get("text_config") or config
    vision = config.get("vision_config") or {}
    attention = text.get("num_attention_heads", config.get("num_attention_heads"))
    key_value = text.get("num_key_value_heads", config.get("num_key_value_heads"))
    return HeadCounts(attention, key_value or attention, vision.get("num_heads"))


def _tensor_parallel_ok(size: int, heads: HeadCounts) -> bool:
    if heads.attention and heads.attention % size:
        return False
    if heads.key_value and heads.key_value % size and size % heads.key_value:
        return False
    return not (heads.vision and heads.vision % size)


def plan_layout(backend: str, gpus: int, heads: HeadCounts | None = None) -> ParallelLayout:
    """The layout for ``backend`` on ``gpus`` visible GPUs of a model with ``heads``."""
    if gpus < 0:
        raise ValueError("gpus must be >= 0")
    heads = heads or HeadCounts()
    if backend == "vllm":
        if gpus == 0:
            raise ValueError("backend 'vllm' needs at least one GPU")
        size = max(s for s in range(1, gpus + 1) if _tensor_parallel_ok(s, heads))
        return ParallelLayout("vllm", gpus, size, None, gpus - size)
    if backend == "transformers":
        device_map = "cpu" if gpus == 0 else "cuda" if gpus == 1 else "auto"
        return ParallelLayout("transformers", gpus, 1, device_map, 0)
    raise ValueError(f"unknown backend {backend!r} (transformers, vllm)")
