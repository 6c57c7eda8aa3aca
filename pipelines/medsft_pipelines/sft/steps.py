"""Step planning: which micro-batches each rank runs in each optimiser step, agreed by every
rank before the first step, and the walk over epochs that feeds them to the loop (read ahead in
a background thread).

Plumbing kept out of the training recipe (:mod:`.train`), which plans once and walks.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from medsft_pipelines.sft.data import Collated, DataPosition, MicroBatch, MicroBatchStream


class Prefetcher:
    """Runs a micro-batch iterator (read, decode, tokenise, collate) in a background thread."""

    _DONE = object()

    def __init__(self, batches: Iterator[MicroBatch], make: Any, depth: int = 4) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batches, make), daemon=True)
        self._thread.start()

    def _run(self, batches: Iterator[MicroBatch], make: Any) -> None:
        try:
            for batch in batches:
                item = (batch, make(batch))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(self._DONE)
        except BaseException as exc:  # surfaced in the training thread
            self._queue.put(exc)

    def take(self, n: int) -> list[tuple[MicroBatch, Collated]]:
        """Up to ``n`` items; fewer when the epoch's data ends."""
        out: list[tuple[MicroBatch, Collated]] = []
        while len(out) < n:
            item = self._queue.get()
            if item is self._DONE:
                self._queue.put(self._DONE)
                break
            if isinstance(item, BaseException):
                raise item
            out.append(item)
        return out

    def close(self) -> None:
        self._stop.set()


Step = list[tuple[MicroBatch, Collated] | None]
"""One optimiser step of a rank: ``grad_accum`` micro-batches; None where the rank has none
left in the epoch (it runs a loss-free filler so the collectives stay in step)."""


@dataclass(frozen=True)
class EpochSteps:
    """One epoch's optimiser steps as this rank runs them: in step ``k`` it trains on
    ``mine[k]`` micro-batches of its own data and runs ``agreed[k]`` in all (the most any
    rank has: every rank runs the same number, the others' extras are loss-free fillers)."""

    mine: list[int]
    agreed: list[int]

    @classmethod
    def of_rows(cls, micro_batches: int, steps: int, grad_accum: int) -> EpochSteps:
        """``globalBatchSize`` in rows: ``grad_accum`` micro-batches a step, this rank's
        ``micro_batches`` in order, its last steps short or empty where it runs out."""
        mine = [max(0, min(grad_accum, micro_batches - k * grad_accum)) for k in range(steps)]
        return cls(mine, [grad_accum] * steps)

    def first_micro_batch(self, step: int) -> int:
        """This rank's plan index of the first micro-batch of ``step``."""
        return sum(self.mine[:step])


def optimizer_steps(
    stream: MicroBatchStream,
    make: Callable[[MicroBatch], Collated],
    position: DataPosition,
    epochs: int | None,
    plan: Callable[[int], EpochSteps],
) -> Iterator[tuple[DataPosition, Step]]:
    """Each optimiser step's micro-batches of this rank, epoch after epoch, and the position
    after it.

    ``plan(epoch)`` is the plan every rank agreed on (see :func:`plan_steps`). A rank with
    fewer micro-batches in a step than another pads it with None, so every sample of the
    epoch is trained on and every rank runs the same micro-batches a step and the same steps
    an epoch. ``epochs=None`` never stops (the caller stops at ``maxSteps``).
    """
    epoch, first = position.epoch, position.step
    while epochs is None or epoch < epochs:
        steps = plan(epoch)
        if first < len(steps.agreed):
            prefetch = Prefetcher(stream.iter_epoch(epoch, steps.first_micro_batch(first)), make)
            try:
                for step in range(first, len(steps.agreed)):
                    items: Step = list(prefetch.take(steps.mine[step]))
                    items += [None] * (steps.agreed[step] - len(items))
                    yield DataPosition(epoch, step + 1), items
                if prefetch.take(1):
                    raise AssertionError(f"epoch {epoch}: micro-batches left beyond the plan")
            finally:
                prefetch.close()
        epoch, first = epoch + 1, 0


@dataclass
class StepPlan:
    """``epoch -> optimiser steps`` (calling it) and each step's micro-batches
    (:meth:`epoch`), agreed by all ranks: a collective, every rank asks for the same epochs
    in the same order.

    ``per_window=False`` (``globalBatchSize`` in rows): ``grad_accum`` micro-batches a step,
    as many steps as the rank with the most micro-batches fills. ``per_window=True``
    (``batchUnit: samples`` with packing): each packing window of the stream is one step's
    share of this rank (``globalBatchSize / world size`` samples, see :func:`.train.setup`),
    packed into as many micro-batches as its rows need; a step runs the most any rank's window
    has.
    """

    stream: MicroBatchStream
    grad_accum: int
    all_ranks_max: Callable[[list[int]], list[int]]
    per_window: bool = False
    _known: dict[int, EpochSteps] = field(default_factory=dict)

    def __call__(self, epoch: int) -> int:
        return len(self.epoch(epoch).agreed)

    def epoch(self, epoch: int) -> EpochSteps:
        if epoch not in self._known:
            self._known[epoch] = self._plan(epoch)
        return self._known[epoch]

    def _plan(self, epoch: int) -> EpochSteps:
        plan = self.stream.epoch_plan(epoch)
        mine = [len(w.batches) for w in plan.windows] if self.per_window else []
        count = len(mine) if self.per_window else plan.micro_batches
        most, fewest = self.all_ranks_max([count, -count])
        if -fewest == 0:
            raise ValueError(
                f"epoch {epoch}: a rank has no micro-batch at all: the dataset holds fewer "
                "(packed) sequences than ranks x microBatchSize"
            )
        if not self.per_window:
            return EpochSteps.of_rows(count, math.ceil(most / self.grad_accum), self.grad_accum)
        mine += [0] * (most - len(mine))  # a rank one sample short may have a window less
        # A step whose every sample was dropped (over-long) still runs one (filler) pass.
        agreed = [max(1, n) for n in self.all_ranks_max(mine)]
        return EpochSteps(mine, agreed)


def plan_steps(
    stream: MicroBatchStream,
    grad_accum: int,
    all_ranks_max: Callable[[list[int]], list[int]],
    *,
    per_window: bool = False,
) -> StepPlan:
    """The agreed step plan of ``stream`` (see :class:`StepPlan`)."""
    return StepPlan(stream, grad_accum, all_ranks_max, per_window=per_window)
