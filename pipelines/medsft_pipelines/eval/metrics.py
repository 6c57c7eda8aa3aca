"""Scores from graded generations: accuracy over seeds, majority vote, token F1, lengths.

Everything works on plain :class:`Record` rows (what the harness writes to
``generations/…/seed-N.jsonl``), so a report can be recomputed from storage alone.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medsft_pipelines.answers import normalize_answer


@dataclass(frozen=True)
class Record:
    """One graded generation: one item, one seed, one model."""

    benchmark: str
    """Benchmark name."""
    id: str
    """Item id within the benchmark."""
    seed: int
    """Seed of the pass that produced it."""
    kind: str
    """Answer kind of the item (``choice``, ``open`` …)."""
    gold: str
    """Gold answer."""
    response: str
    """Full model response (reasoning included)."""
    prediction: str | None
    """Extracted answer; None when none could be parsed (graded wrong)."""
    correct: bool
    """Whether the prediction matched the gold answer."""
    score: float
    """1/0 for closed kinds, token F1 for open answers."""
    think_tokens: int
    """Reasoning tokens."""
    answer_tokens: int
    """Tokens after the reasoning."""
    forced_exit: bool
    """Whether the end-of-think token had to be appended."""
    finished: bool
    """Whether the model ended the response itself."""
    reading: str = "unanswered"
    """How the answer was read (``answers.Reading``, "think + " in front after reasoning)."""

    @property
    def response_tokens(self) -> int:
        """All generated tokens."""
        return self.think_tokens + self.answer_tokens

    def to_json(self) -> dict[str, Any]:
        """The stored form (``response_tokens`` included for readers' convenience)."""
        return {**asdict(self), "response_tokens": self.response_tokens}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Record:
        """Inverse of :meth:`to_json`."""
        # Files written before a field existed lack it: its default applies.
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


@dataclass(frozen=True)
class LengthStats:
    """Response length in tokens over every generation of a benchmark (all seeds)."""

    mean: float
    """Mean response tokens."""
    median: float
    """Median response tokens."""
    p90: float
    """90th percentile of response tokens."""
    think_mean: float
    """Mean reasoning tokens."""
    answer_mean: float
    """Mean tokens after the reasoning."""


@dataclass(frozen=True)
class BenchmarkScore:
    """Scores of one model on one benchmark."""

    items: int
    """Distinct items evaluated."""
    seeds: int
    """Seeds (passes) evaluated."""
    accuracy: float
    """Accuracy, mean over seeds (fraction)."""
    accuracy_std: float
    """Sample standard deviation of the per-seed accuracies (0 with one seed)."""
    per_seed: list[float]
    """Accuracy of each seed, in seed order."""
    token_f1: float | None
    """Mean token F1 over the open-answer items (None when the benchmark has none)."""
    majority_vote: float | None
    """Accuracy of the per-item majority answer across seeds (when asked for)."""
    unparsed_rate: float
    """Fraction of generations with no parseable answer."""
    forced_exit_rate: float
    """Fraction of generations that needed a forced think exit."""
    length: LengthStats
    """Response length statistics."""


def length_stats(records: Sequence[Record]) -> LengthStats:
    """Length statistics of ``records`` (all zero when empty)."""
    if not records:
        return LengthStats(0.0, 0.0, 0.0, 0.0, 0.0)
    total = np.array([r.response_tokens for r in records], dtype=float)
    return LengthStats(
        mean=float(total.mean()),
        median=float(np.median(total)),
        p90=float(np.percentile(total, 90)),
        think_mean=float(np.mean([r.think_tokens for r in records])),
        answer_mean=float(np.mean([r.answer_tokens for r in records])),
    )


def majority_vote_accuracy(records: Sequence[Record]) -> float:
    """Accuracy of the most frequent parsed answer per item across seeds.

    Answers are compared after normalisation; a tie goes to the answer given first (lowest
    seed). An item with no parsed answer in any seed counts as wrong.
    """
    by_item: dict[str, list[Record]] = defaultdict(list)
    for record in sorted(records, key=lambda r: r.seed):
        by_item[record.id].append(record)
    correct = 0
    for votes in by_item.values():
        parsed = [r for r in votes if r.prediction is not None]
        if not parsed:
            continue
        counts = Counter(normalize_answer(str(r.prediction)) for r in parsed)
        winner = counts.most_common(1)[0][0]
        correct += any(r.correct for r in parsed if normalize_answer(str(r.prediction)) == winner)
    return correct / len(by_item) if by_item else 0.0


def score_benchmark(records: Sequence[Record], *, majority_vote: bool = False) -> BenchmarkScore:
    """Scores of one model's generations on one benchmark (every seed)."""
    if not records:
        raise ValueError("no generations to score")
    by_seed: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        by_seed[record.seed].append(record)
    per_seed = [float(np.mean([r.correct for r in by_seed[s]])) for s in sorted(by_seed)]
    open_scores = [r.score for r in records if r.kind == "open"]
    return BenchmarkScore(
        items=len({r.id for r in records}),
        seeds=len(by_seed),
        accuracy=float(np.mean(per_seed)),
        accuracy_std=statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
        per_seed=per_seed,
        token_f1=float(np.mean(open_scores)) if open_scores else None,
        majority_vote=majority_vote_accuracy(records) if majority_vote else None,
        unparsed_rate=float(np.mean([r.prediction is None for r in records])),
        forced_exit_rate=float(np.mean([r.forced_exit for r in records])),
        length=length_stats(records),
    )


def group_means(scores: Mapping[str, float], groups: Mapping[str, str]) -> dict[str, float]:
    """Unweighted mean of benchmark scores per group (family, or in/out distribution)."""
    members: dict[str, list[float]] = defaultdict(list)
    for name, value in scores.items():
        members[groups[name]].append(value)
    return {group: float(np.mean(values)) for group, values in sorted(members.items())}


def group_records(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Records by benchmark name."""
    grouped: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record.benchmark].append(record)
    return dict(grouped)
