"""Checkpoints in object storage: parallel upload, completion marker last, retention.

Layout under a checkpoint root::

    step-000000100/<files of the checkpoint directory, same relative paths>
    step-000000100/COMPLETE     written LAST: JSON with every file's size, and job metadata

A checkpoint is complete, and found by :meth:`CheckpointStore.latest`, only once its marker
exists; an upload that dies halfway leaves a step folder without a marker, which nothing trusts
and :meth:`CheckpointStore.prune` removes later. Deletion removes the marker first, so a
half-deleted checkpoint is never taken for a complete one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .base import ObjectStore
from .errors import CheckpointNotComplete, ObjectNotFound, StorageError

log = logging.getLogger("medsft.storage")

COMPLETE_MARKER = "COMPLETE"
STEP_FOLDER = re.compile(r"step-(\d{9})/")
NODE_FOLDER = re.compile(r"node-(\d{3,})/")  # one node's root under a job's checkpoints/
SHAPE_KEY = "shape"  # in a marker's metadata: the shape of the job that wrote it


def step_prefix(step: int) -> str:
    """The folder of ``step`` under a checkpoint root (zero-padded: lexical order = numeric)."""
    if step < 0:
        raise ValueError("step must be >= 0")
    return f"step-{step:09d}/"


class CheckpointStore:
    """Checkpoints of one training run under ``store``."""

    def __init__(self, store: ObjectStore, *, parallelism: int = 4) -> None:
        self.store = store
        self.parallelism = parallelism

    def upload(
        self, local_dir: str | Path, step: int, metadata: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Upload every file under ``local_dir`` as checkpoint ``step`` (files in parallel, each
        a parallel multipart upload), then write the completion marker. Returns the marker."""
        root = Path(local_dir)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"checkpoint directory {root} has no files")
        prefix = step_prefix(step)
        # Re-uploading a step (a retried save): unpublish the old one before touching its files.
        self.store.delete(prefix + COMPLETE_MARKER)
        relative = {p: p.relative_to(root).as_posix() for p in files}
        if COMPLETE_MARKER in relative.values():
            raise ValueError(f"a checkpoint file may not be named {COMPLETE_MARKER}")
        sizes = {relative[p]: p.stat().st_size for p in files}

        def put(path: Path) -> None:
            self.store.upload_file(path, prefix + relative[path])

        with ThreadPoolExecutor(self.parallelism, thread_name_prefix="ckpt-upload") as pool:
            list(pool.map(put, files))
        marker = {
            "step": step,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": sizes,
            "num_bytes": sum(sizes.values()),
            "metadata": dict(metadata or {}),
        }
        self.store.put_json(prefix + COMPLETE_MARKER, marker)
        log.info("checkpoint step %d uploaded to %s", step, self.store.uri_of(prefix))
        return marker

    def _step_folders(self) -> list[int]:
        steps = []
        for entry in self.store.list("step-", recursive=False):
            match = STEP_FOLDER.fullmatch(entry)
            if match:
                steps.append(int(match.group(1)))
        return sorted(steps)

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return [s for s in self._step_folders() if self.is_complete(s)]

    def is_complete(self, step: int) -> bool:
        """Whether checkpoint ``step`` has its completion marker."""
        return self.store.exists(step_prefix(step) + COMPLETE_MARKER)

    def latest(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        for step in reversed(self._step_folders()):
            if self.is_complete(step):
                return step
        return None

    def info(self, step: int) -> dict[str, Any]:
        """The completion marker of ``step`` (files, sizes, metadata)."""
        try:
            return dict(self.store.get_json(step_prefix(step) + COMPLETE_MARKER))
        except ObjectNotFound:
            raise CheckpointNotComplete(
                f"checkpoint {self.store.uri_of(step_prefix(step))} is not complete"
            ) from None

    def download(self, step: int, local_dir: str | Path) -> Path:
        """Download complete checkpoint ``step`` into ``local_dir`` (files in parallel, large
        files as parallel ranges); checks every file's size against the marker."""
        marker = self.info(step)
        prefix = step_prefix(step)
        root = Path(local_dir)
        files: dict[str, int] = marker["files"]

        def get(name: str) -> None:
            target = root / name
            self.store.download_file(prefix + name, target)
            if target.stat().st_size != files[name]:
                raise StorageError(
                    f"checkpoint file {self.store.uri_of(prefix + name)} is "
                    f"{target.stat().st_size} bytes, its marker says {files[name]}"
                )

        with ThreadPoolExecutor(self.parallelism, thread_name_prefix="ckpt-download") as pool:
            list(pool.map(get, sorted(files)))
        return root

    def delete(self, step: int) -> None:
        """Delete checkpoint ``step``: the marker first, then its files."""
        prefix = step_prefix(step)
        self.store.delete(prefix + COMPLETE_MARKER)
        self.store.delete_prefix(prefix)

    def prune(
        self, keep_last: int, protect: Iterable[int] = (), keep_from: int | None = None
    ) -> list[int]:
        """Keep the newest ``keep_last`` complete checkpoints, every step in ``protect`` (the
        one a job resumed from) and, with ``keep_from``, every complete step at or after it;
        delete the other complete ones and the leftovers of failed uploads older than the
        newest complete one. Returns the deleted steps."""
        if keep_last < 0:
            raise ValueError("keep_last must be >= 0")
        protected = set(protect)
        folders = self._step_folders()
        complete = [s for s in folders if self.is_complete(s)]
        keep = set(complete[len(complete) - keep_last :]) if keep_last else set()
        if keep_from is not None:
            keep |= {s for s in complete if s >= keep_from}
        newest = complete[-1] if complete else None
        doomed = [
            s
            for s in folders
            if s not in keep
            and s not in protected
            # An incomplete folder newer than the newest complete one may be an upload in flight.
            and (s in complete or (newest is not None and s < newest))
        ]
        for step in doomed:
            self.delete(step)
        return doomed


def newest_common_step(stores: Sequence[CheckpointStore]) -> int | None:
    """The newest step complete in every one of ``stores`` (one per node of a job): the only
    kind of step a multi-node job can resume from. The trainer resumes from it and keeps it
    whatever keepLast says; the operator reports it as the latest checkpoint."""
    if len(stores) == 1:
        return stores[0].latest()  # reads only the newest folders
    common = set(stores[0].steps())
    for store in stores[1:]:
        common &= set(store.steps())
    return max(common) if common else None


def prune_node(
    stores: Sequence[CheckpointStore], node: int, keep_last: int, protect: Iterable[int] = ()
) -> list[int]:
    """Prune node ``node``'s checkpoints (``stores[node]``; one store per node of a job) below
    the newest step complete on every node, never at or above it.

    Nodes upload and prune at their own pace, and each reads the others' folders at a moment
    of its own. Keeping only "the newest common step I saw" is not enough: node A, seeing
    common step 100, would delete its 200 while node B, having just completed 200 and seeing
    it common, deletes 100 — no step left on both. A node that deletes only below the common
    step it saw keeps the invariant: the largest common step any node has acted on was
    complete everywhere when it was read, and no node deletes it, since that needs a larger
    common step. Until some step is common nothing complete is deleted (keepLast is exceeded
    by at most the steps the slowest node has not completed yet)."""
    common = newest_common_step(stores)
    return stores[node].prune(
        keep_last, protect=protect, keep_from=common if common is not None else 0
    )


@dataclass(frozen=True)
class Shape:
    """How a multi-node job is cut: its checkpoints hold one folder per node, each with the
    DeepSpeed partitions and data positions of that node's ranks, so they resume only a job
    of the same shape."""

    nodes: int
    per_node: int | None
    """Processes (GPUs) per node; None for checkpoints from before the shape was recorded."""

    def __str__(self) -> str:
        if self.per_node is None:
            return f"{self.nodes} node(s)"
        world = self.nodes * self.per_node
        return f"{self.nodes} node(s) x {self.per_node} process(es) (world size {world})"

    def record(self) -> dict[str, Any]:
        """The marker metadata that records this shape."""
        return {SHAPE_KEY: {"nodes": self.nodes, "per_node": self.per_node}}


def written_shape(root: ObjectStore) -> Shape | None:
    """The shape of the job whose checkpoints are under ``root`` (a job's ``checkpoints/``,
    holding ``node-NNN/`` folders): as its newest marker records it, else as many nodes as
    there are node folders with a complete checkpoint. None without complete checkpoints."""
    folders = (NODE_FOLDER.fullmatch(entry) for entry in root.list("node-", recursive=False))
    stores = {int(m.group(1)): CheckpointStore(root.child(m.group(0))) for m in folders if m}
    latest = {node: step for node, store in stores.items() if (step := store.latest()) is not None}
    if not latest:
        return None
    first = min(latest)
    recorded = (stores[first].info(latest[first]).get("metadata") or {}).get(SHAPE_KEY)
    if isinstance(recorded, dict) and isinstance(recorded.get("nodes"), int):
        per_node = recorded.get("per_node")
        return Shape(recorded["nodes"], per_node if isinstance(per_node, int) else None)
    return Shape(max(latest) + 1, None)


def shape_conflict(root: ObjectStore, mine: Shape) -> str | None:
    """Why a job of shape ``mine`` cannot resume the checkpoints under ``root``, or None.

    A job of another shape would find no step complete on all of its nodes and silently
    train from step 0 (more nodes), or load a fraction of the partitions and the data
    positions of another split (fewer): it must refuse instead."""
    written = written_shape(root)
    if written is None:
        return None
    if written.per_node is None:
        # Not recorded (older checkpoints): only node folders beyond ours prove another
        # shape; fewer may be a first step not every node completed before a crash.
        if written.nodes <= mine.nodes:
            return None
    elif written == mine:
        return None
    return (
        f"the checkpoints under {root.uri} were written by a job of {written}; this job runs "
        f"{mine} and cannot resume them. Run it with the shape that wrote them, or train into "
        "a new output location"
    )
