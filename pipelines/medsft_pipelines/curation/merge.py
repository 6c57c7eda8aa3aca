"""The merge step: global decisions over every worker's output, then the final dataset.

1. every worker must have finished with the same spec hash (clear error otherwise);
2. the error budget is checked over all input rows;
3. question records of all workers, in canonical order (source, row); dedup, class
   balance, caps and subsampling weights already chose these questions before the teacher
   was called (:mod:`.select`);
4. per row: a source weight above 1 repeats rows, then the length-bucket mixture;
5. rows are streamed source by source (sources in parallel threads, each into its own shard
   run), worker by worker (canonical order, so N workers give the same dataset as one),
   filtered, and written as final shards; the report goes next to them; the manifest, which
   lists every source's shards in source order, is written last.

Only question records (no images) are held in memory; rows are streamed shard by shard.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from medsft_pipelines.specs.jobconfig import CurationJobConfig
from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store
from medsft_pipelines.storage.layout import MANIFEST_KEY
from medsft_pipelines.storage.progress import ProgressReporter
from medsft_pipelines.storage.shards import (
    DatasetReader,
    Manifest,
    ShardWriter,
    read_manifest,
    write_manifest,
)
from medsft_pipelines.tracking import open_tracker

from .balance import length_mixture, repeats
from .counts import key, sum_counts
from .errors import CurationError
from .job import spec_hash
from .layout import QUARANTINE_PREFIX, REPORT_MD, REPORT_PREFIX, STAGE, WORK_PREFIX, worker_name
from .quarantine import ROW_REASONS, check_error_budget
from .report import build_report, token_stats, write_report
from .sample import ROW_SCHEMA

log = logging.getLogger("medsft.curation.merge")

MIN_SHARD_BYTES = 1024 * 1024
FINAL_SHARD_PREFIX = "shards/"


@dataclass
class Question:
    """A question record as the merge sees it."""

    question_id: str
    source: str
    source_index: int
    row_index: int
    task_type: str
    answer: str
    question_hash: str
    prompt_text: str
    image_ids: list[str]
    trace_index: list[int]
    n_tokens: list[int]
    trace_tokens: list[int]


def worker_manifests(out: ObjectStore, workers: int, expected_hash: str) -> list[Manifest]:
    """Every worker's manifest; :class:`CurationError` naming the first missing or stale one."""
    manifests = []
    for index in range(workers):
        store = out.child(f"{WORK_PREFIX}/{worker_name(index, workers)}")
        if not store.exists(MANIFEST_KEY):
            raise CurationError(
                f"worker {index} of {workers} has not finished: no {store.uri_of(MANIFEST_KEY)}. "
                "Run every worker (or re-run the failed one) before the merge."
            )
        manifest = read_manifest(store)
        if manifest.spec_hash != expected_hash:
            raise CurationError(
                f"worker {index} of {workers} was produced by another spec "
                f"({manifest.spec_hash} != {expected_hash}); re-run it"
            )
        manifests.append(manifest)
    return manifests


def read_questions(out: ObjectStore, workers: int) -> list[Question]:
    """All question records, in canonical order."""
    tables = []
    for index in range(workers):
        reader = DatasetReader(out.child(f"{WORK_PREFIX}/{worker_name(index, workers)}/questions"))
        tables += [reader.read_shard(i) for i in range(len(reader.manifest.shards))]
    questions = [Question(**row) for table in tables for row in table.to_pylist()]
    questions.sort(key=lambda q: (q.source_index, q.row_index))
    return questions


def select_rows(
    config: CurationJobConfig, questions: list[Question], counts: Counter[str]
) -> dict[str, list[int]]:
    """``{row id: kept copy numbers}`` after weights above 1 and the length mixture (which
    questions to keep at all was decided before the teacher: :mod:`.select`)."""
    spec = config.spec
    weights = {s.name: s.weight for s in spec.sources}
    copies: dict[str, list[int]] = {}
    lengths: dict[str, int] = {}
    for q in sorted(questions, key=lambda q: (q.source_index, q.row_index)):
        for ti, trace_tokens in zip(q.trace_index, q.trace_tokens, strict=True):
            row_id = f"{q.question_id}#{ti}"
            # A weight below 1 subsampled the questions already; above 1 it repeats rows.
            n = repeats(row_id, weights[q.source], spec.seed) if weights[q.source] >= 1 else 1
            if n > 1:
                counts[key("added", "weight_repeat", q.source)] += n - 1
            copies[row_id] = list(range(n))
            for c in range(n):
                lengths[copy_id(row_id, c)] = trace_tokens

    buckets = sorted(spec.lengths.buckets, key=lambda b: b.max_tokens)
    if buckets and lengths:
        kept, achieved = length_mixture(
            lengths, [b.max_tokens for b in buckets], [b.fraction for b in buckets], spec.seed
        )
        counts.update(
            {
                key("length_mixture", "achieved_permille", k): round(v * 1000)
                for k, v in achieved.items()
            }
        )
        for row_id, numbers in copies.items():
            still = [c for c in numbers if copy_id(row_id, c) in kept]
            removed = len(numbers) - len(still)
            if removed:
                counts[key("removed", "length_mixture", row_id.split("/", 1)[0])] += removed
            copies[row_id] = still
    return {row_id: numbers for row_id, numbers in copies.items() if numbers}


def copy_id(row_id: str, copy: int) -> str:
    """Id of the ``copy``-th repetition of a row (the row's own id for the first)."""
    return row_id if copy == 0 else f"{row_id}#r{copy}"


def _filter_table(table: pa.Table, selection: dict[str, list[int]]) -> pa.Table:
    take, new_ids = [], []
    for i, row_id in enumerate(table.column("id").to_pylist()):
        for c in selection.get(row_id, ()):
            take.append(i)
            new_ids.append(copy_id(row_id, c))
    if not take:
        return table.slice(0, 0)
    picked = table.take(pa.array(take, pa.int64()))
    return picked.set_column(
        picked.schema.get_field_index("id"), "id", pa.array(new_ids, pa.string())
    )


def run_merge(
    config: CurationJobConfig,
    *,
    settings: StorageSettings | None = None,
    scratch: Path | None = None,
    show_progress: bool = True,
    merge_threads: int | None = None,
) -> Manifest:
    """Merge the workers' partial outputs into the final dataset; returns its manifest."""
    del scratch  # the merge needs no local files
    settings = settings if settings is not None else StorageSettings.for_spec(config.storage)
    spec = config.spec
    out = open_store(config.output_uri, settings)
    expected = spec_hash(config)
    if out.exists(MANIFEST_KEY) and read_manifest(out).spec_hash == expected:
        log.info("dataset at %s is already complete for this spec", out.uri)
        return read_manifest(out)
    progress = ProgressReporter(
        open_store(config.effective_progress_uri(), settings),
        STAGE,
        tracker=open_tracker(config.tracking, config.run, STAGE, config.spec.to_wire()),
    )
    progress.update(step=0, total=None, phase="merge", force=True)

    clock = time.process_time()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.process_time()
        counts[key("cpu_ms", f"merge_{step}")] += round((now - clock) * 1000)
        clock = now

    manifests = worker_manifests(out, config.workers, expected)
    counts = sum_counts(m.extra.get("counts", {}) for m in manifests)
    rows_read = sum(v for k, v in counts.items() if k.startswith("read/"))
    bad = Counter(
        {
            r: sum(
                v for k, v in counts.items() if k.startswith("quarantined/") and k.endswith("/" + r)
            )
            for r in ROW_REASONS
        }
    )
    check_error_budget(
        +bad,
        rows_read,
        spec.error_budget.max_fraction,
        where="merge",
        quarantine_uri=out.uri_of(f"{QUARANTINE_PREFIX}/"),
    )

    questions = read_questions(out, config.workers)
    lap("read")
    selection = select_rows(config, questions, counts)
    lap("select")
    final_rows = sum(len(v) for v in selection.values())

    # Rows for the report (no text): every kept copy with its lengths.
    by_id = {q.question_id: q for q in questions}
    modality = {s.name: s.modality for s in spec.sources}
    kept_rows: list[dict[str, Any]] = []
    for row_id, numbers in selection.items():
        q = by_id[row_id.rsplit("#", 1)[0]]
        at = q.trace_index.index(int(row_id.rsplit("#", 1)[1]))
        for _ in numbers:
            kept_rows.append(
                {
                    "source": q.source,
                    "task_type": q.task_type,
                    "modality": modality[q.source],
                    "question_id": q.question_id,
                    "image_ids": q.image_ids,
                    "n_tokens": q.n_tokens[at],
                    "trace_tokens": q.trace_tokens[at],
                }
            )

    total_bytes = sum(m.num_bytes for m in manifests)
    total_partial_rows = sum(m.num_rows for m in manifests)
    per_row = total_bytes / total_partial_rows if total_partial_rows else 1024
    shard_bytes = max(MIN_SHARD_BYTES, math.ceil(per_row * spec.sharding.samples_per_shard))
    # Unpublish, and clear shards of an earlier attempt: only the new manifest will list any.
    out.delete(MANIFEST_KEY)
    out.delete_prefix(FINAL_SHARD_PREFIX)
    bar = tqdm(
        total=final_rows,
        desc="merge",
        unit="row",
        mininterval=10,
        file=sys.stderr,
        disable=not show_progress,
    )
    readers = [
        DatasetReader(out.child(f"{WORK_PREFIX}/{worker_name(i, config.workers)}"))
        for i in range(config.workers)
    ]
    shard_index = [{s.key: n for n, s in enumerate(r.manifest.shards)} for r in readers]
    lock = threading.Lock()
    written = 0

    def write_source(source_index: int) -> Manifest:
        """One source's kept rows, worker by worker (canonical order), into its own shards."""
        nonlocal written
        writer = ShardWriter(
            out,
            ROW_SCHEMA,
            target_shard_bytes=shard_bytes,
            spec_hash=expected,
            shard_prefix=f"{FINAL_SHARD_PREFIX}s{source_index:05d}/",
            compression=spec.sharding.compression,
        )
        with writer:
            for reader, manifest, index in zip(readers, manifests, shard_index, strict=True):
                for shard_key in manifest.extra.get("source_shards", {}).get(str(source_index), []):
                    table = _filter_table(reader.read_shard(index[shard_key]), selection)
                    if table.num_rows:
                        writer.write(table)
                        with lock:
                            written += table.num_rows
                            bar.update(table.num_rows)
                            progress.update(step=written, total=final_rows, phase="merge")
            return writer.close(publish=False)

    # Sources are written in parallel (Parquet decoding/encoding and hashing release the GIL);
    # their shards are listed in source order, so the dataset does not depend on the threads.
    threads = max(1, min(len(spec.sources), merge_threads or os.cpu_count() or 1))
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="merge") as pool:
            parts = list(pool.map(write_source, range(len(spec.sources))))
        if written != final_rows:
            raise CurationError(
                f"merge wrote {written} rows, expected {final_rows}: partial output changed"
            )
        counts.update(Counter(key("final", "rows", r["source"]) for r in kept_rows))
        lap("write")
        report = build_report(config, counts, kept_rows, spec_hash=expected)
        report_keys = write_report(out.child(REPORT_PREFIX), report)
        manifest = Manifest.combine(
            [p for p in parts if p.shards] or parts[:1],
            spec_hash=expected,
            extra={
                "token_stats": token_stats(kept_rows),
                "counts": dict(sorted(counts.items())),
                "report": [f"{REPORT_PREFIX}/{k}" for k in report_keys],
                "workers": config.workers,
                "run": config.run.to_wire(),
            },
        )
        write_manifest(out, manifest)  # last: from now on the dataset exists
    except BaseException:
        progress.update(step=written, total=final_rows, phase="failed", force=True)
        raise
    finally:
        bar.close()
    progress.update(
        step=written,
        total=final_rows,
        phase="done",
        force=True,
        counts={
            "rows": manifest.num_rows,
            "rows_read": rows_read,
            "quarantined": sum(bad.values()),
        },
        manifest=out.uri_of(MANIFEST_KEY),
        report=out.uri_of(f"{REPORT_PREFIX}/{REPORT_MD}"),
    )
    progress.flush()
    if progress.tracker is not None:
        # Every count of the run (rows read, kept, removed by reason, teacher requests and
        # cache hits), the dataset by reference.
        progress.tracker.log_metrics({"rows": manifest.num_rows, "counts": dict(counts)})
        progress.tracker.set_tags(
            {
                "medsft.curation.manifestUri": out.uri_of(MANIFEST_KEY),
                "medsft.curation.reportUri": out.uri_of(f"{REPORT_PREFIX}/{REPORT_MD}"),
            }
        )
        progress.close_tracker()
    log.info(
        "dataset complete: %d rows in %d shards at %s",
        manifest.num_rows,
        len(manifest.shards),
        out.uri,
    )
    return manifest
