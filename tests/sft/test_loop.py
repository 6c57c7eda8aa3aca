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
from medsft_pipelines.sft.steps import EpochSteps, optimizer_steps, plan_steps


class Stream:
    """A rank with ``per_epoch[epoch]`` micro-batches (no samples: the walk is what is tested)."""

    def __init__(self, per_epoch: list[int]) -> None:
        self.per_epoch = per_epoch

    def iter_epoch(self, epoch: int, first: int = 0):
        for i in range(first, self.per_epoch[epoch]):
            yield MicroBatch(rows=[], index=i, resume_stats=DataStats())


def _walk(per_epoch, steps, position=DataPosition(), grad_accum=2, epochs=None):
    def plan(epoch: int) -> EpochSteps:
        return EpochSteps.of_rows(per_epoch[epoch], steps[epoch], grad_accum)

    return _walk_plan(per_epoch, plan, position, epochs)


def _walk_plan(per_epoch, plan, position=DataPosition(), epochs=None):
    walk = optimizer_steps(
        Stream(per_epoch), lambda mb: mb.index, position,
        epochs if epochs is not None else len(per_epoch), plan,
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
        _walk_plan([5], lambda e: EpochSteps([2, 2], [2, 2]))


def test_no_epoch_limit_with_max_steps() -> None:
    plan = lambda e: EpochSteps.of_rows(2, 2, 1)  # noqa: E731
    walk = optimizer_steps(Stream([2] * 100), lambda mb: mb, DataPosition(), None, plan)
    assert sum(1 for _ in zip(range(50), walk, strict=False)) == 50


def test_steps_of_varying_micro_batches_pad_to_the_agreed_count_and_resume_exactly() -> None:
    # batchUnit: samples: this rank's steps pack into 2, 1, 3 micro-batches, another rank's
    # into 1, 2, 2: every rank runs 2, 2, 3.
    plan = lambda e: EpochSteps([2, 1, 3], [2, 2, 3])  # noqa: E731
    full = _walk_plan([6, 6], plan)
    assert [items for _, items in full] == [[0, 1], [2, None], [3, 4, 5]] * 2
    for k, (position, _) in enumerate(full):
        assert _walk_plan([6, 6], plan, position=position) == full[k + 1 :], position


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


def _ranks_max(per_rank_values: list[list[int]]):
    """What the all-reduce(max) of every rank's list computes; one list per collective."""
    calls = iter(per_rank_values)

    def all_ranks_max(values: list[int]) -> list[int]:
        lists = next(calls)
        width = max(len(v) for v in lists)
        return [max(v[i] if i < len(v) else 0 for v in lists) for i in range(width)]

    return all_ranks_max


def test_sample_unit_steps_hold_the_global_batch_in_samples_and_every_sample_once() -> None:
    """batchUnit: samples with packing: 2 ranks x 8 samples a step = 16 samples a step,
    packed into micro-batches of 2 rows of 1000 tokens; the last step of the epoch holds the
    rest. Every rank runs each step's most micro-batches any rank has."""
    rng = random.Random(7)
    share = 8  # globalBatchSize 16 / 2 ranks
    plan = BatchPlan(micro_batch_size=2, max_seq_length=1000, chunk_samples=share)
    ranks = [PlannedStream([rng.randint(20, 900) for _ in range(n)], plan) for n in (75, 74)]
    epochs = [r.epoch_plan(0) for r in ranks]
    windows = [[len(w.batches) for w in e.windows] for e in epochs]
    counts = [[len(w), -len(w)] for w in windows]
    steps = [
        plan_steps(r, 1, _ranks_max([counts, windows]), per_window=True).epoch(0) for r in ranks
    ]
    assert steps[0].agreed == steps[1].agreed  # every rank runs the same micro-batches
    assert len(steps[0].agreed) == math.ceil(75 / share) == 10
    for k, agreed in enumerate(steps[0].agreed):
        assert agreed == max(w[k] if k < len(w) else 0 for w in windows) >= 1
    for rank, (epoch, step_plan) in enumerate(zip(epochs, steps, strict=True)):
        assert step_plan.mine == [len(w.batches) for w in epoch.windows]
        index = 0  # the plan's micro-batches, step by step: each holds its step's samples
        for k, mine in enumerate(step_plan.mine):
            batches = [mb for w in epoch.windows for mb in w.batches][index : index + mine]
            samples = sorted(i for mb in batches for row in mb for i in row)
            assert samples == list(range(k * share, min((k + 1) * share, (75, 74)[rank])))
            index += mine
    # Per step across the ranks: 16 samples, the last step the rest (75 + 74 = 9 x 16 + 5).
    per_step = [
        sum(len(range(k * share, min((k + 1) * share, n))) for n in (75, 74)) for k in range(10)
    ]
    assert per_step == [16] * 9 + [5]


def test_sample_unit_a_rank_one_window_short_pads_its_last_step() -> None:
    plan = BatchPlan(micro_batch_size=1, max_seq_length=1000, chunk_samples=4)
    short = PlannedStream([100] * 8, plan)  # 2 windows; the other rank has 9 samples: 3
    step_plan = plan_steps(
        short, 1, _ranks_max([[[2, -2], [3, -3]], [[1, 1], [1, 1, 1]]]), per_window=True
    )
    assert step_plan.epoch(0) == EpochSteps(mine=[1, 1, 0], agreed=[1, 1, 1])
    assert step_plan(0) == 3
