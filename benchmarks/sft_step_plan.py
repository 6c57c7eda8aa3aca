"""The exact step plan: its cost on an 8M-sample manifest, and packing efficiency with the
mixed (globally shuffled) per-rank streams.

The plan is what the trainer computes before its first step (``steps.plan_steps``): for each
rank, its stream order (``DatasetReader.sample_order``, a pure function of the manifest), the
token length of each sample (``SampleLengths.lookup``), and ``plan_epoch`` (windows of 2,048
samples, first-fit-decreasing packing, micro-batches). Each rank plans only its own share,
then one all-reduce agrees on the step count; so the wall time of the plan is one rank's time.

Lengths: the complete public files (``public_data.py``) as ``sft_packing.py`` measures them
(PubMedQA with abstracts, VQA-RAD images at the recipe's pixel budget; the tiny model's
processor), kept per source. The 8M-sample manifest is those lengths resampled (with
replacement) per source in their real proportions, in shards of 4,096 rows, one folder per
source as the curation merge writes them; no shard is read (the plan needs none).

    .venv/bin/python benchmarks/sft_step_plan.py [--samples 8000000] [--ranks 1 8 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_packing import SHARED, real_lengths_by_source

from medsft_pipelines.sft.data import BatchPlan, plan_epoch
from medsft_pipelines.sft.lengths import SampleLengths
from medsft_pipelines.storage import open_store
from medsft_pipelines.storage.shards import (
    DatasetReader,
    Manifest,
    ShardInfo,
    write_manifest,
)

SHARD_ROWS = 4096


def manifest_of(sources: dict[str, list[int]], total: int, seed: int = 0):
    """A manifest of ``total`` samples drawn from ``sources`` in their proportions, and the
    lengths table."""
    rng = np.random.default_rng(seed)
    count = sum(len(v) for v in sources.values())
    shards, per_shard = [], []
    for index, (name, lengths) in enumerate(sources.items()):
        n = round(total * len(lengths) / count) if total else len(lengths)
        drawn = rng.choice(np.asarray(lengths), n) if total else np.asarray(lengths)
        for start in range(0, n, SHARD_ROWS):
            part = drawn[start : start + SHARD_ROWS]
            key = f"shards/s{index:05d}/shard-{start // SHARD_ROWS:05d}.parquet"
            shards.append(ShardInfo(key=key, num_rows=len(part), num_bytes=0, sha256=name))
            per_shard.append(part.astype(np.int32))
    manifest = Manifest(
        created_at="-", num_rows=sum(s.num_rows for s in shards), num_bytes=0, columns={},
        shards=shards,
    )  # fmt: skip
    return manifest, SampleLengths(per_shard)


def plan_rank(reader, lengths, plan, rank, world) -> tuple[float, int, int, dict[str, float]]:
    """(fill, rows, micro-batches, CPU seconds per part) of one rank's epoch-0 plan (CPU time:
    the shared machine's load does not inflate it)."""
    times = {}
    started = time.process_time()
    shards, rows = reader.sample_order(seed=0, epoch=0, rank=rank, world_size=world)
    times["order"] = time.process_time() - started
    started = time.process_time()
    stream = lengths.lookup(shards, rows)
    times["lookup"] = time.process_time() - started
    started = time.process_time()
    epoch = plan_epoch(stream, plan, seed=0, epoch=0)
    times["pack"] = time.process_time() - started
    kept = sum(min(n, plan.max_seq_length) for n in stream if plan.planned_length(n))
    packed_rows = sum(len(mb) for w in epoch.windows for mb in w.batches)
    return kept / (packed_rows * plan.max_seq_length), packed_rows, epoch.micro_batches, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8_000_000)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--large-ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--max-seq-length", type=int, default=16384)
    args = parser.parse_args()
    plan = BatchPlan(micro_batch_size=1, max_seq_length=args.max_seq_length)
    sources = real_lengths_by_source(SHARED)
    print(f"real lengths: {', '.join(f'{k} {len(v)}' for k, v in sources.items())}")
    with tempfile.TemporaryDirectory() as tmp:
        for total in (0, args.samples):  # 0: the real samples themselves
            manifest, lengths = manifest_of(sources, total)
            store = open_store(f"file://{tmp}/{total}")
            write_manifest(store, manifest)
            reader = DatasetReader(store)
            label = "real samples" if not total else f"{manifest.num_rows:,} resampled"
            for world in args.ranks if not total else args.large_ranks:
                if manifest.num_rows // world < 256:
                    continue
                fills, seconds = [], []
                for rank in sorted({0, world - 1}) if not total else [world - 1]:
                    fill, _, _, times = plan_rank(reader, lengths, plan, rank, world)
                    fills.append(fill)
                    seconds.append(times)
                worst = max(seconds, key=lambda t: sum(t.values()))
                per_rank = manifest.num_rows // world
                print(
                    f"{label} | ranks {world} | {per_rank:,} samples/rank | fill "
                    f"{min(fills):.2%} | plan of one rank's epoch {sum(worst.values()):.2f} CPU s "
                    f"(order {worst['order']:.2f}, lookup {worst['lookup']:.2f}, "
                    f"pack {worst['pack']:.2f})"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
