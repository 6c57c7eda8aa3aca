"""Scores from graded records: seeds averaging, majority vote, lengths, group means."""

from __future__ import annotations

import statistics

import pytest

from medsft_pipelines.eval.metrics import (
    Record,
    group_means,
    length_stats,
    majority_vote_accuracy,
    score_benchmark,
)


def rec(
    item: str,
    seed: int,
    prediction: str | None,
    correct: bool,
    think: int = 0,
    answer: int = 5,
    kind: str = "choice",
    score: float | None = None,
    forced: bool = False,
) -> Record:
    return Record(
        benchmark="b",
        id=item,
        seed=seed,
        kind=kind,
        gold="A",
        response="…",
        prediction=prediction,
        correct=correct,
        score=float(correct) if score is None else score,
        think_tokens=think,
        answer_tokens=answer,
        forced_exit=forced,
        finished=True,
    )


def test_accuracy_is_mean_and_std_over_seeds() -> None:
    records = [
        # seed 0: 1/4 correct; seed 1: 3/4; seed 2: 2/4
        rec("q1", 0, "A", True),
        rec("q2", 0, "B", False),
        rec("q3", 0, None, False),
        rec("q4", 0, "C", False),
        rec("q1", 1, "A", True),
        rec("q2", 1, "A", True),
        rec("q3", 1, "A", True),
        rec("q4", 1, "D", False),
        rec("q1", 2, "A", True),
        rec("q2", 2, "A", True),
        rec("q3", 2, "B", False),
        rec("q4", 2, None, False),
    ]
    score = score_benchmark(records)
    assert score.per_seed == [0.25, 0.75, 0.5]
    assert score.accuracy == pytest.approx(0.5)
    assert score.accuracy_std == pytest.approx(statistics.stdev([0.25, 0.75, 0.5]))
    assert (score.items, score.seeds) == (4, 3)
    assert score.unparsed_rate == pytest.approx(2 / 12)
    assert score.majority_vote is None and score.token_f1 is None


def test_single_seed_has_zero_std() -> None:
    score = score_benchmark([rec("q1", 7, "A", True), rec("q2", 7, "B", False)])
    assert (score.accuracy, score.accuracy_std, score.seeds) == (0.5, 0.0, 1)


def test_majority_vote() -> None:
    records = [
        # q1: A, A, B -> A (correct)
        rec("q1", 0, "A", True),
        rec("q1", 1, "A", True),
        rec("q1", 2, "B", False),
        # q2: B, None, A -> tie between B and A, first given (seed 0: B) wins -> wrong
        rec("q2", 0, "B", False),
        rec("q2", 1, None, False),
        rec("q2", 2, "A", True),
        # q3: nothing parsed -> wrong
        rec("q3", 0, None, False),
        rec("q3", 1, None, False),
        rec("q3", 2, None, False),
        # q4: open answers that normalise equal: "Left lung." x2 -> correct
        rec("q4", 0, "Left lung.", True, kind="open"),
        rec("q4", 1, "the left lung", True, kind="open"),
        rec("q4", 2, "right lung", False, kind="open"),
    ]
    assert majority_vote_accuracy(records) == pytest.approx(2 / 4)
    assert score_benchmark(records, majority_vote=True).majority_vote == pytest.approx(0.5)


def test_token_f1_only_over_open_items() -> None:
    records = [
        rec("q1", 0, "A", True),
        rec("q2", 0, "lung", False, kind="open", score=0.5),
        rec("q3", 0, "liver", False, kind="open", score=0.0),
    ]
    assert score_benchmark(records).token_f1 == pytest.approx(0.25)


def test_length_stats() -> None:
    records = [rec(f"q{i}", 0, "A", True, think=10 * i, answer=5) for i in range(1, 11)]
    stats = length_stats(records)
    totals = [10 * i + 5 for i in range(1, 11)]
    assert stats.mean == pytest.approx(sum(totals) / 10)
    assert stats.median == pytest.approx(statistics.median(totals))
    assert stats.p90 == pytest.approx(96.0)  # linear interpolation between 95 and 105
    assert (stats.think_mean, stats.answer_mean) == (55.0, 5.0)
    assert length_stats([]).mean == 0.0


def test_group_means_are_unweighted_over_benchmarks() -> None:
    means = group_means(
        {"medqa": 0.6, "pubmedqa": 0.8, "vqa-rad": 0.5},
        {"medqa": "text", "pubmedqa": "text", "vqa-rad": "mm_reasoning"},
    )
    assert means == {"mm_reasoning": 0.5, "text": pytest.approx(0.7)}


def test_record_round_trip() -> None:
    record = rec("q1", 3, None, False, think=4, answer=2, forced=True)
    row = record.to_json()
    assert row["response_tokens"] == 6
    assert Record.from_json(row) == record
