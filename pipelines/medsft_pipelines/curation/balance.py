"""Balance and mix: class balancing, per-source caps and weights, the length-bucket mixture.

Every selection ranks items by a seeded hash of their id (:func:`rank`) and keeps the lowest
ranks: deterministic for a seed, independent of input order and of how workers split the input,
and stable (raising a cap only adds items).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def rank(seed: int, item_id: str, salt: str = "") -> int:
    """A uniform 64-bit rank of an item for ``seed`` (and a purpose ``salt``)."""
    digest = hashlib.blake2b(f"{seed}\x00{salt}\x00{item_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def lowest(ids: Sequence[str], k: int, seed: int, salt: str) -> list[str]:
    """The ``k`` ids with the lowest rank."""
    if k >= len(ids):
        return list(ids)
    return sorted(ids, key=lambda i: rank(seed, i, salt))[: max(k, 0)]


def class_balanced(labels: Mapping[str, str], seed: int, cap: int | None = None) -> set[str]:
    """Stratified subset of ``{id: class label}``: every class gets as many items as the
    smallest one (and together at most ``cap``)."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for item_id, label in labels.items():
        by_class[label].append(item_id)
    if not by_class:
        return set()
    per_class = min(len(v) for v in by_class.values())
    if cap is not None:
        per_class = min(per_class, cap // len(by_class))
    return {i for label, ids in by_class.items() for i in lowest(ids, per_class, seed, label)}


def capped(ids: Sequence[str], cap: int | None, seed: int, salt: str) -> set[str]:
    """At most ``cap`` ids, a deterministic subset."""
    return set(ids if cap is None else lowest(ids, cap, seed, salt))


def repeats(item_id: str, weight: float, seed: int) -> int:
    """How many copies of an item a source weight asks for: ``floor(w)``, plus one more with
    probability ``w - floor(w)`` decided by the item's rank (weights below 1 subsample)."""
    whole = math.floor(weight)
    fraction = weight - whole
    extra = rank(seed, item_id, "weight") < fraction * 2**64
    return whole + int(extra)


def length_mixture(
    lengths: Mapping[str, int], bounds: Sequence[int], fractions: Sequence[float], seed: int
) -> tuple[set[str], dict[str, float]]:
    """Subsample rows so that response lengths follow the bucket fractions.

    ``bounds`` are the inclusive upper bounds of the buckets (ascending) with their target
    ``fractions``; rows longer than the last bound form a remainder bucket with the leftover
    fraction (dropped if the fractions sum to 1). Empty buckets are left out and the others
    renormalised. The largest total that meets every fraction is kept. Returns the kept ids
    and the achieved fraction per bucket label.
    """
    labels = [f"<={b}" for b in bounds] + [f">{bounds[-1]}"]
    targets = [*fractions, max(0.0, 1.0 - sum(fractions))]
    members: list[list[str]] = [[] for _ in labels]
    for item_id, n in lengths.items():
        index = next((i for i, b in enumerate(bounds) if n <= b), len(bounds))
        members[index].append(item_id)
    live = [i for i, (m, f) in enumerate(zip(members, targets, strict=True)) if m and f > 1e-12]
    if not live:
        return set(), dict.fromkeys(labels, 0.0)
    norm = sum(targets[i] for i in live)
    total = min(len(members[i]) / (targets[i] / norm) for i in live)
    kept: set[str] = set()
    for i in live:
        quota = min(len(members[i]), math.floor(total * targets[i] / norm + 1e-9))
        kept.update(lowest(members[i], quota, seed, f"length:{labels[i]}"))
    achieved = {
        labels[i]: (len(kept & set(members[i])) / len(kept) if kept else 0.0)
        for i in range(len(labels))
    }
    return kept, achieved
