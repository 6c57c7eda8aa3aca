"""A job resumes only checkpoints cut for its own shape (nodes x processes per node).

Each node's checkpoint folder holds its ranks' ZeRO partitions and data positions. Before,
a job with more nodes found no step complete on all of them and trained from step 0 without
a word; one with fewer loaded node 0's files and another split's positions. Now the trainer
refuses, naming both shapes. :meth:`Checkpoints.latest` runs for real in a one-process gloo
group (its decision is rank 0's, broadcast to every rank); the ``Topology`` it is given plays
the job's shape, which is all it reads of torchrun's environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch.distributed as dist

from medsft_pipelines.sft.checkpointing import Checkpoints, Topology, TopologyChanged
from medsft_pipelines.sft.layout import node_checkpoints
from medsft_pipelines.storage import ObjectStore, open_store
from medsft_pipelines.storage.checkpoints import CheckpointStore, Shape


@pytest.fixture(scope="module", autouse=True)
def process_group() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def write(output: ObjectStore, tmp: Path, step: int, nodes: range, shape: Shape | None) -> None:
    """Checkpoint ``step`` of the given nodes, as a job of ``shape`` records it (None: as
    trainers did before shapes were recorded)."""
    folder = tmp / f"ckpt-{step}"
    folder.mkdir(exist_ok=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"w")
    for node in nodes:
        metadata = shape.record() if shape else {}
        CheckpointStore(output.child(node_checkpoints(node))).upload(folder, step, metadata)


def job(output: ObjectStore, tmp: Path, nodes: int, per_node: int) -> Checkpoints:
    """Rank 0's view of a job of ``nodes`` x ``per_node``."""
    topo = Topology(rank=0, world_size=nodes * per_node, local_rank=0, local_world_size=per_node)
    return Checkpoints(output, tmp / "local", topo, keep_last=2)


@pytest.fixture
def output(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path}/out")


def test_more_nodes_refuse_instead_of_starting_over(output: ObjectStore, tmp_path: Path) -> None:
    write(output, tmp_path, 100, range(1), Shape(1, 4))
    with pytest.raises(TopologyChanged) as refused:
        job(output, tmp_path, nodes=2, per_node=4).latest()  # before: None, i.e. step 0
    message = str(refused.value)
    assert "1 node(s) x 4 process(es) (world size 4)" in message
    assert "2 node(s) x 4 process(es) (world size 8)" in message


def test_fewer_nodes_or_another_split_refuse(output: ObjectStore, tmp_path: Path) -> None:
    write(output, tmp_path, 100, range(2), Shape(2, 4))
    with pytest.raises(TopologyChanged, match=r"2 node\(s\) x 4 .*1 node\(s\) x 4"):
        job(output, tmp_path, nodes=1, per_node=4).latest()  # before: 100, half the state
    with pytest.raises(TopologyChanged, match=r"world size 8.*1 node\(s\) x 8 process\(es\)"):
        job(output, tmp_path, nodes=1, per_node=8).latest()  # same world size, other split


def test_the_same_shape_resumes_and_a_first_step_not_every_node_completed_is_no_conflict(
    output: ObjectStore, tmp_path: Path
) -> None:
    shape = Shape(2, 4)
    write(output, tmp_path, 100, range(1), shape)  # node 1 died before completing step 100
    assert job(output, tmp_path, 2, 4).latest() is None
    write(output, tmp_path, 100, range(1, 2), shape)
    write(output, tmp_path, 200, range(2), shape)
    assert job(output, tmp_path, 2, 4).latest() == 200


def test_unrecorded_checkpoints_refuse_only_on_proof(output: ObjectStore, tmp_path: Path) -> None:
    """Checkpoints from before the shape was recorded: node folders beyond the job's prove a
    larger job; fewer folders may be a first step that not every node completed."""
    write(output, tmp_path, 100, range(1), None)
    assert job(output, tmp_path, 2, 4).latest() is None
    write(output, tmp_path, 100, range(1, 3), None)
    with pytest.raises(TopologyChanged, match=r"3 node\(s\); this job runs 2 node\(s\) x 4"):
        job(output, tmp_path, 2, 4).latest()
