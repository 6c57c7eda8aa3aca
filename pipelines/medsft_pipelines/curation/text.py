"""Text normalisation, hashing and n-grams shared by dedup and decontamination."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

_NON_WORD = re.compile(r"[^\w]+")
_MASK = (1 << 64) - 1
# Odd 64-bit multiplier of the polynomial n-gram hash (arithmetic wraps modulo 2**64).
_BASE = np.uint64(0x9E3779B97F4A7C15)


def normalize_text(text: str) -> str:
    """Lowercase, NFKC, punctuation to spaces, whitespace collapsed: paraphrase-stable form."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_NON_WORD.sub(" ", text).split())


def words(text: str) -> list[str]:
    """The normalised words of ``text``."""
    return normalize_text(text).split()


def question_hash(prompt_text: str, image_ids: Iterable[str]) -> str:
    """Exact-duplicate key of a question: normalised text plus the (sorted) identity of its images."""
    key = normalize_text(prompt_text) + "\x00" + "\x00".join(sorted(image_ids))
    return hashlib.sha256(key.encode()).hexdigest()


def shingles(tokens: list[str], size: int, salt: str = "") -> list[str]:
    """Word ``size``-grams (the whole text when shorter) prefixed by ``salt``.

    The salt (the question's image identity) makes questions about different images share no
    shingle, so "Is there a fracture?" on two different X-rays is never a near-duplicate.
    """
    if len(tokens) <= size:
        return [salt + " ".join(tokens)]
    return [salt + " ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]


def word_ids(tokens: list[str]) -> np.ndarray:
    """64-bit ids of words (Python's string hash: stable within one process, which is enough
    because benchmark and training n-grams are always hashed by the same process)."""
    return np.fromiter((hash(t) & _MASK for t in tokens), dtype=np.uint64, count=len(tokens))


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hashes of every contiguous ``n``-gram of word ids (empty when shorter)."""
    if len(ids) < n:
        return np.empty(0, dtype=np.uint64)
    powers = np.power(_BASE, np.arange(n - 1, -1, -1, dtype=np.uint64), dtype=np.uint64)
    with np.errstate(over="ignore"):
        # uint64 arithmetic wraps, which is exactly the modulus we want; the length is mixed
        # in so that an 8-gram never equals a 16-gram by construction.
        return (sliding_window_view(ids, n) * powers).sum(axis=1, dtype=np.uint64) ^ np.uint64(n)
