"""De-duplication: exact (normalised question + image identity) and near-duplicate (MinHash LSH).

Both keep the *first* item in the canonical order (source index, row index) and drop later ones,
so the result depends only on the set of items, not on how workers split them.

Two MinHash backends are supported; ``benchmarks/curation_minhash.py`` measures them on the same
questions and rensa (Rust) won by a wide margin (numbers in benchmarks/README.md), so it is the
default. datasketch stays available as the reference implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

Backend = Literal["rensa", "datasketch"]
DEFAULT_BACKEND: Backend = "rensa"
MINHASH_SEED = 1


def lsh_bands(num_perm: int, threshold: float) -> int:
    """Number of LSH bands (a divisor of ``num_perm``) whose S-curve midpoint ``(1/b)^(1/r)``
    is the largest one at or below ``threshold``: recall first, candidates are then verified
    by their estimated Jaccard similarity."""
    divisors = [b for b in range(1, num_perm + 1) if num_perm % b == 0]
    below = [b for b in divisors if (1 / b) ** (b / num_perm) <= threshold]
    return min(below) if below else max(divisors)


class MinHasher:
    """Builds MinHash sketches with one backend; sketches expose ``jaccard(other)``."""

    def __init__(self, num_perm: int = 128, backend: Backend = DEFAULT_BACKEND) -> None:
        self.num_perm = num_perm
        self.backend = backend

    def sketch_many(self, token_sets: Sequence[list[str]]) -> list[Any]:
        """One sketch per token set."""
        if not token_sets:
            return []
        if self.backend == "rensa":
            from rensa import RMinHash

            return list(RMinHash.from_token_sets(token_sets, self.num_perm, MINHASH_SEED))
        from datasketch import MinHash

        return MinHash.bulk(
            ([t.encode() for t in tokens] for tokens in token_sets),
            num_perm=self.num_perm,
            seed=MINHASH_SEED,
        )


class NearDuplicateIndex:
    """A growing LSH index: :meth:`add` returns the key of an earlier near-duplicate, or indexes
    the new item and returns None."""

    def __init__(
        self, threshold: float, num_perm: int = 128, backend: Backend = DEFAULT_BACKEND
    ) -> None:
        self.threshold = threshold
        self.num_perm = num_perm
        self.backend = backend
        bands = lsh_bands(num_perm, threshold)
        if backend == "rensa":
            from rensa import RMinHashLSH

            self._lsh: Any = RMinHashLSH(threshold, num_perm, bands)
        else:
            from datasketch import MinHashLSH

            self._lsh = MinHashLSH(num_perm=num_perm, params=(bands, num_perm // bands))
        self._sketches: list[Any] = []
        self._keys: list[str] = []

    def __len__(self) -> int:
        return len(self._keys)

    def query(self, sketch: Any) -> str | None:
        """The key of the most similar indexed item at or above the threshold, or None."""
        best, best_sim = None, self.threshold
        for candidate in self._lsh.query(sketch):
            sim = sketch.jaccard(self._sketches[candidate])
            if sim >= best_sim:
                best, best_sim = self._keys[candidate], sim
        return best

    def insert(self, key: str, sketch: Any) -> None:
        """Index one item."""
        self._lsh.insert(len(self._keys), sketch)
        self._sketches.append(sketch)
        self._keys.append(key)

    def add(self, key: str, sketch: Any) -> str | None:
        """Keep-first: the earlier near-duplicate's key, or None after indexing this item."""
        match = self.query(sketch)
        if match is None:
            self.insert(key, sketch)
        return match


def near_duplicates(
    keys: Sequence[str],
    token_sets: Sequence[list[str]],
    threshold: float,
    num_perm: int = 128,
    backend: Backend = DEFAULT_BACKEND,
) -> dict[str, str]:
    """``{dropped key: kept key}`` for items in the given (canonical) order, keep-first."""
    sketches = MinHasher(num_perm, backend).sketch_many(token_sets)
    index = NearDuplicateIndex(threshold, num_perm, backend)
    dropped = {}
    for key, sketch in zip(keys, sketches, strict=True):
        match = index.add(key, sketch)
        if match is not None:
            dropped[key] = match
    return dropped
