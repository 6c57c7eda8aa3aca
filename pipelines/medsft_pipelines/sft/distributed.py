"""The trainer's process group and its collectives: joining the group torchrun describes (or
one of its own), the reductions every rank takes part in, and the fingerprint of a step's batch.

Plumbing kept out of the training recipe (:mod:`.train`), which only calls it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from typing import Any

import torch
import torch.distributed as dist

from medsft_pipelines.sft.checkpointing import Topology
from medsft_pipelines.sft.lean_deepspeed import deepspeed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def skip_shm_allreduce_without_compiler() -> None:
    """On CPU, DeepSpeed compiles its shared-memory allreduce (``deepspeed_shm_comm``) on every
    process-group start, and fails where there is no C++ compiler: the trainer image ships
    none (GPU nodes never take this path). The op only speeds up allreduce between ranks on
    one machine; without it DeepSpeed uses gloo, so mark it unavailable instead of failing.
    (DeepSpeed keeps its compatible-op table in one module dict so that edits persist.)"""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed() -> tuple[Topology, torch.device]:
    """Join the process group torchrun describes (or a group of one when run directly)."""
    if "WORLD_SIZE" not in os.environ:  # run directly, not by torchrun: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
    topo = Topology(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        local_world_size=int(os.environ["LOCAL_WORLD_SIZE"]),
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(topo.local_rank)
        device = torch.device("cuda", topo.local_rank)
    else:
        device = torch.device("cpu")
        skip_shm_allreduce_without_compiler()
    deepspeed.init_distributed(
        dist_backend="nccl" if device.type == "cuda" else "gloo",
        auto_mpi_discovery=False,
        verbose=False,
    )
    return topo, device


def gather_objects(mine: Any) -> list[Any]:
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return gathered


def all_reduce_max(values: list[int], device: torch.device) -> list[int]:
    tensor = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [int(v) for v in tensor.tolist()]


def batch_fingerprint(sample_ids: list[str]) -> tuple[str, list[list[str]]]:
    """A short hash of the step's sample ids on every rank (same batch <=> same hash), and
    the ids themselves, rank by rank."""
    gathered: list[list[str]] = gather_objects(sample_ids)
    text = "\n".join("|".join(ids or []) for ids in gathered)
    return hashlib.sha256(text.encode()).hexdigest()[:16], gathered


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
