"""Checkpoints: DeepSpeed state + each rank's trainer state, to storage, resumable exactly.

Every rank calls :meth:`Checkpoints.save` (DeepSpeed's save is collective). Each node's
local rank 0 uploads that node's files in a background thread (training goes on) to its
own folder, ``checkpoints/node-NNN/step-…`` (see :mod:`.layout`), with the storage layer's
completion marker last. A step counts as complete when all nodes' markers exist, and a node's
pruning deletes only steps older than the newest such step (another node may still be
uploading a newer one; see :func:`~medsft_pipelines.storage.checkpoints.prune_node`). On resume
each node downloads node 0's files (the model states DeepSpeed writes on rank 0) and its
own (its ranks' optimizer partitions and trainer states).
"""

from __future__ import annotations

import logging
import random
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from medsft_pipelines.sft.data import DataPosition, DataStats
from medsft_pipelines.sft.layout import CHECKPOINTS, node_checkpoints
from medsft_pipelines.storage import ObjectStore
from medsft_pipelines.storage.checkpoints import (
    CheckpointStore,
    Shape,
    newest_common_step,
    prune_node,
    shape_conflict,
)

log = logging.getLogger("medsft.sft")

TRAINER_STATE_DIR = "trainer_state"


@dataclass(frozen=True)
class Topology:
    """Where this process sits in the job (from torchrun's environment)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def node(self) -> int:
        return self.rank // self.local_world_size

    @property
    def nodes(self) -> int:
        return self.world_size // self.local_world_size


@dataclass
class TrainState:
    """Everything besides model/optimizer/scheduler needed to continue exactly."""

    step: int = 0
    total_steps: int = 0
    position: DataPosition = field(default_factory=DataPosition)
    """Where the job's next step comes from (the same on every rank)."""
    stats: DataStats = field(default_factory=DataStats)
    """Encoder counters as of the start of the current chunk (the chunk is re-encoded on resume)."""
    resumed_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["position"] = asdict(self.position)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(
            step=data["step"],
            total_steps=data["total_steps"],
            position=DataPosition(**data["position"]),
            stats=DataStats(**data["stats"]),
            resumed_from=data.get("resumed_from"),
        )


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class TopologyChanged(ValueError):
    """The output's checkpoints were written by a job with other nodes or processes per node."""


def tag(step: int) -> str:
    return f"step-{step:09d}"


class Checkpoints:
    """Save/resume of one training job against ``output`` (the job's output store)."""

    def __init__(self, output: ObjectStore, local_root: Path, topo: Topology, keep_last: int):
        self.topo = topo
        self.keep_last = keep_last
        self.local_root = local_root
        self.root = output.child(CHECKPOINTS)
        self.stores = [
            CheckpointStore(output.child(node_checkpoints(n))) for n in range(topo.nodes)
        ]
        self.mine = self.stores[topo.node]
        self.protect: set[int] = set()
        self._uploader = ThreadPoolExecutor(1, thread_name_prefix="ckpt-upload")
        self._pending: Future[None] | None = None

    # -- finding --------------------------------------------------------------------------

    def newest_common(self) -> int | None:
        """Newest step complete on every node: the only kind of step a job can resume from."""
        return newest_common_step(self.stores)

    @property
    def shape(self) -> Shape:
        return Shape(self.topo.nodes, self.topo.local_world_size)

    def latest(self) -> int | None:
        """:meth:`newest_common`, decided by rank 0, the same for all ranks.

        Raises :class:`TopologyChanged` on every rank when the checkpoints were written by a job
        of another shape: resuming them would silently start over (or load another split)."""
        found: list[tuple[int | None, str | None]] = [(None, None)]
        if self.topo.rank == 0:
            conflict = shape_conflict(self.root, self.shape)
            found = [(None if conflict else self.newest_common(), conflict)]
        dist.broadcast_object_list(found, src=0)
        step, conflict = found[0]
        if conflict is not None:
            raise TopologyChanged(conflict)
        return step

    # -- saving ---------------------------------------------------------------------------

    def save(self, engine: Any, state: TrainState, metadata: dict[str, Any]) -> None:
        """Write checkpoint ``state.step`` locally (all ranks), then upload it asynchronously."""
        name = tag(state.step)
        engine.save_checkpoint(str(self.local_root), tag=name, save_latest=False)
        rank_file = self.local_root / name / TRAINER_STATE_DIR / f"rank-{self.topo.rank:05d}.pt"
        rank_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": state.to_dict(), "rng": rng_state()}, rank_file)
        dist.barrier()  # every rank's files are on the node's disk
        if self.topo.local_rank == 0:
            self.wait()  # at most one upload in flight: bounded local disk
            metadata = {**metadata, **self.shape.record()}
            self._pending = self._uploader.submit(self._upload, state.step, metadata)

    def _upload(self, step: int, metadata: dict[str, Any]) -> None:
        folder = self.local_root / tag(step)
        self.mine.upload(folder, step, metadata=metadata)
        # Nodes upload at their own pace: this node's newest steps may not be complete on
        # the others yet. Whatever keepLast says, nothing at or after the newest step
        # complete on every node goes, or a crash now could leave no step to resume from.
        prune_node(self.stores, self.topo.node, self.keep_last, protect=self.protect | {step})
        # Older local copies are no longer needed once a newer one is safely in storage.
        for old in self.local_root.glob("step-*"):
            if old.name < folder.name:
                shutil.rmtree(old, ignore_errors=True)

    def wait(self) -> None:
        """Block until the upload in flight (if any) finished; re-raise its error."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        self.wait()
        self._uploader.shutdown()
        dist.barrier()  # no rank leaves before every node's upload is complete

    # -- resuming -------------------------------------------------------------------------

    def load(self, engine: Any, step: int) -> TrainState:
        """Restore engine, scheduler, RNG and this rank's data position from ``step``."""
        resume_root = self.local_root / "resume"
        folder = resume_root / tag(step)
        if self.topo.local_rank == 0:
            shutil.rmtree(resume_root, ignore_errors=True)
            # Node 0's folder holds the model states every rank loads; ours holds our ranks'.
            for store in {id(s): s for s in (self.stores[0], self.mine)}.values():
                store.download(step, folder)
        dist.barrier()
        engine.load_checkpoint(
            str(resume_root),
            tag=tag(step),
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        saved = torch.load(
            folder / TRAINER_STATE_DIR / f"rank-{self.topo.rank:05d}.pt", weights_only=False
        )
        set_rng_state(saved["rng"])
        state = TrainState.from_dict(saved["state"])
        state.resumed_from = step
        self.protect.add(step)
        dist.barrier()
        if self.topo.local_rank == 0:
            shutil.rmtree(resume_root, ignore_errors=True)
        return state
