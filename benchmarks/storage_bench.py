"""Storage throughput: medsft's object-store layer vs the plain minio SDK vs file://.

Starts a real MinIO on loopback (the cached test binary, via tests/harness), then measures in
the same run:

* shard read — fetching every shard of a dataset (raw bytes), and streaming every sample
  (fetch + sha256 verify + Parquet decode + dicts):
  plain SDK (one ``get_object`` stream per shard, sequential) vs ``store.get_bytes`` /
  ``DatasetReader.iter_samples`` on s3:// vs the same on file://;
* checkpoint upload and download — plain SDK (``fput_object``/``fget_object``, one stream,
  file after file) vs ``CheckpointStore.upload``/``download`` on s3:// vs file://.

Each number is the median of ``--repeats`` runs, in MB/s (10^6 bytes per second); within a
repeat the three variants run in turn, so a shared machine's changing load hits them alike.

    .venv/bin/python benchmarks/storage_bench.py [--dataset-mb 192] [--checkpoint-mb 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the harness that starts the real MinIO

from harness.minio_server import MinioServer  # noqa: E402
from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store  # noqa: E402
from medsft_pipelines.storage.checkpoints import CheckpointStore  # noqa: E402
from medsft_pipelines.storage.shards import DatasetReader, ShardWriter  # noqa: E402

MB = 1_000_000
MiB = 1024 * 1024
SCHEMA = pa.schema([("id", pa.int64()), ("question", pa.string()), ("image", pa.binary())])


def interleaved_mbps(
    nbytes: int, variants: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Median MB/s of each variant; the variants take turns within every repeat, so that the
    load of a shared machine changes them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: nbytes / statistics.median(t) / MB for name, t in times.items()}


def write_dataset(store: ObjectStore, total_bytes: int, shard_bytes: int) -> int:
    """Rows of a ~48 KiB incompressible "image" and some text; returns the shards' bytes."""
    rng = random.Random(0)
    writer = ShardWriter(store, SCHEMA, target_shard_bytes=shard_bytes)
    written, i = 0, 0
    while written < total_bytes:
        image = rng.randbytes(48 * 1024)
        writer.write({"id": i, "question": f"question {i} " * 8, "image": image})
        written += len(image)
        i += 1
    return writer.close().num_bytes


def make_checkpoint(folder: Path, total_bytes: int, files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        with (folder / f"shard-{n}.bin").open("wb") as out:
            remaining = total_bytes // files
            while remaining:
                chunk = os.urandom(min(remaining, 8 * MiB))
                out.write(chunk)
                remaining -= len(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-mb", type=int, default=192)
    parser.add_argument("--shard-mb", type=int, default=32)
    parser.add_argument("--checkpoint-mb", type=int, default=256)
    parser.add_argument("--checkpoint-files", type=int, default=4)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--part-mb", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medsft-storage-bench-"))
    server = MinioServer(work / "minio").start()
    try:
        client = server.client()
        client.make_bucket("bench")
        settings = StorageSettings(
            endpoint=server.endpoint,
            secure=False,
            access_key=server.access_key,
            secret_key=server.secret_key,
            part_size=args.part_mb * MiB,
            parallelism=args.parallelism,
        )
        s3 = open_store("s3://bench/run", settings=settings)
        local = open_store(f"file://{work}/local/run")
        results = run_all(args, work, client, s3, local)
    finally:
        server.close()
        shutil.rmtree(work, ignore_errors=True)

    results["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def run_all(args, work: Path, client, s3: ObjectStore, local: ObjectStore) -> dict:
    repeats = args.repeats
    shard_bytes = args.shard_mb * MiB
    dataset_bytes = write_dataset(s3.child("ds"), args.dataset_mb * MB, shard_bytes)
    write_dataset(local.child("ds"), args.dataset_mb * MB, shard_bytes)
    s3_reader, local_reader = DatasetReader(s3.child("ds")), DatasetReader(local.child("ds"))
    keys = [s.key for s in s3_reader.manifest.shards]

    def sdk_fetch_one(key: str) -> bytes:
        response = client.get_object("bench", f"run/ds/{key}")
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def sdk_samples() -> int:
        tables = (pq.read_table(pa.BufferReader(sdk_fetch_one(key))) for key in keys)
        return sum(len(table.to_pylist()) for table in tables)

    def samples(reader: DatasetReader) -> Callable[[], int]:
        return lambda: sum(1 for _ in reader.iter_samples(seed=0, epoch=0))

    fetch = interleaved_mbps(
        dataset_bytes,
        {
            "sdk": lambda: [sdk_fetch_one(k) for k in keys],
            "s3": lambda: [s3.child("ds").get_bytes(k) for k in keys],
            "file": lambda: [local.child("ds").get_bytes(k) for k in keys],
        },
        repeats,
    )
    stream = interleaved_mbps(
        dataset_bytes,
        {"sdk": sdk_samples, "s3": samples(s3_reader), "file": samples(local_reader)},
        repeats,
    )

    ckpt = work / "ckpt"
    make_checkpoint(ckpt, args.checkpoint_mb * MB, args.checkpoint_files)
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.iterdir())
    files = sorted(ckpt.iterdir())
    s3_ckpt, local_ckpt = (
        CheckpointStore(s3.child("ckpt"), parallelism=args.parallelism),
        CheckpointStore(local.child("ckpt"), parallelism=args.parallelism),
    )

    def sdk_upload() -> None:
        for path in files:
            client.fput_object("bench", f"sdk-ckpt/{path.name}", str(path), num_parallel_uploads=1)

    def sdk_download() -> None:
        for path in files:
            client.fget_object(
                "bench", f"sdk-ckpt/{path.name}", str(work / "sdk-restore" / path.name)
            )

    def restore(checkpoints: CheckpointStore, name: str) -> Callable[[], object]:
        return lambda: checkpoints.download(1, work / name)

    upload = interleaved_mbps(
        ckpt_bytes,
        {
            "sdk": sdk_upload,
            "s3": lambda: s3_ckpt.upload(ckpt, 1),
            "file": lambda: local_ckpt.upload(ckpt, 1),
        },
        repeats,
    )
    download = interleaved_mbps(
        ckpt_bytes,
        {
            "sdk": sdk_download,
            "s3": restore(s3_ckpt, "s3-restore"),
            "file": restore(local_ckpt, "file-restore"),
        },
        repeats,
    )
    return {
        "dataset_bytes": dataset_bytes,
        "shards": len(keys),
        "checkpoint_bytes": ckpt_bytes,
        "checkpoint_files": len(files),
        "parallelism": args.parallelism,
        "part_mb": args.part_mb,
        "repeats": repeats,
        "results": {
            "shard fetch (raw bytes)": fetch,
            "shard read (samples, sha256-verified)": stream,
            "checkpoint upload": upload,
            "checkpoint download": download,
        },
    }


def print_table(r: dict) -> None:
    print(
        f"dataset {r['dataset_bytes'] / MB:.0f} MB in {r['shards']} shards; checkpoint "
        f"{r['checkpoint_bytes'] / MB:.0f} MB in {r['checkpoint_files']} files; parallelism "
        f"{r['parallelism']}, part {r['part_mb']} MiB; median of {r['repeats']}; {r['machine']}"
    )
    print(
        "| operation | plain SDK MB/s | medsft s3:// MB/s | s3:// / SDK "
        "| medsft file:// MB/s | file:// / s3:// |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, v in r["results"].items():
        print(
            f"| {name} | {v['sdk']:.0f} | {v['s3']:.0f} | {v['s3'] / v['sdk']:.2f}x "
            f"| {v['file']:.0f} | {v['file'] / v['s3']:.2f}x |"
        )


if __name__ == "__main__":
    main()
