"""progress.json and metrics on both backends, as jobs write them and the operator reads them."""

from __future__ import annotations

import pytest

from medsft_pipelines.storage import ObjectStore
from medsft_pipelines.storage.progress import ProgressReporter, read_metrics, read_progress


class Clock:
    """A controllable clock: ETA and throttling are functions of time."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_progress_with_eta_and_throttling(store: ObjectStore) -> None:
    clock = Clock()
    assert read_progress(store) is None
    reporter = ProgressReporter(store, "sft", min_interval_s=5, clock=clock)
    reporter.update(step=0, total=1000, counts={"samples": 0}, epoch=0)
    first = read_progress(store)
    assert first is not None
    assert first["stage"] == "sft"
    assert (first["step"], first["total"], first["epoch"]) == (0, 1000, 0)
    clock.now += 2
    reporter.update(step=20, total=1000, counts={"samples": 640})
    assert read_progress(store)["step"] == 0  # throttled: within min_interval_s
    clock.now += 8
    reporter.update(step=100, total=1000, counts={"samples": 3200})
    progress = read_progress(store)
    assert progress["step"] == 100
    assert progress["fraction"] == pytest.approx(0.1)
    assert progress["steps_per_second"] == pytest.approx(10.0)
    assert progress["eta_seconds"] == pytest.approx(90.0)
    assert progress["counts"] == {"samples": 3200}
    assert progress["updated_at_unix"] == clock.now
    clock.now += 1
    reporter.update(step=1000, total=1000)  # the last step is always written
    assert read_progress(store)["eta_seconds"] == 0


def test_flush_writes_the_throttled_state(store: ObjectStore) -> None:
    clock = Clock()
    with ProgressReporter(store, "eval", min_interval_s=60, clock=clock) as reporter:
        reporter.update(step=1, total=10)
        reporter.update(step=2, total=10)
        assert read_progress(store)["step"] == 1
    assert read_progress(store)["step"] == 2


def test_metrics_are_segmented_ordered_and_survive_restarts(store: ObjectStore) -> None:
    clock = Clock()
    reporter = ProgressReporter(store, "sft", metrics_flush_s=10, segment_lines=4, clock=clock)
    for step in range(10):
        clock.now += 3
        reporter.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    reporter.flush()
    assert [r["step"] for r in read_metrics(store)] == list(range(10))
    assert len(store.list("metrics/")) >= 3  # bounded segments, not one ever-growing object
    # A restarted job (resume) appends after what the earlier attempt wrote.
    restarted = ProgressReporter(store, "sft", clock=clock)
    restarted.log_metrics({"loss": 0.01}, step=10)
    restarted.flush()
    records = read_metrics(store)
    assert [r["step"] for r in records] == list(range(11))
    assert records[0]["loss"] == 1.0


def test_worker_progress_is_aggregated(store: ObjectStore) -> None:
    clock = Clock()
    for worker, (step, total) in enumerate([(10, 100), (50, 100), (100, 100)]):
        reporter = ProgressReporter(store, "curation", worker=worker, clock=clock)
        reporter.update(step=0, total=total)
        clock.now += 10
        reporter.update(step=step, total=total, counts={"kept": step // 2}, force=True)
        reporter.log_metrics({"kept": step // 2})
        reporter.flush()
    progress = read_progress(store)
    assert progress["workers"] == 3
    assert (progress["step"], progress["total"]) == (160, 300)
    assert progress["counts"] == {"kept": 80}
    assert progress["eta_seconds"] == pytest.approx(90.0)  # the slowest worker: 90 left at 1/s
    assert [r["kept"] for r in read_metrics(store, worker=1)] == [25]
    assert read_metrics(store) == []
