"""Packed samples stay isolated under the trainer's attention kernel: the CPU test's probe,
on the production kernel (varlen, bf16, on a GPU).

The probe (``medsft_pipelines.sft.isolation``) swaps the first sample of a packed micro-batch
and reports the largest change of any *other* sample's logits, for micro-batch sizes 1 and 2,
in the layout the trainer uses for the kernel (``flattened``: one row under varlen; ``rows``
under SDPA's block-diagonal mask) and in the other one. Two swaps:

* ``same_length``: the first sample's answer tokens replaced by others (the same length and
  layout, so the same shapes reach every kernel): another sample's logits must not move by
  more than a re-run of identical inputs moves them (``rerun_noise``, often exactly 0);
* ``other_sample``: a different sample (other length: every later sample shifts in the row,
  the kernels' tiling and matrix shapes change): bf16 rounding may move the others, so the
  bound is a few bf16 steps at the logits' scale (``bf16_bound``: 2^-6 x the largest |logit|;
  a leak between samples moves them by the order of the logits themselves).

It also compares the packed micro-batch's loss with the samples' losses one by one
(unpacked, padded, attention mask). Writes JSON (``--json``) with ``pass``.

    .venv/bin/python benchmarks/sft_packing_isolation.py [--model DIR] [--samples 8] [--json F]

Without CUDA it runs the same probe on CPU in fp32 with the kernel the trainer picks there
(SDPA with the mask), or ``--attention varlen`` (the varlen plumbing with the reference kernel).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText

from medsft_pipelines.models import cached_tiny_model, load_processor
from medsft_pipelines.sft.attention import SDPA, VARLEN, choose_attention, flattens_packed_rows
from medsft_pipelines.sft.data import Example, ExampleEncoder, collate, shifted_targets
from medsft_pipelines.sft.isolation import isolation_probe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sft.sft_helpers import curated_rows

DATA = Path(__file__).resolve().parents[1] / "examples" / "data"
"""The vendored public samples (they travel to the GPU machine with the repository)."""


def same_length_twin(example: Example, vocab: int) -> Example:
    """The sample with its answer tokens replaced (same length, images and layout)."""
    ids = example.input_ids.clone()
    answer = example.labels != -100
    generator = torch.Generator().manual_seed(1)
    ids[answer] = torch.randint(100, min(vocab, 1000), (int(answer.sum()),), generator=generator)
    labels = example.labels.clone()
    labels[answer] = ids[answer]
    return dataclasses.replace(
        example, sample_id=example.sample_id + "-twin", input_ids=ids, labels=labels
    )


def loss_sum(model: Any, collated: Any, device: torch.device) -> torch.Tensor:
    keep, targets = shifted_targets(collated.labels)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collated.inputs.items()}
    with torch.no_grad():
        out = model(**inputs, logits_to_keep=keep.to(device), use_cache=False)
    return F.cross_entropy(out.logits.float(), targets.to(device), reduction="sum")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model folder (default: the tiny model)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--attention", choices=["auto", "varlen", "sdpa"], default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    attn = {"auto": choose_attention(device, dtype, packing=True), "varlen": VARLEN}.get(
        args.attention, SDPA
    )
    path = args.model or cached_tiny_model()
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    model = model.to(device).eval()
    processor = load_processor(path)
    encoder = ExampleEncoder(processor, 8192)
    rows = curated_rows(DATA, n_text=args.samples, n_image=2)
    examples = [encoder.encode(r) for r in rows[: args.samples - 2] + rows[-2:]]
    other = encoder.encode(rows[args.samples - 2])
    twin = same_length_twin(examples[0], model.config.text_config.vocab_size)
    pad = processor.tokenizer.pad_token_id
    rope = model.model.get_rope_index
    trainer_flattens = flattens_packed_rows(attn)

    def probe(replacement: Example, mbs: int, flatten: bool) -> tuple[float, float]:
        return isolation_probe(
            model, examples, replacement, mbs, pad, rope, flatten=flatten, pixels=encoder.pixels
        )

    noise, _ = probe(examples[0], 1, trainer_flattens)
    collated = collate([examples], pad, rope, True, pixels=encoder.pixels, flatten=True)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collated.inputs.items()}
    with torch.no_grad():
        scale = float(model(**inputs, use_cache=False).logits.float().abs().max())
    bf16_bound = max(noise, 2**-6 * scale)
    cases = []
    for mbs in (1, 2):
        for flatten in (trainer_flattens, not trainer_flattens):
            for swap, replacement, bound in (
                ("same_length", twin, noise),
                ("other_sample", other, bf16_bound),
            ):
                others, own = probe(replacement, mbs, flatten)
                cases.append({
                    "micro_batch_size": mbs,
                    "layout": "flattened" if flatten else "rows",
                    "trainer_layout": flatten == trainer_flattens,
                    "swap": swap, "others_moved": others, "swapped_moved": own, "bound": bound,
                    "isolated": others <= bound,
                })  # fmt: skip
    one_by_one = sum(
        loss_sum(model, collate([[ex]], pad, None, False, pixels=encoder.pixels), device)
        for ex in examples
    )
    packed_loss = loss_sum(model, collated, device)
    relative = abs(packed_loss - one_by_one).item() / one_by_one.item()
    # The trainer's layout must isolate (the other one is reported beside it), and every
    # swap must visibly move the swapped sample (else the probe saw nothing at all).
    passed = all(c["isolated"] for c in cases if c["trainer_layout"]) and all(
        c["swapped_moved"] > 0 for c in cases
    )
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "attention_kernel": attn,
        "torch": torch.__version__,
        "model": str(path),
        "samples": len(examples),
        "rerun_noise": noise,
        "logit_scale": scale,
        "bf16_bound": bf16_bound,
        "cases": cases,
        "loss_packed": packed_loss.item(),
        "loss_one_by_one": one_by_one.item(),
        "loss_relative_difference": relative,
        "pass": passed,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
