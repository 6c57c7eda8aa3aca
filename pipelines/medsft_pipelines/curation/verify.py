"""Verification (rejection sampling): keep a trace only if its final answer is the ground truth.

Extraction and matching are :mod:`medsft_pipelines.answers` — the same code the eval harness
scores with, so a trace kept here would be scored correct there. This module only maps the
spec's verifier kinds onto it and records why each trace was rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsft_pipelines.answers import (
    AnswerKind,
    grade_answer,
    normalize_answer,
    split_think_answer,
)
from medsft_pipelines.specs.curation import VerificationSpec

from .sample import Sample

ACCEPTED = "accepted"
WRONG = "wrong_answer"
UNPARSEABLE = "unparseable"
NO_THINK = "no_think"
"""Verdict reasons; everything but ``accepted`` rejects the trace."""


@dataclass(frozen=True)
class Verdict:
    """The outcome for one teacher response."""

    reason: str
    """``accepted`` or why not."""
    reasoning: str
    """The reasoning text to train on (the think block, or the whole text without tags)."""

    @property
    def accepted(self) -> bool:
        """Whether the trace is kept."""
        return self.reason == ACCEPTED


def verifier_kind(sample: Sample, spec: VerificationSpec, override: str | None = None) -> str:
    """The verifier of a sample: the source's override, else the one for its task type."""
    return override or getattr(spec.verifiers, sample.task_type)


def verify(
    sample: Sample, response: str, kind: str, spec: VerificationSpec, *, imported: bool = False
) -> Verdict:
    """Check one response against the sample's ground truth with verifier ``kind``.

    ``imported`` traces (``tracesFrom``) need no think tags: a human rationale such as
    PubMedQA's long answer is plain text and is all reasoning.
    """
    split = split_think_answer(response)
    if not split.think_closed:
        return Verdict(UNPARSEABLE, "")  # the reasoning never ended: no answer to check
    has_think = bool(split.think)
    reasoning = split.think if has_think else split.answer
    if spec.require_think and not has_think and not imported:
        return Verdict(NO_THINK, reasoning)
    if not reasoning.strip():
        return Verdict(NO_THINK, reasoning)
    if kind == "none":
        return Verdict(ACCEPTED if split.answer or has_think else UNPARSEABLE, reasoning)
    grade = _grade(sample, split.answer, kind, spec)
    if not grade.parsed:
        return Verdict(UNPARSEABLE, reasoning)
    if kind == "exact":
        ok = (grade.prediction or "").strip() == sample.answer.strip()
    elif kind == "tokenF1":
        ok = grade.score >= spec.f1_threshold
    else:
        ok = grade.correct
    return Verdict(ACCEPTED if ok else WRONG, reasoning)


def _grade(sample: Sample, answer_text: str, kind: str, spec: VerificationSpec):
    if kind == "option":
        return grade_answer(answer_text, sample.answer, AnswerKind.CHOICE, sample.options)
    if kind == "numeric":
        return grade_answer(answer_text, sample.answer, AnswerKind.NUMERIC)
    if kind == "label":
        if sample.options:
            return grade_answer(answer_text, sample.answer, AnswerKind.LABEL, sample.options)
        if normalize_answer(sample.answer) in ("yes", "no", "maybe"):
            return grade_answer(answer_text, sample.answer, AnswerKind.YES_NO)
    # exact / normalized / tokenF1, and labels without a label set: open-answer extraction
    return grade_answer(answer_text, sample.answer, AnswerKind.OPEN)
