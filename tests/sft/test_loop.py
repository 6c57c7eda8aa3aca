"""How the loop walks epochs: steps across ranks, epoch ends, resume at an epoch's end."""

from __future__ import annotations

import pytest

from medsft_pipelines.sft.data import DataPosition, DataStats, MicroBatch
from medsft_pipelines.sft.recipe import optimizer_steps


class Stream:
    """``per_epoch`` micro-batches per epoch, each knowing where the stream continues."""

    def __init__(self, per_epoch: int) -> None:
        self.per_epoch = per_epoch

    def iter_epoch(self, position: DataPosition):
        for i in range(position.batch_in_chunk, self.per_epoch):
            after = DataPosition(position.epoch, 0, i + 1)
            yield MicroBatch(rows=[], next_position=after, resume_stats=DataStats())


def _walk(per_epoch, position, grad_accum, epochs, all_ranks=lambda ok: ok):
    tails: list[int] = []
    steps = optimizer_steps(
        Stream(per_epoch), lambda mb: mb, position, grad_accum, epochs, all_ranks, tails.append
    )
    return [[mb.next_position for mb, _ in items] for items in steps], tails


def test_epochs_end_together_and_tails_are_counted() -> None:
    steps, tails = _walk(5, DataPosition(), grad_accum=2, epochs=2)
    assert [s[-1] for s in steps] == [
        DataPosition(0, 0, 2), DataPosition(0, 0, 4), DataPosition(1, 0, 2), DataPosition(1, 0, 4),
    ]  # fmt: skip
    assert tails == [1, 1]


def test_another_rank_running_out_ends_the_epoch_here_too() -> None:
    agreed = iter([True, False, True, False])  # the other rank has one step per epoch
    steps, tails = _walk(6, DataPosition(), 2, epochs=2, all_ranks=lambda ok: ok and next(agreed))
    assert [s[-1] for s in steps] == [DataPosition(0, 0, 2), DataPosition(1, 0, 2)]
    assert tails == [2, 2]


def test_resuming_at_the_end_of_an_epoch_continues_with_the_next() -> None:
    steps, _ = _walk(4, DataPosition(0, 0, 4), grad_accum=2, epochs=3)
    assert [s[-1].epoch for s in steps] == [1, 1, 2, 2]


def test_no_epoch_limit_with_max_steps() -> None:
    steps = optimizer_steps(Stream(2), lambda mb: mb, DataPosition(), 1, None, bool, lambda n: None)
    assert sum(1 for _, _ in zip(range(50), steps, strict=False)) == 50


def test_a_dataset_too_small_for_one_step_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="epoch 0 did not yield one optimiser step"):
        _walk(1, DataPosition(), grad_accum=2, epochs=1)
