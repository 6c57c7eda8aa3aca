"""A model-level probe of packing: does any sample of a packed micro-batch see another?

Packed samples must stay independent: changing one sample may change no other sample's
logits. The probe runs a micro-batch, swaps its first sample for another, runs it again, and
reports how much the logits of every other sample moved. It runs on whatever attention the
model was loaded with (SDPA, or the varlen function with its reference kernel, on CPU in the
tests; torch's varlen kernel on a GPU through ``benchmarks/sft_packing_isolation.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from medsft_pipelines.sft.data import Example, PixelLoader, RopeIndexFn, collate


def _sample_logits(
    model: Any,
    rows: list[list[Example]],
    pad_id: int,
    rope: RopeIndexFn,
    flatten: bool,
    pixels: PixelLoader | None,
) -> list[torch.Tensor]:
    """Each sample's logits, in row order (samples are laid out as :func:`collate` does)."""
    collated = collate(rows, pad_id, rope, True, pixels=pixels, flatten=flatten)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collated.inputs.items()}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits.float().cpu()
    layout = [[ex for row in rows for ex in row]] if flatten else rows
    out = []
    for b, row in enumerate(layout):
        offset = 0
        for ex in row:
            out.append(logits[b, offset : offset + ex.length])
            offset += ex.length
    return out


def isolation_probe(
    model: Any,
    examples: Sequence[Example],
    replacement: Example,
    micro_batch_size: int,
    pad_id: int,
    rope: RopeIndexFn,
    *,
    flatten: bool = False,
    pixels: PixelLoader | None = None,
) -> tuple[float, float]:
    """(largest logit change of any sample but the first, change of the first) when the
    first sample is replaced by ``replacement``. Samples go to ``micro_batch_size`` rows in
    turn, so the first row holds the replaced one followed by others."""

    def rows(first: Example) -> list[list[Example]]:
        items = [first, *examples[1:]]
        return [list(items[i::micro_batch_size]) for i in range(micro_batch_size)]

    before = _sample_logits(model, rows(examples[0]), pad_id, rope, flatten, pixels)
    after = _sample_logits(model, rows(replacement), pad_id, rope, flatten, pixels)
    order = [ex for row in rows(examples[0]) for ex in row]
    changed = next(i for i, ex in enumerate(order) if ex is examples[0])
    others = max(
        float((a - b).abs().max())
        for i, (a, b) in enumerate(zip(after, before, strict=True))
        if i != changed
    )
    n = min(before[changed].shape[0], after[changed].shape[0])
    own = float((after[changed][:n] - before[changed][:n]).abs().max())
    return others, own
