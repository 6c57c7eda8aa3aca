"""How the loop walks epochs: the agreed step plan, padding of ranks that run out, resume."""

from __future__ import annotations

import math
import random

import pytest

from medsft_pipelines.sft.data import (
    BatchPlan,
    DataPosition,
    DataStats,
    MicroBatch,
    plan_epoch,
)
from medsft_pipelines.sft.recipe import optimizer_steps, plan_steps


class Stream:
    """A rank with ``per_epoch[epoch]`` micro-batches (no samples: the walk is what is tested)."""

    def __init__(self, per_epoch: list[int]) -> None:
        self.per_epoch = per_epoch

    def iter_epoch(self, epoch: int, first: int = 0):
        for i in range(first, self.per_epoch[epoch]):
            yield MicroBatch(rows=[], index=i, resume_stats=DataStats())


def _walk(per_epoch, steps, position=DataPosition(), grad_accum=2, epochs=None):
    walk = optimizer_steps(
        Stream(per_epoch), lambda mb: mb.index, position, grad_accum,
        epochs if epochs is not None else len(per_epoch), lambda e: steps[e],
    )  # fmt: skip
    return [(pos, [item and item[1] for item in items]) for pos, items in walk]


def test_a_rank_with_fewer_micro_batches_pads_its_last_steps() -> None:
    # This rank has 5 and 3 micro-batches; another has 7 and 4: the plan is 4 and 2 steps.
    walked = _walk([5, 3], steps=[4, 2])
    assert [pos for pos, _ in walked] == [
        DataPosition(0, 1), DataPosition(0, 2), DataPosition(0, 3), DataPosition(0, 4),
        DataPosition(1, 1), DataPosition(1, 2),
    ]  # fmt: skip
    assert [items for _, items in walked] == [
        [0, 1], [2, 3], [4, None], [None, None], [0, 1], [2, None],
    ]  # fmt: skip


def test_resuming_mid_epoch_or_at_its_end_continues_exactly() -> None:
    full = _walk([5, 3, 4], steps=[3, 2, 2])
    for k, (position, _) in enumerate(full):
        assert _walk([5, 3, 4], steps=[3, 2, 2], position=position) == full[k + 1 :], position


def test_micro_batches_beyond_the_plan_are_an_error() -> None:
    with pytest.raises(AssertionError, match="beyond the plan"):
        _walk([5], steps=[2])


def test_no_epoch_limit_with_max_steps() -> None:
    walk = optimizer_steps(Stream([2] * 100), lambda mb: mb, DataPosition(), 1, None, lambda e: 2)
    assert sum(1 for _ in zip(range(50), walk, strict=False)) == 50


class PlannedStream:
    def __init__(self, lengths: list[int], plan: BatchPlan) -> None:
        self.lengths, self.plan = lengths, plan

    def epoch_plan(self, epoch: int):
        return plan_epoch(self.lengths, self.plan, seed=1, epoch=epoch)


def test_the_step_plan_is_the_most_any_rank_fills_and_a_rank_without_data_is_an_error() -> None:
    rng = random.Random(3)
    plan = BatchPlan(micro_batch_size=2, max_seq_length=1000, chunk_samples=64)
    ranks = [PlannedStream([rng.randint(20, 900) for _ in range(n)], plan) for n in (150, 149)]
    per_rank = [r.epoch_plan(0).micro_batches for r in ranks]

    def all_ranks_max(values: list[int]) -> list[int]:  # what the all-reduce computes
        mine = [[p, -p] for p in per_rank]
        return [max(v[i] for v in mine) for i in range(len(values))]

    steps = plan_steps(ranks[0], 4, all_ranks_max)
    assert steps(0) == math.ceil(max(per_rank) / 4)
    per_rank = [per_rank[0], 0]
    with pytest.raises(ValueError, match="a rank has no micro-batch"):
        plan_steps(ranks[0], 4, all_ranks_max)(1)


def test_epoch_plan_holds_every_kept_sample_once_within_capacity() -> None:
    rng = random.Random(5)
    lengths = [rng.randint(10, 1200) for _ in range(500)]
    for overlong, packing in (("drop", True), ("truncate", True), ("drop", False)):
        plan = BatchPlan(3, 1000, packing=packing, overlong=overlong, chunk_samples=128)
        epoch = plan_epoch(lengths, plan, seed=2, epoch=0)
        placed = [i for w in epoch.windows for mb in w.batches for row in mb for i in row]
        kept = [i for i, n in enumerate(lengths) if n <= 1000 or overlong == "truncate"]
        assert sorted(placed) == kept
        for w in epoch.windows:
            assert all(w.start <= i < w.stop for mb in w.batches for row in mb for i in row)
            for mb in w.batches:
                assert 1 <= len(mb) <= 3
                assert all(sum(min(lengths[i], 1000) for i in row) <= 1000 for row in mb)
        assert epoch == plan_epoch(lengths, plan, seed=2, epoch=0)  # deterministic
        assert epoch != plan_epoch(lengths, plan, seed=2, epoch=1)
