"""Throughput, MFU estimate and the loss-curve plot."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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


def training_flops(
    num_params: int, tokens: float, sum_sq_lengths: float, num_layers: int, hidden: int
) -> float:
    """Model FLOPs of one training step (forward + backward), the usual estimate.

    ``6 * params * tokens`` for the matrix multiplies plus causal attention scores,
    ``6 * layers * hidden * sum(L_i^2)`` over samples (``12 L H`` per token pair, halved by the
    causal mask), counted per *sample* so that packing does not inflate it. Recomputation by gradient
    checkpointing is not counted (MFU, not hardware utilisation).
    """
    attention = 6.0 * num_layers * hidden * sum_sq_lengths
    return 6.0 * num_params * tokens + attention


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
