"""Packed samples stay isolated under flash-attention (GPU): the CPU test's probe, on FA2 bf16.

For micro-batch sizes 1 and 2, the probe (``medsft_pipelines.sft.isolation``) swaps one packed
sample for another and reports the largest change of any *other* sample's logits, for

* ``flattened``: what the trainer does under flash-attention: the micro-batch in one row, so
  transformers runs varlen attention on the boundaries of the text position ids;
* ``rows``: the micro-batch as padded rows with position resets and no attention mask (what
  the trainer did before): transformers recognises packed sequences only for one row, so
  with 2 rows samples are expected to leak into each other here.

It also compares the loss of the packed micro-batch with the samples' losses one by one
(unpacked, padded, attention mask). bf16 rounding bounds "unchanged": a leak moves logits by
far more than the bf16 noise of a re-run, which is printed alongside.

    .venv/bin/python benchmarks/sft_packing_isolation.py [--model DIR] [--samples 8]

Needs a CUDA GPU and ``flash_attn``; without them it says so and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from medsft_pipelines.models import cached_tiny_model, load_processor
from medsft_pipelines.sft.data import ExampleEncoder, collate, shifted_targets
from medsft_pipelines.sft.isolation import isolation_probe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sft.sft_helpers import curated_rows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def loss_sum(model, collated) -> torch.Tensor:
    keep, targets = shifted_targets(collated.labels)
    inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in collated.inputs.items()}
    with torch.no_grad():
        out = model(**inputs, logits_to_keep=keep.cuda(), use_cache=False)
    return F.cross_entropy(out.logits.float(), targets.cuda(), reduction="sum")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the tiny model)")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        print("flash_attn is not installed: nothing to measure")
        return 2
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 2
    from transformers import AutoModelForImageTextToText

    path = args.model or cached_tiny_model()
    model = (
        AutoModelForImageTextToText.from_pretrained(
            path, dtype=torch.bfloat16, attn_implementation="flash_attention_2"
        )
        .cuda()
        .eval()
    )
    processor = load_processor(path)
    encoder = ExampleEncoder(processor, 8192)
    rows = curated_rows(SHARED, n_text=args.samples, n_image=4)
    examples = [encoder.encode(r) for r in rows[: args.samples - 2] + rows[-2:]]
    replacement = encoder.encode(rows[args.samples - 2])
    pad = processor.tokenizer.pad_token_id
    rope = model.model.get_rope_index
    noise, _ = isolation_probe(
        model, examples, examples[0], 1, pad, rope, flatten=True, pixels=encoder.pixels
    )
    print(f"re-run noise (same inputs twice): {noise:.2e}")
    for mbs in (1, 2):
        for flatten in (True, False):
            others, own = isolation_probe(
                model, examples, replacement, mbs, pad, rope, flatten=flatten,
                pixels=encoder.pixels,
            )  # fmt: skip
            layout = "flattened" if flatten else "rows"
            print(f"microBatchSize {mbs} {layout}: others moved {others:.2e}, swapped {own:.2e}")
    packed = collate([examples], pad, rope, True, pixels=encoder.pixels, flatten=True)
    one_by_one = sum(
        loss_sum(model, collate([[ex]], pad, None, False, pixels=encoder.pixels)) for ex in examples
    )
    packed_loss = loss_sum(model, packed)
    print(
        f"loss sum: packed {packed_loss.item():.4f}, one by one {one_by_one.item():.4f}, "
        f"relative difference {abs(packed_loss - one_by_one).item() / one_by_one.item():.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
