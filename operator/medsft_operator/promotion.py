"""The promotion gate: does a generation's model pass the run's thresholds?"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from medsft_operator.api.kinds import PromotionSpec


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
    promoted_mean: float | None = None,
) -> Verdict:
    """Every threshold met (a missing metric fails), and the optional comparisons won."""
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
    if (
        spec.must_beat_promoted
        and promoted_mean is not None
        and (mean is None or mean <= promoted_mean)
    ):
        failures.append(
            f"mean {_fmt(mean)} does not beat the promoted generation's {promoted_mean:.4f}"
        )
    return Verdict(not failures, failures)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
