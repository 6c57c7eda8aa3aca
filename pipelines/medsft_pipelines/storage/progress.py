"""Progress and metrics of a running stage, written by the job, read by the operator.

Layout under a stage root::

    progress.json                      latest progress of the job (single writer)
    progress/worker-00003.json         per-worker progress (e.g. Indexed curation Jobs)
    metrics/main-00000.jsonl           metrics, one JSON object a line, in segments
    metrics/main-00001.jsonl           (a new segment every N lines, and per job restart)

Object stores cannot append, so ``metrics.jsonl`` is kept as segments: a flush rewrites only the
current, bounded segment; :func:`read_metrics` concatenates them. Writes are throttled
(``min_interval_s``) so a training loop can call :meth:`ProgressReporter.update` every step.
Reading is one small GET, cheap enough for the operator's timers. Never put sample text here.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

from .base import ObjectStore
from .errors import ObjectNotFound

PROGRESS_KEY = "progress.json"
WORKER_PROGRESS_PREFIX = "progress/worker-"
METRICS_PREFIX = "metrics/"
SEGMENT = re.compile(r"metrics/(?P<name>[a-z0-9-]+)-(?P<index>\d{5})\.jsonl")


class Tracker(Protocol):
    """Where numbers are also sent (``medsft_pipelines.tracking.MLflowTracker``): calls that
    only queue, never wait for the network."""

    def log_metrics(self, values: Mapping[str, Any], step: int = 0) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def close(self, timeout_s: float = 15.0) -> dict[str, Any]: ...


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def _stream_name(worker: int | None) -> str:
    return "main" if worker is None else f"worker-{worker:05d}"


class ProgressReporter:
    """Writes ``progress.json`` and metrics segments for one stage (or one worker of it)."""

    def __init__(
        self,
        store: ObjectStore,
        stage: str,
        *,
        worker: int | None = None,
        min_interval_s: float = 5.0,
        metrics_flush_s: float = 10.0,
        segment_lines: int = 10_000,
        clock: Callable[[], float] = time.time,
        tracker: Tracker | None = None,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.stage = stage
        self.worker = worker
        self.min_interval_s = min_interval_s
        self.metrics_flush_s = metrics_flush_s
        self.segment_lines = segment_lines
        self._clock = clock
        self._lock = threading.Lock()
        self._progress_key = (
            PROGRESS_KEY if worker is None else f"{WORKER_PROGRESS_PREFIX}{worker:05d}.json"
        )
        self._started = clock()
        self._first: tuple[float, int] | None = None  # (time, step) of the first update
        self._state: dict[str, Any] | None = None
        self._last_write = float("-inf")
        self._dirty = False
        self._name = _stream_name(worker)
        # A restarted job continues after the segments its earlier attempts wrote.
        existing = [int(m["index"]) for m in _segments(store, self._name)]
        self._segment = max(existing) + 1 if existing else 0
        self._lines: list[str] = []
        self._last_metrics_flush = clock()
        self._metrics_dirty = False

    def update(
        self,
        *,
        step: int,
        total: int | None = None,
        counts: Mapping[str, int | float] | None = None,
        force: bool = False,
        **extra: Any,
    ) -> None:
        """Record progress; written at most every ``min_interval_s`` unless ``force`` or the
        step reaches ``total``. ``extra`` keys land in the JSON as they are."""
        now = self._clock()
        with self._lock:
            if self._first is None:
                self._first = (now, step)
            first_time, first_step = self._first
            rate = (step - first_step) / (now - first_time) if now > first_time else None
            eta = None
            if total is not None and rate:
                eta = max(0.0, (total - step) / rate)
            self._state = {
                **extra,
                "stage": self.stage,
                "worker": self.worker,
                "step": step,
                "total": total,
                "fraction": (step / total) if total else None,
                "steps_per_second": rate,
                "eta_seconds": eta,
                "counts": dict(counts or {}),
                "started_at": _iso(self._started),
                "updated_at": _iso(now),
                "updated_at_unix": now,
            }
            self._dirty = True
            due = force or now - self._last_write >= self.min_interval_s
            if due or (total is not None and step >= total):
                self._write_progress(now)

    def _write_progress(self, now: float) -> None:
        assert self._state is not None
        if self.tracker is not None:
            # The operator learns from here whether tracking is degraded (pods have no
            # Kubernetes credentials); counts reach the tracker as often as this file.
            self._state["tracking"] = self.tracker.state()
            self.tracker.log_metrics(self._state["counts"], step=int(self._state["step"]))
        self.store.put_json(self._progress_key, self._state)
        self._last_write = now
        self._dirty = False

    def log_metrics(self, metrics: Mapping[str, Any], *, step: int | None = None) -> None:
        """Append one metrics record (buffered; flushed every ``metrics_flush_s``)."""
        now = self._clock()
        record = {"time": now, **({"step": step} if step is not None else {}), **metrics}
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step=step or 0)  # a queue append, never I/O
        with self._lock:
            self._lines.append(json.dumps(record, sort_keys=True, default=str))
            self._metrics_dirty = True
            if now - self._last_metrics_flush >= self.metrics_flush_s:
                self._flush_metrics(now)

    def _flush_metrics(self, now: float) -> None:
        if self._metrics_dirty:
            key = f"{METRICS_PREFIX}{self._name}-{self._segment:05d}.jsonl"
            self.store.put_bytes(key, ("\n".join(self._lines) + "\n").encode())
            self._metrics_dirty = False
            if len(self._lines) >= self.segment_lines:
                self._segment += 1
                self._lines = []
        self._last_metrics_flush = now

    def flush(self) -> None:
        """Write whatever is buffered now."""
        now = self._clock()
        with self._lock:
            if self._dirty:
                self._write_progress(now)
            self._flush_metrics(now)

    close = flush

    def close_tracker(self, timeout_s: float = 15.0) -> None:
        """Give the tracker ``timeout_s`` to send what is queued, then record its final state
        in ``progress.json`` (a stage calls this once, when its work is done)."""
        if self.tracker is None:
            return
        self.tracker.close(timeout_s)
        with self._lock:
            if self._state is not None:
                self._write_progress(self._clock())

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.flush()


def _segments(store: ObjectStore, name: str) -> list[re.Match[str]]:
    matches = (SEGMENT.fullmatch(k) for k in store.list(f"{METRICS_PREFIX}{name}-"))
    return sorted((m for m in matches if m and m["name"] == name), key=lambda m: int(m["index"]))


def read_progress(store: ObjectStore) -> dict[str, Any] | None:
    """The stage's ``progress.json``; if only per-worker files exist, their sum (``step``,
    ``total``, ``counts``; ``workers`` says how many); None when nothing was written yet."""
    try:
        return dict(store.get_json(PROGRESS_KEY))
    except ObjectNotFound:
        pass
    workers = read_worker_progress(store)
    return aggregate_progress(workers) if workers else None


def read_worker_progress(store: ObjectStore) -> list[dict[str, Any]]:
    """Every worker's progress file, by worker index."""
    found = []
    for key in store.list(WORKER_PROGRESS_PREFIX):
        try:
            found.append(dict(store.get_json(key)))
        except ObjectNotFound:
            continue  # removed between list and get
    return found


def aggregate_progress(workers: list[dict[str, Any]]) -> dict[str, Any]:
    """One progress dict summing several workers' (ETA: the slowest worker's)."""
    totals = [w.get("total") for w in workers]
    total = sum(t for t in totals if t is not None) if None not in totals else None
    step = sum(int(w.get("step") or 0) for w in workers)
    counts: dict[str, float] = {}
    for w in workers:
        for name, value in (w.get("counts") or {}).items():
            counts[name] = counts.get(name, 0) + value
    etas = [w.get("eta_seconds") for w in workers]
    return {
        "stage": workers[0].get("stage"),
        "workers": len(workers),
        "step": step,
        "total": total,
        "fraction": (step / total) if total else None,
        "eta_seconds": max(e for e in etas if e is not None) if any(etas) else None,
        "counts": counts,
        "updated_at": max(str(w.get("updated_at")) for w in workers),
        "updated_at_unix": max(float(w.get("updated_at_unix") or 0) for w in workers),
    }


def read_metrics(store: ObjectStore, worker: int | None = None) -> list[dict[str, Any]]:
    """All metrics records of the job (or of one worker), in the order they were logged."""
    records: list[dict[str, Any]] = []
    for match in _segments(store, _stream_name(worker)):
        try:
            data = store.get_bytes(match.group(0)).decode()
        except ObjectNotFound:
            continue
        records.extend(json.loads(line) for line in data.splitlines() if line.strip())
    return records
