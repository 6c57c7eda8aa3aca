"""SFT training throughput and MFU: medsft's packed path vs the plain padded HF baseline.

A random-initialised Qwen2.5-VL of 3B or 7B shape (``--layers`` trims the depth so a 7B-wide
model fits one GPU with its optimizer state), synthetic samples whose lengths follow the
published mix (45.5 % image samples, mean trace ~840 tokens, images <= 262,144 px), the
same DeepSpeed engine (ZeRO-2, bf16, gradient checkpointing, torch AdamW) for both modes:

* ``packed`` — the recipe's path: first-fit-decreasing rows of ``--seq-len`` tokens, position
  resets, the trainer's attention kernel for them (``varlen_attn`` on a GPU, see
  ``medsft_pipelines.sft.attention``; SDPA with the block mask on CPU), logits only where
  the loss needs them (``medsft_pipelines.sft.train.train_step``).
* ``padded`` — the plain Hugging Face way: micro-batches of ``--baseline-batch`` samples in
  random order, padded to the longest, attention mask (SDPA), ``labels=`` and the model's
  own loss.

Reported per mode: real (non-padding) tokens/s per GPU, MFU (6·N·T plus causal attention
per sample, over the GPU's dense bf16 peak), peak memory. Run on a GPU node::

    torchrun --nproc_per_node=1 benchmarks/sft_gpu_throughput.py --model 3b --steps 20
    torchrun --nproc_per_node=1 benchmarks/sft_gpu_throughput.py --model 7b --layers 4
    # CPU smoke test of the script itself:
    torchrun --nproc_per_node=1 benchmarks/sft_gpu_throughput.py --model tiny --steps 3 --seq-len 2048
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig

from medsft_pipelines.models.tiny import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, build_tokenizer
from medsft_pipelines.sft.attention import SDPA, choose_attention
from medsft_pipelines.sft.data import IGNORE_INDEX, Example, collate, first_fit_decreasing
from medsft_pipelines.sft.deepspeed_config import deepspeed_config
from medsft_pipelines.sft.distributed import init_distributed
from medsft_pipelines.sft.telemetry import FlopsModel, peak_flops
from medsft_pipelines.sft.train import build_engine, enable_checkpointing, train_step
from medsft_pipelines.specs.sft import SFTSpec

TARGET_MFU, TARGET_SPEEDUP = 0.45, 1.5
"""Issue 21's targets for the packed path on one H100 (7B width): MFU, and real tokens/s over
the padded baseline's."""

VISION = {  # Qwen2.5-VL's vision tower (the same for 3B and 7B)
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}  # fmt: skip
SHAPES = {
    "3b": {
        "text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                 "num_attention_heads": 16, "num_key_value_heads": 2},
        "vision": {**VISION, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
    "7b": {
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4},
        "vision": {**VISION, "out_hidden_size": 3584},
        "tie_word_embeddings": False,
    },
    "tiny": {"text": dict(TINY_TEXT_CONFIG), "vision": dict(TINY_VISION_CONFIG), "tie_word_embeddings": False},
}  # fmt: skip


def model_config(shape: str, layers: int | None, tokenizer) -> Qwen2_5_VLConfig:
    spec = SHAPES[shape]
    text = {
        **spec["text"],
        "vocab_size": 152064 if shape != "tiny" else 1088,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.pad_token_id,
    }
    if layers:
        text["num_hidden_layers"] = layers
    if shape != "tiny":
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": [16, 24, 24],
        }
        text["max_position_embeddings"] = 128000
    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=spec["vision"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=spec["tie_word_embeddings"],
    )


def synthetic_examples(n: int, max_len: int, seed: int, tokenizer) -> list[Example]:
    """Token-level samples with the published length mix: prompt, optional image, trace."""
    rng = np.random.default_rng(seed)
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    start, end = (
        tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")
    )
    examples = []
    for i in range(n):
        has_image = rng.random() < 0.455
        prompt = int(rng.integers(30, 150) if has_image else rng.lognormal(math.log(180), 0.6))
        trace = int(
            rng.lognormal(math.log(330), 0.6) if has_image else rng.lognormal(math.log(950), 0.75)
        )
        side = (
            int(rng.integers(8, 19)) * 2 if has_image else 0
        )  # patch grid: 16..36 -> 64..324 tokens
        n_image = side * side // 4
        prompt = min(prompt, max_len // 4)  # a short --seq-len (the CPU smoke) still fits
        if 40 + prompt + n_image + 2 + trace > max_len:
            trace = max(16, max_len - 40 - prompt - n_image - 2)
        head = rng.integers(0, 1000, 20 + prompt).tolist()
        vision = [start] + [image_id] * n_image + [end] if has_image else []
        answer = rng.integers(0, 1000, 20 + trace).tolist()
        ids = torch.tensor(head + vision + answer, dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[len(head) + len(vision) :] = ids[len(head) + len(vision) :]
        examples.append(
            Example(
                sample_id=str(i),
                input_ids=ids,
                labels=labels,
                mm_token_type_ids=(ids == image_id).long(),
                image_grid_thw=torch.tensor([[1, side, side]]) if has_image else None,
                pixel_values=torch.randn(side * side, 1176) if has_image else None,
            )
        )
    return examples


def measure(name, engine, batches, step, warmup, device, flops_model, peak, head=0) -> dict:
    """Times ``step`` over ``batches`` (after ``warmup``). ``head``: LM-head parameters the
    step skips for non-target tokens (the packed path's ``logits_to_keep``): the model-FLOPs
    MFU counts them anyway (the convention), ``mfu_head_on_targets`` does not."""
    times, tokens, flops, skipped = [], 0, 0.0, 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for index, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - started)
            lengths = batch.extra["lengths"]
            tokens += sum(lengths)
            grid = batch.inputs.get("image_grid_thw")
            patches = int(grid.prod(-1).sum()) if grid is not None else 0
            flops += flops_model.step(sum(lengths), float(sum(n * n for n in lengths)), patches)
            skipped += 6.0 * head * (sum(lengths) - batch.target_tokens)
    elapsed = sum(times)
    return {
        "mode": name,
        "steps": len(times),
        "tokens_per_s_per_gpu": tokens / elapsed,
        "mfu": flops / elapsed / peak if peak else None,
        "mfu_head_on_targets": (flops - skipped) / elapsed / peak if peak else None,
        "step_time_s": elapsed / len(times),
        "padding_fraction": 1
        - sum(b.real_tokens for b in batches) / sum(b.padded_tokens for b in batches),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--layers", type=int, help="override the text depth (7B width on one GPU)")
    parser.add_argument("--seq-len", type=int, default=8192, help="packed row length")
    parser.add_argument("--baseline-batch", type=int, default=4, help="padded micro-batch size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    topo, device = init_distributed()
    tokenizer = build_tokenizer()
    config = model_config(args.model, args.layers, tokenizer)
    spec = SFTSpec.model_validate({
        "model": {"uri": "synthetic"},
        "training": {"globalBatchSize": topo.world_size, "microBatchSize": 1, "maxSeqLength": args.seq_len,
                     "gradientCheckpointing": not args.no_gradient_checkpointing, "warmupRatio": 0.0,
                     "scheduler": "constant", "learningRate": 1e-5},
        "deepspeed": {"zeroStage": 2},
    })  # fmt: skip
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    # The trainer's choice for packed rows (varlen on a GPU); the baseline switches the same
    # model to SDPA with its padding mask, as Hugging Face runs it by default.
    attn = choose_attention(device, dtype, packing=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=attn
        )
    model.config.use_cache = False
    if spec.training.gradient_checkpointing:
        enable_checkpointing(model)
    ds_config = deepspeed_config(
        spec, world_size=topo.world_size, grad_accum_steps=1, on_gpu=device.type == "cuda"
    )
    params = sum(p.numel() for p in model.parameters())
    engine = build_engine(model, spec, ds_config, total_steps=10**6)
    flops_model = FlopsModel.of(model)
    peak = peak_flops(device)

    # Enough samples for every mode's steps on this rank (different ranks: different seeds).
    n_steps = args.steps + args.warmup
    mean_len = 1100
    n_samples = max(n_steps * args.baseline_batch, n_steps * args.seq_len // mean_len + 64)
    examples = synthetic_examples(
        int(n_samples * 1.3), args.seq_len, seed=topo.rank, tokenizer=tokenizer
    )
    pad = tokenizer.pad_token_id
    rope = engine.module.model.get_rope_index

    bins = first_fit_decreasing([ex.length for ex in examples], args.seq_len)
    random.Random(0).shuffle(bins)
    packed_batches = []
    for b in bins[:n_steps]:
        row = [examples[i] for i in b]
        collated = collate([row], pad, rope, packed=True)
        collated.extra["lengths"] = [ex.length for ex in row]
        packed_batches.append(collated)
    order = list(range(len(examples)))
    random.Random(1).shuffle(order)
    padded_batches = []
    for s in range(n_steps):
        group = [
            examples[i] for i in order[s * args.baseline_batch : (s + 1) * args.baseline_batch]
        ]
        collated = collate([[ex] for ex in group], pad, None, packed=False)
        collated.extra["lengths"] = [ex.length for ex in group]
        padded_batches.append(collated)

    def packed_step(batch) -> None:
        # Every rank has a micro-batch each step here, so the filler (what a rank whose data
        # ran out runs at zero weight) is never used: the batch itself stands in.
        train_step(engine, [batch], batch, topo.world_size, device)

    def padded_step(batch) -> None:  # the plain HF way: full logits, the model's own loss
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.inputs.items()}
        out = engine(**inputs, labels=batch.labels.to(device), use_cache=False)
        engine.backward(out.loss)
        engine.step()

    results = []
    head = engine.module.get_output_embeddings().weight.numel()
    for name, kernel, batches, step, skips in (
        ("padded_hf_baseline", SDPA, padded_batches, padded_step, 0),
        ("packed_medsft", attn, packed_batches, packed_step, head),
    ):
        engine.module.set_attn_implementation(kernel)
        result = measure(name, engine, batches, step, args.warmup, device, flops_model, peak, skips)
        results.append({**result, "attention_kernel": kernel})
    speedup = results[1]["tokens_per_s_per_gpu"] / results[0]["tokens_per_s_per_gpu"]
    mfu = results[1]["mfu"]
    if topo.rank == 0:
        summary = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "world_size": topo.world_size,
            "model": args.model,
            "text_layers": config.text_config.num_hidden_layers,
            "params": params,
            "seq_len": args.seq_len,
            "baseline_batch": args.baseline_batch,
            "results": results,
            "speedup": speedup,
            "targets": {"mfu": TARGET_MFU, "speedup": TARGET_SPEEDUP},
            "meets_targets": mfu is not None and mfu >= TARGET_MFU and speedup >= TARGET_SPEEDUP,
        }
        print(json.dumps(summary, indent=2))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
