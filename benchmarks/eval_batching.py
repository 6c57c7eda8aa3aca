"""Items/s of the eval's transformers engine: batched vs one-at-a-time, same items, same run.

Runs the harness's own generation loop (prompts from the real PubMedQA / VQA-RAD samples,
sampling as in the paper, forced exit on) on the tiny offline Qwen2.5-VL, CPU by default.

    .venv/bin/python benchmarks/eval_batching.py --items 16 --max-new-tokens 32 --batch-sizes 1 4 8 16

With ``--backend vllm`` (GPU machine with vLLM installed) the same items go through vLLM.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time

from public_data import public_data

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATA = public_data()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmark", default="vqa-rad", choices=["vqa-rad", "pubmedqa"])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-pixels", type=int, default=65536)
    parser.add_argument("--backend", default="transformers", choices=["transformers", "vllm"])
    parser.add_argument("--model", help="model folder (default: the tiny offline model)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds; batch sizes interleaved in each"
    )
    args = parser.parse_args()

    import torch
    from PIL import Image

    from medsft_pipelines.eval import load_benchmark
    from medsft_pipelines.eval.backends import Request, Sampling, generate, open_engine
    from medsft_pipelines.eval.prompting import TEMPLATES, build_messages, generation_prefix
    from medsft_pipelines.models import cached_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or str(cached_tiny_model())
    engine = open_engine(
        args.backend, model, batch_size=1, max_pixels=args.max_pixels, max_images=10
    )
    bench = load_benchmark(args.benchmark, str(DATA / args.benchmark), max_items=args.items)
    template = TEMPLATES["thinking"]
    requests = []
    for item in bench.items:
        images = tuple(
            Image.open(io.BytesIO(bench.image_bytes(r))).convert("RGB") for r in item.images
        )
        prompt = engine.render(build_messages(item, template, "cot", len(images)))
        requests.append(Request(item.id, prompt + generation_prefix(template, "cot"), images))
    requests.sort(key=lambda r: (len(r.images), len(r.prompt)))  # as the harness does
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens, forced_exit_tokens=16, think_opened=True
    )

    generate(engine, requests[:2], sampling)  # warm-up (kernels, allocator)
    # Rounds interleave the batch sizes so that load from other processes hits all of them;
    # the best round is reported (least disturbed), the median next to it.
    times: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    tokens: dict[int, int] = {}
    for _ in range(args.repeats):
        for batch_size in args.batch_sizes:
            engine.batch_size = batch_size
            start = time.perf_counter()
            generations = generate(engine, requests, sampling)
            times[batch_size].append(time.perf_counter() - start)
            tokens[batch_size] = sum(g.response_tokens for g in generations)
    rows = []
    for batch_size, seconds in times.items():
        best, median = min(seconds), statistics.median(seconds)
        rows.append(
            {
                "batch_size": batch_size,
                "best_s": round(best, 2),
                "median_s": round(median, 2),
                "items_per_s": round(len(requests) / best, 2),
                "items_per_s_median": round(len(requests) / median, 2),
                "tokens_per_s": round(tokens[batch_size] / best, 1),
            }
        )
    base = rows[0]["items_per_s"]
    for row in rows:
        row["speedup"] = round(row["items_per_s"] / base, 2)
    print(
        json.dumps(
            {
                "backend": args.backend,
                "device": "cuda"
                if torch.cuda.is_available()
                else f"cpu x{torch.get_num_threads()}",
                "machine": platform.processor() or platform.machine(),
                "layout": engine.layout.describe() if hasattr(engine, "layout") else None,
                "benchmark": args.benchmark,
                "items": len(requests),
                "max_new_tokens": args.max_new_tokens,
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
