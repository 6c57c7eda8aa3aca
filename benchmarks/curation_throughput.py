"""Curation throughput: the pipeline (teacher excluded) vs a naive ``datasets.map`` baseline.

    .venv/bin/python benchmarks/curation_throughput.py [--traces 4] [--no-image-cache]

Input, the same for both: the real PubMedQA (1,000 questions with abstracts) and VQA-RAD
(2,248 image questions over 315 images) files (complete upstream files: public_data.py), read in place, with
``--traces`` generated reasoning traces per question (lengths 40-1,500 words; one in four has
a wrong final answer) standing in for the teacher. Both sides run the same steps with the same
spec: map fields -> decode/resize/encode images -> image hashes -> 16-gram + near-paraphrase +
image-hash decontamination against the PubMedQA and VQA-RAD test splits -> exact dedup ->
verify every trace (the shared answer extraction) -> render messages -> count tokens with the
tiny Qwen2.5-VL processor (image tokens included) -> MinHash near-dedup -> write Parquet.

* pipeline: ``Worker`` + ``run_merge`` (one worker), file:// output.
* naive: one ``datasets.map``/``filter`` per step, one example at a time (``batched=False``),
  each step materialised by ``datasets`` before the next, images decoded per question (twice:
  resize and hash), the chat template rendered and tokenised per example, datasketch MinHash.

Reported: CPU seconds (``time.process_time``: every thread of the process counts, so the
numbers are per core), output samples (rows) per CPU second, the speed-up, the per-step CPU
breakdown of the pipeline, and a projection to the published 8.1M-sample corpus on 64 cores.
``--no-image-cache`` makes the pipeline decode an image once per *question* (the published mix
has far fewer questions per image than VQA-RAD's 7): the conservative number.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from public_data import public_data

DATA = public_data()
PUBLISHED_SAMPLES = 8_100_000
CORES = 64
FILLER = [
    "the",
    "finding",
    "suggests",
    "that",
    "we",
    "should",
    "compare",
    "the",
    "options",
    "against",
    "the",
    "clinical",
    "picture",
    "and",
    "weigh",
    "each",
    "mechanism",
    "before",
    "deciding",
    "because",
    "the",
    "evidence",
    "points",
    "toward",
    "one",
    "answer",
]


# -- input ----------------------------------------------------------------------------------------


def make_traces(path: Path, traces: int, seed: int = 0) -> None:
    """Generated reasoning traces per question, as a tracesFrom file."""
    rng = random.Random(seed)
    pubmed = json.loads((DATA / "pubmedqa/ori_pqal.json").read_text())
    vqa = json.loads((DATA / "vqa-rad/VQA_RAD_Dataset_Public.json").read_text())
    items = [
        (f"pubmedqa/{k}", r["final_decision"], r["QUESTION"].split()) for k, r in pubmed.items()
    ]
    items += [(f"vqa-rad/{r['qid']}", str(r["answer"]).strip(), r["question"].split()) for r in vqa]
    with path.open("w") as f:
        for item_id, gold, words in items:
            out = []
            for t in range(traces):
                n = int(40 * (1500 / 40) ** rng.random())  # log-uniform 40..1500 words
                body = " ".join(rng.choice(words + FILLER) for _ in range(n))
                answer = gold if t % 4 != 1 else "definitely something else"
                out.append(f"<think>{body}</think>\nAnswer: {answer}")
            f.write(json.dumps({"id": item_id, "traces": out}) + "\n")


def make_config(out: Path, traces_file: Path, model_dir: Path) -> Any:
    from medsft_pipelines.specs.jobconfig import CurationJobConfig

    spec = {
        "sources": [
            {
                "name": "pubmedqa",
                "uri": f"file://{DATA / 'pubmedqa/ori_pqal.json'}",
                "format": "json",
                "task": "mcq",
                "options": ["yes", "no", "maybe"],
                "fields": {
                    "question": "QUESTION",
                    "context": "CONTEXTS",
                    "answer": "final_decision",
                    "images": None,
                },
            },
            {
                "name": "vqa-rad",
                "uri": f"file://{DATA / 'vqa-rad/VQA_RAD_Dataset_Public.json'}",
                "format": "json",
                "task": "open",
                "modality": "image",
                "imageRoot": f"file://{DATA / 'vqa-rad/images'}",
                "fields": {"id": "qid", "images": "image_name", "options": None},
            },
        ],
        "tracesFrom": {"uri": f"file://{traces_file}"},
        "verification": {"verifiers": {"mcq": "option", "open": "normalized"}},
        "processor": {"model": str(model_dir)},
        "decontamination": {
            "benchmarks": [
                {"name": "pubmedqa", "uri": str(DATA / "pubmedqa")},
                {"name": "vqa-rad", "uri": str(DATA / "vqa-rad")},
            ]
        },
        "errorBudget": {"maxFraction": 0.5},
    }
    return CurationJobConfig.model_validate(
        {"run": {"name": "bench"}, "outputUri": f"file://{out}", "workers": 1, "spec": spec}
    )


# -- the pipeline ---------------------------------------------------------------------------------


def run_pipeline(config: Any, token_counter: Any, image_cache: bool) -> dict[str, Any]:
    from medsft_pipelines.curation.images import ImageProcessor
    from medsft_pipelines.curation.merge import run_merge
    from medsft_pipelines.curation.worker import Worker

    t0 = time.process_time()
    worker = Worker(config, 0, token_counter=token_counter, show_progress=False)
    if not image_cache:
        worker.images = ImageProcessor(
            max_pixels=262144, min_pixels=3136, encoding="png", cache_size=0
        )
    manifest = worker.run()
    t1 = time.process_time()
    final = run_merge(config, show_progress=False)
    t2 = time.process_time()
    from medsft_pipelines.storage import open_store
    from medsft_pipelines.storage.shards import DatasetReader

    reader = DatasetReader(open_store(config.output_uri), columns=["id"])
    ids = sorted(
        i
        for n in range(len(reader.manifest.shards))
        for i in reader.read_shard(n).column("id").to_pylist()
    )
    counts = final.extra["counts"]
    steps = {k.split("/", 1)[1]: v / 1000 for k, v in counts.items() if k.startswith("cpu_ms/")}
    setup = steps.get("setup", 0.0)
    return {
        "rows": final.num_rows,
        "partial_rows": manifest.num_rows,
        "cpu_s": t2 - t0,
        "worker_cpu_s": t1 - t0,
        "setup_cpu_s": setup,
        "merge_cpu_s": t2 - t1,
        "steps_cpu_s": dict(sorted(steps.items())),
        "images_decoded": counts.get("images/decoded", 0),
        "_ids": ids,
    }


# -- the naive baseline ---------------------------------------------------------------------------


def run_naive(config: Any, model_dir: Path, out: Path) -> dict[str, Any]:
    import datasets
    from datasketch import MinHash, MinHashLSH
    from PIL import Image

    from medsft_pipelines.curation.format import render_messages
    from medsft_pipelines.curation.images import process_image
    from medsft_pipelines.curation.lengths import template_messages
    from medsft_pipelines.curation.sample import Sample
    from medsft_pipelines.curation.sources import SourceContext, to_sample
    from medsft_pipelines.curation.text import normalize_text, shingles, words
    from medsft_pipelines.curation.verify import verify
    from medsft_pipelines.eval.registry import load_benchmark
    from medsft_pipelines.models import load_processor

    datasets.disable_progress_bars()
    spec = config.spec
    t0 = time.process_time()
    processor = load_processor(model_dir)

    # Benchmark side (setup): n-gram tuples, datasketch sketches, image hashes.
    grams: set[tuple[str, ...]] = set()
    bench_lsh = MinHashLSH(threshold=0.7, num_perm=128)
    bench_images: set[str] = set()
    bench_sketches: dict[str, Any] = {}
    for b in spec.decontamination.benchmarks:
        bench = load_benchmark(b.name, b.uri, b.split, check_images=False)
        for n, item in enumerate(bench.items):
            for view in (
                "\n".join([item.context, item.question, *item.options.values()]),
                item.question,
            ):
                w = words(view)
                if len(w) >= 8:
                    size = min(16, len(w))
                    grams.update(tuple(w[i : i + size]) for i in range(len(w) - size + 1))
                    if not item.images:
                        m = MinHash(num_perm=128)
                        m.update_batch([s.encode() for s in shingles(w, 2)])
                        key = f"{b.name}/{n}/{view == item.question}"
                        if key not in bench_sketches:
                            bench_lsh.insert(key, m)
                            bench_sketches[key] = m
            for ref in item.images:
                data = bench.image_bytes(ref)
                bench_images.add(hashlib.sha256(data).hexdigest())
                with Image.open(io.BytesIO(data)) as img:
                    bench_images.add(hashlib.sha256(img.convert("RGB").tobytes()).hexdigest())
    short_sizes = sorted({len(g) for g in grams if len(g) < 16})
    setup = time.process_time() - t0

    traces = {}
    for line in Path(spec.traces_from.uri.removeprefix("file://")).read_text().splitlines():
        rec = json.loads(line)
        traces[rec["id"]] = rec["traces"]
    raw = []
    for si, source in enumerate(spec.sources):
        data = json.loads(Path(source.uri.removeprefix("file://")).read_text())
        rows = [{**v, "id": k} for k, v in data.items()] if isinstance(data, dict) else data
        raw += [
            {"source_index": si, "row_index": i, "record": json.dumps(r)}
            for i, r in enumerate(rows)
        ]
    ds = datasets.Dataset.from_list(raw)
    kw = {"keep_in_memory": True, "load_from_cache_file": False}

    def canonical(ex: dict) -> dict:
        source = spec.sources[ex["source_index"]]
        s = to_sample(
            json.loads(ex["record"]), SourceContext(source, ex["source_index"]), ex["row_index"]
        )
        return {
            "id": s.id,
            "source": s.source,
            "task_type": s.task_type,
            "modality": s.modality,
            "question": s.question,
            "context": s.context,
            "options": s.options,
            "answer": s.answer,
            "image_refs": [str(r) for r in s.image_refs],
            "traces": traces.get(s.id, []),
        }

    string, strings = datasets.Value("string"), datasets.List(datasets.Value("string"))
    features = datasets.Features(
        {
            "source_index": datasets.Value("int64"),
            "row_index": datasets.Value("int64"),
            "id": string,
            "source": string,
            "task_type": string,
            "modality": string,
            "question": string,
            "context": string,
            "options": strings,
            "answer": string,
            "image_refs": strings,
            "traces": strings,
        }
    )
    ds = ds.map(canonical, remove_columns=["record"], features=features, **kw)

    def load_images(ex: dict) -> dict:
        root = spec.sources[ex["source_index"]].image_root
        out_images, sizes, files = [], [], []
        for ref in ex["image_refs"]:
            data = Path(f"{root.removeprefix('file://')}/{ref}").read_bytes()
            p = process_image(data, max_pixels=262144, min_pixels=3136, encoding="png")
            out_images.append(p.data)
            sizes.append([p.width, p.height])
            files.append(hashlib.sha256(data).hexdigest())
        return {"images": out_images, "sizes": sizes, "file_hashes": files}

    def with_columns(**extra: Any) -> Any:
        f = ds.features.copy()
        f.update(extra)
        return f

    ds = ds.map(
        load_images,
        features=with_columns(
            images=datasets.List(datasets.Value("binary")),
            sizes=datasets.List(datasets.List(datasets.Value("int64"))),
            file_hashes=strings,
        ),
        **kw,
    )

    def pixel_hashes(ex: dict) -> dict:
        hashes = []
        for ref in ex["image_refs"]:
            root = spec.sources[ex["source_index"]].image_root.removeprefix("file://")
            with Image.open(f"{root}/{ref}") as img:
                hashes.append(hashlib.sha256(img.convert("RGB").tobytes()).hexdigest())
        return {"pixel_hashes": hashes}

    ds = ds.map(pixel_hashes, features=with_columns(pixel_hashes=strings), **kw)

    def prompt(ex: dict) -> str:
        return "\n".join(p for p in (ex["context"], ex["question"], *ex["options"]) if p)

    def clean(ex: dict) -> bool:
        if bench_images & set(ex["pixel_hashes"] + ex["file_hashes"]):
            return False
        w = words(prompt(ex))
        if len(w) >= 8:
            for size in (16, *short_sizes):
                if any(tuple(w[i : i + size]) in grams for i in range(len(w) - size + 1)):
                    return False
        if not ex["image_refs"]:
            for view in (w, words(ex["question"])):
                if len(view) >= 8:
                    m = MinHash(num_perm=128)
                    m.update_batch([s.encode() for s in shingles(view, 2)])
                    if any(m.jaccard(bench_sketches[c]) >= 0.7 for c in bench_lsh.query(m)):
                        return False
        return True

    ds = ds.filter(clean, **kw)
    ds = ds.map(
        lambda ex: {
            "qhash": hashlib.sha256(
                (normalize_text(prompt(ex)) + "|".join(sorted(ex["pixel_hashes"]))).encode()
            ).hexdigest()
        },
        **kw,
    )
    seen: set[str] = set()

    def first(ex: dict) -> bool:
        if ex["qhash"] in seen:
            return False
        seen.add(ex["qhash"])
        return True

    ds = ds.filter(first, **kw)

    def explode(batch: dict) -> dict:
        out: dict[str, list] = {k: [] for k in [*batch, "trace", "trace_index"]}
        for i in range(len(batch["id"])):
            for t, trace in enumerate(batch["traces"][i]):
                for k in batch:
                    out[k].append(batch[k][i])
                out["trace"].append(trace)
                out["trace_index"].append(t)
        return out

    ds = ds.map(explode, batched=True, batch_size=64, **kw)

    def sample_of(ex: dict) -> Sample:
        return Sample(
            id=ex["id"],
            source=ex["source"],
            task_type=ex["task_type"],
            modality=ex["modality"],
            question=ex["question"],
            answer=ex["answer"],
            options=ex["options"],
            context=ex["context"],
        )

    def check(ex: dict) -> dict:
        kind = getattr(spec.verification.verifiers, ex["task_type"])
        v = verify(sample_of(ex), ex["trace"], kind, spec.verification, imported=True)
        return {"verdict": v.reason, "reasoning": v.reasoning}

    ds = ds.map(check, **kw)
    ds = ds.filter(lambda ex: ex["verdict"] == "accepted", **kw)
    ds = ds.map(
        lambda ex: {"messages": render_messages(sample_of(ex), ex["reasoning"], spec.format)}, **kw
    )

    def count(ex: dict) -> dict:
        conv = template_messages(ex["messages"], len(ex["images"]))
        text = processor.apply_chat_template(conv, tokenize=False)
        n = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        if ex["sizes"]:
            mm = processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in ex["sizes"]])
            n += sum(t - 1 for t in mm.num_image_tokens)
        t = len(
            processor.tokenizer(ex["messages"][-1]["content"], add_special_tokens=False)[
                "input_ids"
            ]
        )
        return {"n_tokens": n, "trace_tokens": t}

    ds = ds.map(count, **kw)
    ds = ds.filter(lambda ex: ex["n_tokens"] <= spec.lengths.max_tokens, **kw)

    def sketch(ex: dict) -> dict:
        m = MinHash(num_perm=128)
        salt = "|".join(sorted(ex["pixel_hashes"])) + "|"
        m.update_batch([s.encode() for s in shingles(words(prompt(ex)), 5, salt)])
        return {"minhash": m.hashvalues.tolist()}

    ds = ds.map(sketch, **kw)
    lsh = MinHashLSH(threshold=spec.dedup.minhash_threshold, num_perm=128)
    keep_question: dict[str, bool] = {}
    kept_sketches: dict[str, Any] = {}
    for ex in ds.select_columns(["id", "minhash"]):
        if ex["id"] in keep_question:
            continue
        m = MinHash(num_perm=128, hashvalues=ex["minhash"], scheme="affine32")
        threshold = spec.dedup.minhash_threshold
        keep = not any(m.jaccard(kept_sketches[c]) >= threshold for c in lsh.query(m))
        keep_question[ex["id"]] = keep
        if keep:
            lsh.insert(ex["id"], m)
            kept_sketches[ex["id"]] = m
    ds = ds.filter(lambda ex: keep_question[ex["id"]], **kw)
    ds.to_parquet(str(out / "naive.parquet"))
    total = time.process_time() - t0
    ids = sorted(f"{i}#{t}" for i, t in zip(ds["id"], ds["trace_index"], strict=True))
    return {"rows": len(ds), "cpu_s": total, "setup_cpu_s": setup, "_ids": ids}


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traces", type=int, default=4, help="generated traces per question")
    parser.add_argument(
        "--no-image-cache", action="store_true", help="decode each question's image"
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate both this many times; keep each one's fastest",
    )
    args = parser.parse_args()

    from medsft_pipelines.curation.lengths import TokenCounter
    from medsft_pipelines.models import load_processor
    from medsft_pipelines.models.tiny import cached_tiny_model

    model_dir = cached_tiny_model(seed=0)
    token_counter = TokenCounter(load_processor(model_dir))
    with tempfile.TemporaryDirectory(prefix="medsft-curation-bench-") as tmp:
        root = Path(tmp)
        make_traces(root / "traces.jsonl", args.traces)
        pipeline, naive = None, None
        for n in range(args.rounds):  # alternate, so both see the same background load
            config = make_config(root / f"out{n}", root / "traces.jsonl", model_dir)
            run = run_pipeline(config, token_counter, image_cache=not args.no_image_cache)
            pipeline = run if pipeline is None or run["cpu_s"] < pipeline["cpu_s"] else pipeline
            if not args.skip_naive:
                run = run_naive(config, model_dir, root)
                naive = run if naive is None or run["cpu_s"] < naive["cpu_s"] else naive
        assert pipeline is not None

    def rate(result: dict[str, Any], setup: bool = True) -> float:
        cpu = result["cpu_s"] - (0 if setup else result["setup_cpu_s"])
        return result["rows"] / cpu

    pipeline_ids = pipeline.pop("_ids")
    naive_ids = naive.pop("_ids") if naive else None
    summary: dict[str, Any] = {
        "rounds": args.rounds,
        "questions_in": 3248,
        "traces_per_question": args.traces,
        "image_cache": not args.no_image_cache,
        "pipeline": {
            **pipeline,
            "rows_per_cpu_s": round(rate(pipeline), 1),
            "rows_per_cpu_s_steady": round(rate(pipeline, setup=False), 1),
        },
    }
    if naive:
        summary["naive_datasets_map"] = {
            **naive,
            "rows_per_cpu_s": round(rate(naive), 1),
            "rows_per_cpu_s_steady": round(rate(naive, setup=False), 1),
        }
        summary["speedup"] = round(rate(pipeline) / rate(naive), 2)
        summary["speedup_steady"] = round(rate(pipeline, False) / rate(naive, False), 2)
        summary["same_rows"] = pipeline_ids == naive_ids
    steady = rate(pipeline, setup=False)
    worker_rate = pipeline["rows"] / (pipeline["worker_cpu_s"] - pipeline["setup_cpu_s"])
    merge_rate = pipeline["rows"] / pipeline["merge_cpu_s"]
    per_worker = PUBLISHED_SAMPLES / CORES
    worker_h = per_worker / worker_rate / 3600 + pipeline["setup_cpu_s"] / 3600
    merge_h = PUBLISHED_SAMPLES / merge_rate / 3600
    summary["projection_8.1M_on_64_cores"] = {
        "assumes": "64 workers of one core each at this benchmark's per-sample cost (its decontam "
        "and rejection rates included); the merge's CPU cost per row from this run, on one "
        "thread or spread over 16 threads (one source per thread: needs >= 16 sources)",
        "worker_hours": round(worker_h, 2),
        "merge_hours_1_thread": round(merge_h, 2),
        "merge_hours_16_threads": round(merge_h / 16, 2),
        "total_hours_16_merge_threads": round(worker_h + merge_h / 16, 2),
        "whole_corpus_cpu_hours": round(PUBLISHED_SAMPLES / steady / 3600, 1),
    }
    print(
        json.dumps(
            summary, indent=2, default=lambda o: dict(o) if isinstance(o, Counter) else str(o)
        )
    )


if __name__ == "__main__":
    main()
