"""The promotion gate: does a generation's model pass the run's thresholds?"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from medsft_operator.api.kinds import MEAN_METRICS, PromotionSpec
from medsft_pipelines.specs.eval import EvalSpec

# What changes a benchmark's score besides the model: the decoding settings and seeds, and the
# benchmark's own split, item cap and files. Not the baseline, the GPUs or the resources.
_SCORE_SETTINGS = ("generation",)
_BENCHMARK_SETTINGS = ("name", "split", "max_items", "uri", "format")


def eval_settings(spec: EvalSpec) -> dict[str, str]:
    """A key of how each benchmark was evaluated, by benchmark name: two generations' scores
    on a benchmark are comparable only when their keys are equal."""
    common = spec.model_dump(mode="json", include=set(_SCORE_SETTINGS))
    keys = {}
    for bench in spec.benchmarks:
        how = {**common, **bench.model_dump(mode="json", include=set(_BENCHMARK_SETTINGS))}
        keys[bench.name] = hashlib.sha256(json.dumps(how, sort_keys=True).encode()).hexdigest()[:16]
    return keys


@dataclass(frozen=True)
class Evaluated:
    """One generation's evaluation, as the gate compares it with the promoted one."""

    scores: Mapping[str, float]
    """Accuracy per benchmark and the means (``fold.scores_of``)."""
    model_uri: str | None = None
    """The model evaluated."""
    settings: Mapping[str, str] = field(default_factory=dict)
    """:func:`eval_settings` (empty: unknown, e.g. a generation recorded before they were)."""


def beats_promoted(current: Evaluated, promoted: Evaluated) -> str | None:
    """None when ``current`` beats the promoted generation like with like; else why not.

    The means are taken over the benchmarks both scored *the same way* (same decoding, seeds,
    split, item cap): a generation that added, dropped or re-capped benchmarks is compared on
    the rest, and one with nothing in common is refused, never compared on different exams.
    The promoted model itself, evaluated again after an eval-only edit, has nothing to beat.
    """
    if current.model_uri and current.model_uri == promoted.model_uri:
        return None
    mine, theirs = _benchmarks(current.scores), _benchmarks(promoted.scores)
    known = bool(current.settings and promoted.settings)  # older records have no settings
    shared = sorted(
        name
        for name in set(mine) & set(theirs)
        if not known or _same(current.settings.get(name), promoted.settings.get(name))
    )
    if not shared:
        return (
            "cannot compare with the promoted generation: no benchmark evaluated the same way "
            "by both (other benchmarks, splits, item caps, seeds or decoding)"
        )
    new = sum(mine[n] for n in shared) / len(shared)
    old = sum(theirs[n] for n in shared) / len(shared)
    if new <= old:
        return (
            f"mean over the {len(shared)} benchmark(s) shared with the promoted generation "
            f"{new:.4f} does not beat its {old:.4f}"
        )
    return None


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and a == b


def _benchmarks(scores: Mapping[str, float]) -> dict[str, float]:
    return {name: value for name, value in scores.items() if name not in MEAN_METRICS}


@dataclass(frozen=True)
class Verdict:
    """The gate's decision, with every unmet requirement spelled out."""

    promoted: bool
    failures: list[str] = field(default_factory=list)

    def message(self) -> str:
        return "passed every threshold" if self.promoted else "; ".join(self.failures)


def evaluate(
    spec: PromotionSpec,
    scores: Mapping[str, float],
    *,
    baseline_mean: float | None = None,
    current: Evaluated | None = None,
    promoted: Evaluated | None = None,
) -> Verdict:
    """Every threshold met (a missing metric fails), and the optional comparisons won
    (``mustBeatPromoted``: ``current`` against ``promoted``, see :func:`beats_promoted`)."""
    failures = []
    for threshold in spec.thresholds:
        value = scores.get(threshold.metric)
        if value is None:
            failures.append(f"{threshold.metric}: no such score")
        elif value < threshold.min:
            failures.append(f"{threshold.metric} {value:.4f} < {threshold.min:.4f}")
    mean = scores.get("mean")
    if spec.must_beat_baseline:
        if baseline_mean is None:
            failures.append("no baseline score to beat")
        elif mean is None or mean <= baseline_mean:
            failures.append(f"mean {_fmt(mean)} does not beat the baseline's {baseline_mean:.4f}")
    if spec.must_beat_promoted and promoted is not None:
        why = beats_promoted(current or Evaluated(scores), promoted)
        if why is not None:
            failures.append(why)
    return Verdict(not failures, failures)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
