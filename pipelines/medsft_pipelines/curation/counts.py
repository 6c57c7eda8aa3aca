"""The counters of a curation job (kept, removed and quarantined, by step and source): keys and
sums of the count dicts the workers write into their manifests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any


def add_counts(total: Counter[str], more: Mapping[str, int]) -> Counter[str]:
    """``total += more`` for plain dicts read back from JSON."""
    total.update({k: int(v) for k, v in more.items()})
    return total


def key(*parts: Any) -> str:
    """A counter key: ``"removed/too_long/pubmedqa"``."""
    return "/".join(str(p) for p in parts)


def sum_counts(parts: Iterable[Mapping[str, int]]) -> Counter[str]:
    """The sum of several count dicts."""
    total: Counter[str] = Counter()
    for part in parts:
        add_counts(total, part)
    return total
