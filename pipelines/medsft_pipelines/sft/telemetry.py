"""Throughput, MFU estimate and the loss-curve plot."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Dense bf16 peak of one GPU (TFLOP/s, no sparsity), by a substring of its device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
}
PEAK_ENV = "MEDSFT_PEAK_TFLOPS"


def peak_flops(device: torch.device) -> float | None:
    """Peak FLOP/s of one accelerator for MFU; ``$MEDSFT_PEAK_TFLOPS`` overrides; None on CPU."""
    if os.environ.get(PEAK_ENV):
        return float(os.environ[PEAK_ENV]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


@dataclass(frozen=True)
class FlopsModel:
    """Model FLOPs of a training step (forward + backward), the usual MFU estimate.

    ``6 x params x tokens`` for the matrix multiplies, counting the language model's matmul
    weights for text tokens (the input embedding is a lookup, not a matmul; a tied LM head
    still counts) and the vision tower's for image patches, plus causal attention scores,
    ``6 x layers x hidden x sum(L_i^2)`` over *samples* (``12 L H`` per token pair, halved by
    the causal mask), so packing does not inflate it. Recomputation by activation
    checkpointing and the vision tower's windowed attention are not counted.
    """

    text_params: int
    vision_params: int
    layers: int
    hidden: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> FlopsModel:
        def numel(params: Iterable[torch.nn.Parameter]) -> int:
            # ZeRO-3 replaces partitioned parameters by empty tensors; ds_numel is the real size.
            return sum(getattr(p, "ds_numel", p.numel()) for p in params)

        total = numel(model.parameters())
        vision = numel(model.model.visual.parameters())
        embedding = model.get_input_embeddings().weight
        tied = embedding is model.get_output_embeddings().weight
        text = total - vision - (0 if tied else numel([embedding]))
        config = model.config.get_text_config()
        return cls(text, vision, config.num_hidden_layers, config.hidden_size)

    def step(self, tokens: float, sum_sq_lengths: float, image_patches: float) -> float:
        matmul = 6.0 * (self.text_params * tokens + self.vision_params * image_patches)
        return matmul + 6.0 * self.layers * self.hidden * sum_sq_lengths


def plot_loss_curve(records: Sequence[Mapping[str, Any]], path: Path, title: str = "SFT") -> Path:
    """Loss (and learning rate) per step from metrics records, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step: dict[int, Mapping[str, Any]] = {}
    for record in records:
        if "loss" in record and "step" in record:
            by_step[int(record["step"])] = record  # a resumed run's later record wins
    steps = sorted(by_step)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, [by_step[s]["loss"] for s in steps], label="train loss", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if steps and all("lr" in by_step[s] for s in steps):
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [by_step[s]["lr"] for s in steps], color="tab:orange", alpha=0.6)
        lr_ax.set_ylabel("learning rate", color="tab:orange")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
