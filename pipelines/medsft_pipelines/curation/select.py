"""Which questions the teacher sees: every decision that needs no trace, made before paying.

Over *all* candidate questions of the job (every worker computes the same answer from the
same candidates, so N workers select exactly what one does), in canonical order
(source, row):

1. exact duplicates (normalised text + image identity), keep-first;
2. near duplicates (MinHash LSH over word shingles salted with the images), keep-first;
3. per source, class balance (stratified on the ground-truth label) or the question cap;
4. per source, a weight below 1 subsamples questions (a weight above 1 repeats rows at the
   merge, which costs no teacher call).

Question ids must be unique (:func:`check_unique_ids`): duplicates stop the job here, before
any teacher request. Decontamination is per row and happens while the candidates are read. What is left is sent
to the teacher; the length mixture (which needs trace lengths) stays at the merge. A cap or a
class balance therefore counts *questions sent*: a question whose every trace is rejected
leaves its source (or class) that much short, which the report shows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from medsft_pipelines.specs.curation import CurationSpec

from .balance import capped, class_balanced, rank
from .dedup import DEFAULT_BACKEND, Backend, near_duplicates
from .errors import CurationError
from .text import shingles, words

#: Why a candidate is not sent to the teacher (the report's ``removed/<reason>`` keys).
PRE_TEACHER_REASONS = (
    "duplicate_exact",
    "near_duplicate",
    "class_balance",
    "source_cap",
    "weight",
)


@dataclass(frozen=True)
class Candidate:
    """A question that passed reading, images and decontamination (no text is logged)."""

    source_index: int
    row_index: int
    question_id: str
    source: str
    answer: str
    question_hash: str
    prompt_text: str
    image_ids: tuple[str, ...]

    @property
    def order(self) -> tuple[int, int]:
        return (self.source_index, self.row_index)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "image_ids": list(self.image_ids)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        return cls(**{**data, "image_ids": tuple(data["image_ids"])})


def check_unique_ids(candidates: list[Candidate], shown: int = 10) -> None:
    """CurationError naming the question ids that occur more than once.

    A question id (``<source>/<row id>``) names a question everywhere downstream: class
    balance and caps pick ids, the merge joins rows to questions by id, imported traces are
    found by id. Two rows with one id would be balanced as one question and then fail the
    merge after the teacher was paid for both, so the job stops here, before any request.
    Ids of different sources never collide (the source name is part of the id)."""
    seen: Counter[str] = Counter(c.question_id for c in candidates)
    dupes = sorted(qid for qid, n in seen.items() if n > 1)
    if not dupes:
        return
    listed = ", ".join(f"{qid} (x{seen[qid]})" for qid in dupes[:shown])
    more = f" and {len(dupes) - shown} more" if len(dupes) > shown else ""
    raise CurationError(
        f"{len(dupes)} question ids occur more than once: {listed}{more}. Row ids must be "
        "unique within a source: fix the data, or map fields.id to a unique column (unset "
        "fields.id numbers the rows). Nothing was sent to the teacher."
    )


def select_questions(
    spec: CurationSpec, candidates: list[Candidate], backend: Backend = DEFAULT_BACKEND
) -> dict[tuple[int, int], str | None]:
    """``{(source, row): reason}`` for every candidate: ``None`` for those sent to the teacher,
    else the :data:`PRE_TEACHER_REASONS` entry that dropped it."""
    check_unique_ids(candidates)
    ordered = sorted(candidates, key=lambda c: c.order)
    verdict: dict[tuple[int, int], str | None] = {}
    live = ordered
    if spec.dedup.exact:
        seen: set[str] = set()
        live = []
        for c in ordered:
            if c.question_hash in seen:
                verdict[c.order] = "duplicate_exact"
            else:
                seen.add(c.question_hash)
                live.append(c)
    if spec.dedup.near_duplicate and live:
        keys = [f"{c.source_index}:{c.row_index}" for c in live]
        tokens = [
            shingles(
                words(c.prompt_text), spec.dedup.shingle_size, salt="|".join(c.image_ids) + "|"
            )
            for c in live
        ]
        dropped = near_duplicates(
            keys, tokens, spec.dedup.minhash_threshold, spec.dedup.num_perm, backend
        )
        for k, c in zip(keys, live, strict=True):
            if k in dropped:
                verdict[c.order] = "near_duplicate"
        live = [c for k, c in zip(keys, live, strict=True) if k not in dropped]

    for source_index, source in enumerate(spec.sources):
        items = [c for c in live if c.source_index == source_index]
        if source.class_balance:
            keep = class_balanced(
                {c.question_id: c.answer for c in items}, spec.seed, source.max_samples
            )
            reason = "class_balance"
        else:
            keep = capped(
                [c.question_id for c in items], source.max_samples, spec.seed, f"cap:{source.name}"
            )
            reason = "source_cap"
        for c in items:
            if c.question_id not in keep:
                verdict[c.order] = reason
            elif source.weight < 1 and rank(spec.seed, c.question_id, "weight") >= (
                source.weight * 2**64
            ):
                verdict[c.order] = "weight"
            else:
                verdict[c.order] = None
    return verdict
