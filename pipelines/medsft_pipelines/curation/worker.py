"""One curation worker: a deterministic slice of every source through the per-sample steps.

Worker ``i`` of ``N`` takes rows ``[n*i/N, n*(i+1)/N)`` of every source, in two phases:

1. **scan** (no teacher): sources -> images -> decontam -> candidate question records. Each
   slice's scan is published under ``_scan/`` (a pure function of the spec and the slice:
   whoever computes it gets the same); a worker scans its own slice, then reads its peers'
   scans (waiting a bounded time for peers that are still reading, computing any slice whose
   worker has not started or does not finish in time).
2. **select** over all candidates (:mod:`.select`): dedup, class balance, caps, weights — the
   same answer in every worker. Then, for the selected questions of its own slice only:
   images -> teacher / imported traces -> verify -> format -> lengths -> rows (per source) +
   question records. The teacher never sees a question that cannot end up in the dataset.

The per-question work of both phases is a list of steps (:mod:`.steps`) built from the spec;
this module runs them over each batch and owns the rest: slices, peers' scans, writers.

The output is a small partial dataset under ``_work/<worker>/`` whose manifest is written last.
Re-running a worker is idempotent: a finished worker with the same spec hash returns at once;
otherwise its earlier partial output is unpublished and rewritten from scratch (the teacher
cache, at the run level, makes the rewrite, and any later generation that asks the same
requests, free of API cost).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from medsft_pipelines.specs.common import join_uri
from medsft_pipelines.specs.jobconfig import CurationJobConfig
from medsft_pipelines.storage import ObjectNotFound, ObjectStore, StorageSettings, open_store
from medsft_pipelines.storage.layout import MANIFEST_KEY
from medsft_pipelines.storage.progress import ProgressReporter
from medsft_pipelines.storage.shards import Manifest, ShardWriter, read_manifest, write_manifest

from .counts import key
from .decontam import BenchmarkIndex, BenchmarkText
from .errors import BadInput, CurationError
from .images import ImageProcessor, image_hashes
from .job import spec_hash
from .layout import QUARANTINE_PREFIX, STAGE, TEACHER_CACHE_PREFIX, WORK_PREFIX, worker_name
from .lengths import TokenCounter, load_token_counter
from .quarantine import Quarantine, check_error_budget
from .sample import QUESTION_SCHEMA, ROW_SCHEMA
from .select import Candidate, select_questions
from .sources import Fetcher, RawRow, SourceContext, SourceReader, worker_slice
from .steps import (
    Item,
    LoadSamples,
    Step,
    Tally,
    read_traces_file,
    run_steps,
    scan_steps,
    teacher_clients,
    trace_steps,
)
from .teacher import TeacherClient

log = logging.getLogger("medsft.curation.worker")

PARTIAL_SHARD_BYTES = 64 * 1024 * 1024
SCAN_PREFIX = "_scan"
PEER_POLL_S = 1.0


@dataclass
class SliceScan:
    """What reading one slice found: candidates, counts and quarantine entries (no traces)."""

    candidates: list[Candidate] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    quarantine: Quarantine = field(default_factory=Quarantine)

    def to_bytes(self, spec_hash: str) -> bytes:
        data = {
            "spec_hash": spec_hash,
            "candidates": [c.to_json() for c in self.candidates],
            "counts": dict(self.counts),
            "quarantine": self.quarantine.entries,
        }
        return gzip.compress(json.dumps(data, default=str).encode(), mtime=0)

    @classmethod
    def from_bytes(cls, raw: bytes) -> tuple[str, SliceScan]:
        data = json.loads(gzip.decompress(raw))
        scan = cls([Candidate.from_json(c) for c in data["candidates"]], Counter(data["counts"]))
        scan.quarantine.absorb(data["quarantine"])
        return data["spec_hash"], scan


def _batches(it: Iterable[tuple[int, RawRow]], size: int) -> Iterator[list[tuple[int, RawRow]]]:
    it = iter(it)
    while batch := list(islice(it, size)):
        yield batch


def benchmark_texts(
    config: CurationJobConfig, settings: StorageSettings, images: ImageProcessor
) -> list[BenchmarkText]:
    """Every item of every benchmark to protect, with its images' file and pixel hashes."""
    from medsft_pipelines.eval.registry import load_benchmark

    texts = []
    for bench in config.spec.decontamination.benchmarks:
        root = bench.uri or join_uri(config.storage.root_uri(), "benchmarks", bench.name)
        store: str | ObjectStore = open_store(root, settings) if root.startswith("s3://") else root
        # The whole split, not the eval's max_items subset: every item must stay unseen.
        loaded = load_benchmark(bench.name, store, bench.split, check_images=False)
        seen: dict[str, tuple[str, ...]] = {}
        for item in loaded.items:
            hashes: list[str] = []
            for ref in item.images:
                key_ = ref if isinstance(ref, str) else hashlib.sha256(ref).hexdigest()
                if key_ not in seen:
                    try:
                        seen[key_] = image_hashes(
                            loaded.image_bytes(ref),
                            max_pixels=images.max_pixels,
                            min_pixels=images.min_pixels,
                        )
                    except (BadInput, OSError, ObjectNotFound):
                        seen[key_] = ()  # unreadable: it cannot leak into training either
                hashes += seen[key_]
            text = "\n".join(p for p in (item.context, item.question, *item.options.values()) if p)
            texts.append(BenchmarkText(bench.name, text, item.question, tuple(hashes)))
    return texts


class Worker:
    """Runs one worker's slice; see the module docstring."""

    def __init__(
        self,
        config: CurationJobConfig,
        index: int,
        *,
        settings: StorageSettings | None = None,
        scratch: Path | None = None,
        token_counter: TokenCounter | None = None,
        batch_size: int = 256,
        show_progress: bool = True,
        peer_wait_s: float = 0.0,
    ) -> None:
        self.config = config
        self.spec = config.spec
        self.index = index
        self.name = worker_name(index, config.workers)
        self.settings = (
            settings if settings is not None else StorageSettings.for_spec(config.storage)
        )
        self.scratch = scratch or Path(tempfile.mkdtemp(prefix="medsft-curation-"))
        self.out = open_store(config.output_uri, self.settings)
        self.store = self.out.child(f"{WORK_PREFIX}/{self.name}")
        self.spec_hash = spec_hash(config)
        self.fetcher = Fetcher(self.scratch, self.settings)
        self.images = ImageProcessor(
            max_pixels=self.spec.images.max_pixels,
            min_pixels=self.spec.images.min_pixels,
            encoding=self.spec.images.encoding,
        )
        self.token_counter = token_counter
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.peer_wait_s = peer_wait_s
        """How long to wait for peers' scans before scanning their slices too (Indexed Job)."""
        self.counts: Counter[str] = Counter()
        self.cpu_seconds: defaultdict[str, float] = defaultdict(float)
        """CPU seconds per step (process time: every thread counts), for the report."""
        self.quarantine = Quarantine()
        self.bench: BenchmarkIndex | None = None
        self.teachers: dict[str, TeacherClient] = {}
        self.imported: dict[str, list[str]] | None = None
        self.loader = LoadSamples(
            self.fetcher,
            self.images,
            max_images=self.spec.images.max_images_per_sample,
            pixel_identity=self.spec.dedup.image_hash,
        )
        self.scan_steps: list[Step] = []
        self.trace_steps: list[Step] = []
        self._row_writers: dict[int, ShardWriter] = {}
        self._questions: ShardWriter | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def done(self) -> Manifest | None:
        """This worker's manifest if it already finished with the same spec hash."""
        if not self.store.exists(MANIFEST_KEY):
            return None
        manifest = read_manifest(self.store)
        return manifest if manifest.spec_hash == self.spec_hash else None

    def run(self) -> Manifest:
        """Process the slice (or return the finished output of an earlier run)."""
        finished = self.done()
        if finished is not None:
            log.info("%s already finished for this spec; nothing to do", self.name)
            return finished
        return asyncio.run(self._run())

    async def _run(self) -> Manifest:
        # Unpublish and clear an earlier attempt: nothing of it may be mistaken for output.
        self.store.delete(MANIFEST_KEY)
        self.store.delete_prefix("rows/")
        t = time.process_time()
        if self.token_counter is None:
            self.token_counter = load_token_counter(self.config, self.settings, self.scratch)
        self._setup_decontamination()
        self._setup_traces()
        self.scan_steps = scan_steps(self.bench, image_hash=self.spec.decontamination.image_hash)
        self.trace_steps = trace_steps(
            teachers=self.teachers,
            imported=self.imported,
            verification=self.spec.verification,
            fmt=self.spec.format,
            counter=self.token_counter,
            max_tokens=self.spec.lengths.max_tokens,
        )
        self._lap("setup", t)
        self._questions = ShardWriter(
            self.store.child("questions"),
            QUESTION_SCHEMA,
            target_shard_bytes=PARTIAL_SHARD_BYTES,
            spec_hash=self.spec_hash,
            overwrite=True,
        )
        readers = [SourceReader(src, self.fetcher) for src in self.spec.sources]
        slices = [self._slice(r) for r in readers]
        total = sum(stop - start for start, stop in slices)
        progress = ProgressReporter(
            open_store(self.config.effective_progress_uri(), self.settings),
            STAGE,
            worker=self.index,
        )
        bar = tqdm(
            total=total,
            desc=self.name,
            unit="row",
            mininterval=10,
            file=sys.stderr,
            disable=not self.show_progress,
        )
        done = 0
        try:
            own = await self._scan(readers, self.index)
            self.counts.update(own.counts)
            self.quarantine.absorb(own.quarantine.entries)
            self._check_budget()  # bad input fails the job before the teacher is paid
            progress.update(step=0, total=total, counts=self._progress_counts(), phase="select")
            t = time.process_time()
            chosen = await self._select(readers, own)
            self._lap("select", t)
            for source_index, (reader, (start, stop)) in enumerate(
                zip(readers, slices, strict=True)
            ):
                ctx = SourceContext(reader.source, source_index)
                for batch in _batches(reader.rows(start, stop), self.batch_size):
                    picked = [(i, raw) for i, raw in batch if (source_index, i) in chosen]
                    await self._process_batch(ctx, picked)
                    done += len(batch)
                    bar.update(len(batch))
                    progress.update(step=done, total=total, counts=self._progress_counts())
            self._check_budget()  # teacher failures count too
            self.cpu_seconds["finish"] -= time.process_time()  # _finish reports it
            manifest = self._finish()
            progress.update(
                step=done, total=total, counts=self._progress_counts(), force=True, phase="done"
            )
            return manifest
        except BaseException:
            self._abort()
            self._write_quarantine()
            progress.update(
                step=done, total=total, counts=self._progress_counts(), force=True, phase="failed"
            )
            raise
        finally:
            bar.close()
            progress.flush()
            for client in self.teachers.values():
                await client.close()

    def _slice(self, reader: SourceReader, index: int | None = None) -> tuple[int, int]:
        n = reader.num_rows()
        return worker_slice(n, self.index if index is None else index, self.config.workers)

    # -- scan and select ------------------------------------------------------------------------

    def _scan_key(self, index: int) -> str:
        return f"{SCAN_PREFIX}/{worker_name(index, self.config.workers)}.json.gz"

    def _published_scan(self, index: int) -> SliceScan | None:
        try:
            spec_hash, scan = SliceScan.from_bytes(self.out.get_bytes(self._scan_key(index)))
        except ObjectNotFound:
            return None
        return scan if spec_hash == self.spec_hash else None

    def _scan_started(self, index: int) -> bool:
        try:
            return self.out.get_bytes(self._scan_key(index) + ".started") == self.spec_hash.encode()
        except ObjectNotFound:
            return False

    async def _scan(self, readers: list[SourceReader], index: int) -> SliceScan:
        """Read slice ``index`` of every source into candidates (published for the peers)."""
        t = time.process_time()
        self.out.put_bytes(self._scan_key(index) + ".started", self.spec_hash.encode())
        scan = SliceScan()
        tally = Tally(scan.counts, scan.quarantine)
        for source_index, reader in enumerate(readers):
            ctx = SourceContext(reader.source, source_index)
            start, stop = self._slice(reader, index)
            for batch in _batches(reader.rows(start, stop), self.batch_size):
                scan.counts[key("read", reader.source.name)] += len(batch)
                items = await run_steps(self.scan_steps, self.loader(ctx, batch, tally), tally)
                for sample in (item.sample for item in items):
                    scan.candidates.append(
                        Candidate(
                            source_index=source_index,
                            row_index=sample.order[1],
                            question_id=sample.id,
                            source=sample.source,
                            answer=sample.answer,
                            question_hash=sample.question_hash,
                            prompt_text=sample.prompt_text(),
                            image_ids=tuple(self.loader.image_ids(sample)),
                        )
                    )
        self.out.put_bytes(self._scan_key(index), scan.to_bytes(self.spec_hash))
        self._lap("scan", t)
        return scan

    async def _select(self, readers: list[SourceReader], own: SliceScan) -> set[tuple[int, int]]:
        """The (source, row) of this slice's questions that go to the teacher; counts why the
        others do not (each worker counts its own slice, so the merge's sum is exact)."""
        scans = {self.index: own}
        deadline = time.monotonic() + self.peer_wait_s
        for index in range(self.config.workers):
            if index in scans:
                continue
            scan = self._published_scan(index)
            # Wait for a peer that is reading its slice; one that has not started (not
            # scheduled yet, or workers run one after another) is not waited for.
            while scan is None and self._scan_started(index) and time.monotonic() < deadline:
                time.sleep(PEER_POLL_S)
                scan = self._published_scan(index)
            scans[index] = scan if scan is not None else await self._scan(readers, index)
        candidates = [c for i in sorted(scans) for c in scans[i].candidates]
        verdict = select_questions(self.spec, candidates)
        samples_per_question = {
            modality: teacher.spec.samples_per_question
            for modality, teacher in self.teachers.items()
        }
        modality = {i: s.modality for i, s in enumerate(self.spec.sources)}
        chosen: set[tuple[int, int]] = set()
        for c in own.candidates:
            reason = verdict[c.order]
            if reason is None:
                chosen.add(c.order)
                continue
            self.counts[key("removed", reason, c.source)] += 1
            if self.teachers:
                spq = samples_per_question.get(
                    modality[c.source_index]
                ) or samples_per_question.get("image", 0)
                self.counts[key("teacher_saved", "questions", c.source)] += 1
                self.counts[key("teacher_saved", "samples", c.source)] += spq
        return chosen

    def _setup_decontamination(self) -> None:
        deco = self.spec.decontamination
        if not deco.enabled or not deco.benchmarks:
            return
        texts = benchmark_texts(self.config, self.settings, self.images)
        self.bench = BenchmarkIndex.build(
            texts, ngram=deco.ngram, num_perm=self.spec.dedup.num_perm
        )
        log.info("%s: decontaminating against %d benchmark items", self.name, len(texts))

    def _setup_traces(self) -> None:
        if self.spec.teachers is not None:
            self.teachers = teacher_clients(self.spec, self._teacher_cache())
        elif self.spec.traces_from is not None and self.spec.traces_from.uri:
            self.imported = read_traces_file(self.spec.traces_from, self.fetcher)

    def _teacher_cache(self) -> ObjectStore:
        """The run-level response cache the control plane named, else one next to the output."""
        uri = self.config.teacher_cache_uri
        return open_store(uri, self.settings) if uri else self.out.child(TEACHER_CACHE_PREFIX)

    # -- one batch ----------------------------------------------------------------------------

    async def _process_batch(self, ctx: SourceContext, batch: list[tuple[int, RawRow]]) -> None:
        """Selected rows of one batch: re-read (the scan counted them), then teacher onwards."""
        t = time.process_time()
        items = self.loader(ctx, batch, Tally())  # the scan already counted and quarantined these
        t = self._lap(LoadSamples.cpu, t)
        tally = Tally(self.counts, self.quarantine)
        for step in self.trace_steps:
            items = await step(items, tally)
            t = self._lap(step.cpu, t)
        self._write(ctx.index, items)
        self._lap("write", t)

    def _lap(self, step: str, start: float) -> float:
        now = time.process_time()
        self.cpu_seconds[step] += now - start
        return now

    def _write(self, source_index: int, items: list[Item]) -> None:
        assert self._questions is not None
        records = []
        flat = []
        for sample, sample_rows in ((item.sample, item.rows) for item in items):
            records.append(
                {
                    "question_id": sample.id,
                    "source": sample.source,
                    "source_index": sample.order[0],
                    "row_index": sample.order[1],
                    "task_type": sample.task_type,
                    "answer": sample.answer,
                    "question_hash": sample.question_hash,
                    "prompt_text": sample.prompt_text(),
                    "image_ids": self.loader.image_ids(sample),
                    "trace_index": [r["trace_index"] for r in sample_rows],
                    "n_tokens": [r["n_tokens"] for r in sample_rows],
                    "trace_tokens": [r["trace_tokens"] for r in sample_rows],
                }
            )
            flat.extend(sample_rows)
            self.counts[key("rows", sample.source)] += len(sample_rows)
        # Columnar conversion: several times cheaper than a list of row dicts.
        if records:
            self._questions.write(_table(records, QUESTION_SCHEMA))
        if flat:
            self._row_writer(source_index).write(_table(flat, ROW_SCHEMA))

    def _row_writer(self, source_index: int) -> ShardWriter:
        if source_index not in self._row_writers:
            self._row_writers[source_index] = ShardWriter(
                self.store,
                ROW_SCHEMA,
                target_shard_bytes=PARTIAL_SHARD_BYTES,
                spec_hash=self.spec_hash,
                shard_prefix=f"rows/s{source_index:05d}/",
                compression="zstd",
                overwrite=True,
            )
        return self._row_writers[source_index]

    # -- finishing ------------------------------------------------------------------------------

    def _progress_counts(self) -> dict[str, int]:
        c = self.counts
        teachers = [client.stats for client in self.teachers.values()]
        return {
            "rows_read": sum(v for k, v in c.items() if k.startswith("read/")),
            "quarantined": self.quarantine.bad_rows,
            "rows_written": sum(v for k, v in c.items() if k.startswith("rows/")),
            # The status shows what the teacher costs while the job runs, not only at the end.
            "teacher_attempts": sum(t.attempts for t in teachers),
            "teacher_cache_hits": sum(t.cache_hits for t in teachers),
            "teacher_cache_misses": sum(t.cache_misses for t in teachers),
        }

    def _rows_read(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("read/"))

    def _check_budget(self) -> None:
        try:
            check_error_budget(
                self.quarantine.rows,
                self._rows_read(),
                self.spec.error_budget.max_fraction,
                where=self.name,
                quarantine_uri=self.out.uri_of(f"{QUARANTINE_PREFIX}/{self.name}.jsonl"),
            )
        except CurationError:
            log.error("%s: error budget exceeded", self.name)
            raise

    def _write_quarantine(self) -> None:
        self.quarantine.write(self.out, f"{QUARANTINE_PREFIX}/{self.name}.jsonl")

    def _abort(self) -> None:
        for writer in [*self._row_writers.values(), self._questions]:
            if writer is not None:
                writer.abort()

    def _finish(self) -> Manifest:
        assert self._questions is not None
        self._write_quarantine()
        self._questions.close()
        parts: dict[int, Manifest] = {
            i: w.close(publish=False) for i, w in sorted(self._row_writers.items())
        }
        teacher_stats = {
            key("teacher", c.name, stat): value
            for c in self.teachers.values()
            for stat, value in c.stats.counts().items()
        }
        self.counts.update(teacher_stats)
        self.counts["images/decoded"] += self.images.decoded
        self.cpu_seconds["finish"] += time.process_time()
        self.counts.update({key("cpu_ms", k): round(v * 1000) for k, v in self.cpu_seconds.items()})
        self.counts.update(
            {key("quarantine_trace", r): n for r, n in self.quarantine.traces.items()}
        )
        manifest = Manifest.combine(
            list(parts.values()),
            spec_hash=self.spec_hash,
            extra={
                "worker": self.index,
                "workers": self.config.workers,
                "counts": dict(sorted(self.counts.items())),
                "source_shards": {str(i): [s.key for s in m.shards] for i, m in parts.items()},
            },
        )
        write_manifest(self.store, manifest)  # last: the worker is done
        log.info(
            "%s done: %d rows read, %d rows written, %d quarantined",
            self.name,
            self._rows_read(),
            manifest.num_rows,
            self.quarantine.bad_rows,
        )
        return manifest


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pydict(
        {name: [r[name] for r in rows] for name in schema.names}, schema=schema
    )


def run_worker(
    config: CurationJobConfig,
    index: int,
    *,
    settings: StorageSettings | None = None,
    scratch: Path | None = None,
    token_counter: TokenCounter | None = None,
    show_progress: bool = True,
    peer_wait_s: float = 0.0,
) -> Manifest:
    """Run worker ``index`` of ``config.workers``; returns its partial manifest."""
    return Worker(
        config,
        index,
        settings=settings,
        scratch=scratch,
        token_counter=token_counter,
        show_progress=show_progress,
        peer_wait_s=peer_wait_s,
    ).run()


__all__ = ["Worker", "benchmark_texts", "run_worker"]
