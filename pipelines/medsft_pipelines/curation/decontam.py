"""Decontamination: drop training questions that overlap an evaluation benchmark.

Three tests, each counted per benchmark in the report:

* ``ngram``: the training text shares a word ``n``-gram (paper: 16) with a benchmark item.
  Benchmark texts shorter than ``n`` words (but at least ``min_words``) count as one n-gram of
  their own length, so a short benchmark question copied inside a longer prompt is still found.
* ``near_duplicate``: MinHash similarity with a text-only benchmark item at or above the
  threshold (a paraphrase that changes words everywhere keeps no 16-gram).

Both text tests look at the whole item (context + question + options) *and* at the question
alone, so a benchmark question copied without its abstract or options is still found.
* ``image_hash``: an image identical to a benchmark image (file bytes or decoded pixels).

Short image questions ("Is there a fracture?") are not matched on text alone: with a different
image they are a different question; the image test catches the same image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .dedup import DEFAULT_BACKEND, Backend, MinHasher, NearDuplicateIndex
from .text import ngram_hashes, shingles, word_ids, words


@dataclass(frozen=True)
class BenchmarkText:
    """What decontamination needs of one benchmark item."""

    benchmark: str
    """Name of the benchmark it belongs to."""
    text: str
    """Context, question and options joined, as :meth:`Sample.prompt_text` joins them."""
    question: str = ""
    """The question alone."""
    image_hashes: tuple[str, ...] = ()
    """File and pixel sha256 of each of its images."""


@dataclass
class Contamination:
    """Why a training question was removed."""

    benchmark: str
    """The benchmark it overlaps."""
    reason: str
    """``ngram``, ``near_duplicate`` or ``image_hash``."""


@dataclass
class BenchmarkIndex:
    """Everything benchmark-side, built once per worker, queried per training question."""

    ngram: int = 16
    # Word bigrams at 0.7: one edited word in a 14-word question still matches (J ~ 0.73),
    # templated but different questions ("Does drug A ..." vs "Does drug B ...") do not.
    near_threshold: float = 0.7
    shingle_size: int = 2
    num_perm: int = 128
    min_words: int = 8
    backend: Backend = DEFAULT_BACKEND
    _gram_hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    _gram_owner: np.ndarray = field(default_factory=lambda: np.empty(0, np.int32))
    _short_lengths: tuple[int, ...] = ()
    _names: list[str] = field(default_factory=list)
    _images: dict[str, str] = field(default_factory=dict)
    _near: NearDuplicateIndex | None = None

    @classmethod
    def build(cls, items: Iterable[BenchmarkText], **settings: object) -> BenchmarkIndex:
        """Index the n-grams, sketches and image hashes of every benchmark item."""
        index = cls(**settings)  # type: ignore[arg-type]
        names: dict[str, int] = {}
        hashes, owners, short = [], [], set()
        near_keys, near_tokens = [], []
        for item in items:
            owner = names.setdefault(item.benchmark, len(names))
            for digest in item.image_hashes:
                index._images.setdefault(digest, item.benchmark)
            full = words(item.text)
            views = [full]
            if item.question and (question := words(item.question)) != full:
                views.append(question)
            for tokens in views:
                if len(tokens) < index.min_words:
                    continue
                size = min(index.ngram, len(tokens))
                if size < index.ngram:
                    short.add(size)
                grams = ngram_hashes(word_ids(tokens), size)
                hashes.append(grams)
                owners.append(np.full(len(grams), owner, dtype=np.int32))
                if not item.image_hashes:
                    near_keys.append(item.benchmark)
                    near_tokens.append(shingles(tokens, index.shingle_size))
        index._names = list(names)
        if hashes:
            all_hashes, all_owners = np.concatenate(hashes), np.concatenate(owners)
            order = np.argsort(all_hashes, kind="stable")
            index._gram_hashes, index._gram_owner = all_hashes[order], all_owners[order]
        index._short_lengths = tuple(sorted(short))
        if near_tokens:
            near = NearDuplicateIndex(index.near_threshold, index.num_perm, index.backend)
            sketches = MinHasher(index.num_perm, index.backend).sketch_many(near_tokens)
            for key, sketch in zip(near_keys, sketches, strict=True):
                near.insert(key, sketch)
            index._near = near
        return index

    @property
    def empty(self) -> bool:
        """True when there is nothing to protect."""
        return not self._names

    def _ngram_hit(self, tokens: list[str]) -> str | None:
        if not len(self._gram_hashes) or len(tokens) < self.min_words:
            return None
        ids = word_ids(tokens)
        for size in (self.ngram, *self._short_lengths):
            grams = ngram_hashes(ids, size)
            if not len(grams):
                continue
            pos = np.searchsorted(self._gram_hashes, grams)
            pos = np.minimum(pos, len(self._gram_hashes) - 1)
            hit = np.flatnonzero(self._gram_hashes[pos] == grams)
            if len(hit):
                return self._names[int(self._gram_owner[pos[hit[0]]])]
        return None

    def check_many(
        self,
        texts: Sequence[str],
        image_hashes: Sequence[Sequence[str]],
        questions: Sequence[str] | None = None,
    ) -> list[Contamination | None]:
        """For each training question (full prompt text, image hashes, question alone): why
        it is contaminated, or None."""
        results: list[Contamination | None] = [None] * len(texts)
        if self.empty:
            return results
        pending: list[tuple[int, list[str]]] = []  # (item, tokens) for the near-duplicate test
        token_lists = [words(t) for t in texts]
        for i, (tokens, digests) in enumerate(zip(token_lists, image_hashes, strict=True)):
            image_hit = next((self._images[d] for d in digests if d in self._images), None)
            if image_hit is not None:
                results[i] = Contamination(image_hit, "image_hash")
            elif (name := self._ngram_hit(tokens)) is not None:
                results[i] = Contamination(name, "ngram")
            elif self._near is not None and not digests:
                views = [tokens]
                if questions is not None and (q := words(questions[i])) != tokens:
                    views.append(q)
                pending += [(i, v) for v in views if len(v) >= self.min_words]
        if pending and self._near is not None:
            sketches = MinHasher(self.num_perm, self.backend).sketch_many(
                [shingles(tokens, self.shingle_size) for _, tokens in pending]
            )
            for (i, _), sketch in zip(pending, sketches, strict=True):
                if results[i] is None and (match := self._near.query(sketch)) is not None:
                    results[i] = Contamination(match, "near_duplicate")
        return results
