"""Packing efficiency of the SFT data pipeline: real tokens / processed tokens.

Two length distributions:

* ``real``: the complete public PubMedQA and VQA-RAD files (``public_data.py``) rendered as
  curated rows (PubMedQA: question + abstract, the human rationale as the trace; VQA-RAD: the
  full-size image resized to the recipe's 262,144-pixel budget) and tokenised by the SFT
  encoder with the tiny model's processor (chat template and image tokens included).
* ``published``: lengths drawn to match the published mix (45.5 % image samples, mean trace
  ~840 tokens: long text traces from a reasoning teacher, short image traces), 100k samples.

Compared on the same lengths: padded micro-batches in random order (the plain HF baseline),
padded with length grouping, and first-fit-decreasing packing into rows of ``max_seq_length``
over chunks of the stream (what ``MicroBatchStream`` does). Packed efficiency counts the
unused tail of every row as padding.

    .venv/bin/python benchmarks/sft_packing.py [--max-seq-length 16384] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from public_data import public_data

from medsft_pipelines.models import cached_tiny_model, load_processor
from medsft_pipelines.sft.data import ExampleEncoder, first_fit_decreasing, group_micro_batches

SHARED = public_data()
MAX_PIXELS = 262_144
SYSTEM = "You are a helpful medical assistant. Think step by step inside <think> </think> tags, then give the final answer."


def _resize(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        scale = min(1.0, math.sqrt(MAX_PIXELS / (im.width * im.height)))
        im = im.resize((max(28, int(im.width * scale)), max(28, int(im.height * scale))))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        return buf.getvalue()


def real_lengths(shared: Path) -> list[int]:
    """Token lengths of the real samples, measured by the SFT encoder."""
    return [n for lengths in real_lengths_by_source(shared).values() for n in lengths]


def real_lengths_by_source(shared: Path) -> dict[str, list[int]]:
    """Token lengths of the real samples, per source."""
    encoder = ExampleEncoder(load_processor(cached_tiny_model()), max_seq_length=10**6)
    lengths: list[int] = []
    by_source = {"pubmedqa": lengths}
    pubmedqa = json.loads((shared / "pubmedqa" / "ori_pqal.json").read_text())
    for pmid, item in pubmedqa.items():
        question = (
            " ".join(item["CONTEXTS"]) + "\n\n" + item["QUESTION"] + "\nOptions: yes, no, maybe"
        )
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "content": f"<think>{item['LONG_ANSWER']}</think>Answer: {item['final_decision']}",
            },
        ]
        lengths.append(encoder.encode({"id": pmid, "images": [], "messages": messages}).length)
    lengths = by_source["vqa-rad"] = []
    images: dict[str, bytes] = {}
    for item in json.loads((shared / "vqa-rad" / "VQA_RAD_Dataset_Public.json").read_text()):
        name = item["image_name"]
        if name not in images:
            images[name] = _resize((shared / "vqa-rad" / "images" / name).read_bytes())
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": item["question"]},
            {
                "role": "assistant",
                "content": f"<think>The question concerns the {item['image_organ'].lower()}; "
                f"the finding asked about is {item['question_type'].lower()}.</think>Answer: {item['answer']}",
            },
        ]
        row = {"id": item["qid"], "images": [images[name]], "messages": messages}
        lengths.append(encoder.encode(row).length)
    return by_source


def published_lengths(n: int, seed: int = 0) -> list[int]:
    """Lengths shaped like the published mix (mean trace ~840 tokens, 45.5 % image samples)."""
    rng = np.random.default_rng(seed)
    image = rng.random(n) < 0.455
    prompt = np.where(image, rng.integers(30, 150, n), rng.lognormal(math.log(180), 0.6, n))
    vision = np.where(image, rng.integers(64, 335, n), 0)  # <= 262,144 px -> <= 334 tokens
    trace = np.where(
        image, rng.lognormal(math.log(330), 0.6, n), rng.lognormal(math.log(950), 0.75, n)
    )
    total = 40 + prompt + vision + trace  # 40: chat template and answer
    return [int(x) for x in np.clip(total, 64, 16_000)]


def padded(lengths: list[int], batch: int, by_length: bool, window: int, seed: int) -> float:
    rng = random.Random(seed)
    real = processed = 0
    for start in range(0, len(lengths), window):
        chunk = lengths[start : start + window]
        for group in group_micro_batches(chunk, batch, by_length, rng):
            real += sum(chunk[i] for i in group)
            processed += len(group) * max(chunk[i] for i in group)
    return real / processed


def packed(lengths: list[int], capacity: int, window: int) -> tuple[float, float]:
    """(real / (rows x capacity), seconds of packing per 1000 samples)."""
    rows = 0
    started = time.perf_counter()
    for start in range(0, len(lengths), window):
        rows += len(first_fit_decreasing(lengths[start : start + window], capacity))
    per_1000 = (time.perf_counter() - started) / len(lengths) * 1000
    return sum(lengths) / (rows * capacity), per_1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seq-length", type=int, default=16384)
    parser.add_argument("--micro-batch", type=int, default=8, help="padded baselines' batch size")
    parser.add_argument("--published-samples", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    results = {}
    distributions = {
        "real": real_lengths(SHARED),
        "published": published_lengths(args.published_samples),
    }
    for name, lengths in distributions.items():
        random.Random(1).shuffle(lengths)  # stream order
        lengths = [n for n in lengths if n <= args.max_seq_length]
        row = {
            "samples": len(lengths),
            "mean_tokens": float(np.mean(lengths)),
            "p50": int(np.percentile(lengths, 50)),
            "p99": int(np.percentile(lengths, 99)),
            "padded_random": padded(lengths, args.micro_batch, False, 512, 0),
            "padded_length_grouped": padded(lengths, args.micro_batch, True, 512, 0),
        }
        for window in (512, 2048):
            fill, cost = packed(lengths, args.max_seq_length, window)
            row[f"packed_window_{window}"] = fill
            row[f"packing_ms_per_1000_samples_window_{window}"] = cost * 1000
        results[name] = row

    print(f"max_seq_length={args.max_seq_length}, padded micro-batch={args.micro_batch}")
    header = [
        "distribution",
        "samples",
        "mean",
        "p50",
        "p99",
        "padded",
        "grouped",
        "packed/512",
        "packed/2048",
    ]
    print(" | ".join(header))
    for name, r in results.items():
        print(
            f"{name} | {r['samples']} | {r['mean_tokens']:.0f} | {r['p50']} | {r['p99']} | "
            f"{r['padded_random']:.1%} | {r['padded_length_grouped']:.1%} | "
            f"{r['packed_window_512']:.2%} | {r['packed_window_2048']:.2%}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
