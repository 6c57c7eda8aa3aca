"""Answer extraction on real model output: the regression corpora.

benchmarks/data/answer_extraction holds responses of real models to public medical
multiple-choice benchmarks, each with the gold answer and the publishing benchmark's own
extraction (MMLU-Pro's regex chain → ``source_pred``; Liévin et al.'s verdict →
``source_correct``); provenance and licences in its README. Issue #26 adds the outputs of two
more public pipelines in other formats — MIRAGE/MedRAG's JSON replies (``"answer_choice"``)
and MMMU's Health & Medicine outputs (answer-first and "Answer: X" replies, refusals) — which,
being third-party data, are laid in the shared data folder (``../shared/data/
answer_extraction``) rather than in the repository; each record carries a ``split``: the
extractor was tuned on "tune" and is reported on "report". These tests hold the extractor to
the targets of issues #14 and #26 on every corpus present; the numbers are in
benchmarks/README.md (``benchmarks/answer_extraction.py measure``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from medsft_pipelines.answers import extract_choice, option_map, split_think_answer

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "benchmarks" / "data" / "answer_extraction"
# Issue #26's corpora (MIRAGE/MedRAG JSON replies, MMMU Health & Medicine): shared data.
# (MEDSFT_ANSWER_CORPUS_26 names another folder, e.g. the output of `answer_extraction.py build`.)
SHARED_CORPUS = Path(
    os.environ.get("MEDSFT_ANSWER_CORPUS_26", ROOT.parent / "shared" / "data" / "answer_extraction")
)
ISSUE_26_CORPORA = ("mirage-medrag", "mmmu-health")
CORPORA = sorted(CORPUS.glob("*.jsonl")) + sorted(SHARED_CORPUS.glob("*.jsonl"))

# Independent of the extractor under test: what a reader sees in the response.
_MARKED = re.compile(
    r"\(([A-J])\)|\b([A-J])[.)](?=\s|$)|\b(?:[Oo]ption|[Cc]hoice|answer is)\s+\(?([A-J])\b"
)
_STATED = re.compile(r"answer is:?\s*\(?([A-J])\b")
_PROMPT_CUE = re.compile(r"among A through [A-J]")  # Liévin et al.'s answer cue, not an answer
# A JSON reply's answer field: what it commits to is the field, not its reasoning.
_BARE = re.compile(r"^\s*\(?[A-J]\)?\.?\s*$")  # a field (or line) that is one letter
_FIELD = re.compile(r'"answer(?:_choice)?":\s*"([^"]*)"')


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def _not_held_out(path: Path) -> list[dict]:
    """The records the extractor may be tuned against: all of the earlier corpora, the "tune"
    half of issue #26's. The "report" half is held out: its misses are reported in
    benchmarks/README.md, not fixed one by one (that would tune on it)."""
    return [r for r in _records(path) if r.get("split") != "report"]


def _ours(record: dict) -> str | None:
    answer = split_think_answer(record["response"]).answer
    return extract_choice(answer, option_map(record["options"]))


def _source_correct(record: dict) -> bool:
    if "source_correct" in record:
        return bool(record["source_correct"])
    return record["source_pred"] == record["gold"]


def _last_line(record: dict) -> str:
    fields = _FIELD.findall(record["response"])
    if fields:
        return fields[-1]
    lines = [line.replace("**", "").strip() for line in record["response"].splitlines()]
    lines = [line for line in lines if line]
    return _PROMPT_CUE.sub("", lines[-1]) if lines else ""


def _letters(text: str, record: dict) -> set[str]:
    valid = set("ABCDEFGHIJ"[: len(record["options"])])
    return {a or b or c for a, b, c in _MARKED.findall(text)} & valid


def _commits_to_one_option(record: dict) -> bool:
    """The last line names exactly one option by a marked letter ("(B)", "B.", "option B")."""
    last = _last_line(record)
    if _BARE.match(last):
        return last.strip(" ().") in "ABCDEFGHIJ"[: len(record["options"])]
    several = re.search(r"\b[A-J]\)?\s*(?:,|\bor\b|\band\b)\s*\(?[A-J]\b", last)
    return len(_letters(last, record)) == 1 and not several


def test_the_corpus_is_vendored() -> None:
    assert len(CORPORA) >= 9, "benchmarks/data/answer_extraction is missing corpora"
    for path in CORPORA:
        records = _records(path)
        assert len(records) >= 200
        assert all(r["gold"] in option_map(r["options"]) for r in records)


def _issue_26_corpus(name: str) -> list[dict]:
    path = SHARED_CORPUS / f"{name}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is not laid in this checkout's shared data (see benchmarks/README.md)")
    return _records(path)


@pytest.mark.parametrize("name", ISSUE_26_CORPORA)
def test_issue_26_corpora_split_into_tune_and_report(name: str) -> None:
    """Each of the two new pipelines: a few hundred responses, every one on one side of the
    deterministic split, all responses to one question on the same side."""
    records = _issue_26_corpus(name)
    assert 200 <= len(records) <= 400
    sides: dict[str, set[str]] = {}
    for record in records:  # ids: <question>:<model>:<setting> (MIRAGE), <question>:<setting>
        question = record["id"].rsplit(":", 2 if name.startswith("mirage") else 1)[0]
        sides.setdefault(question, set()).add(record["split"])
    assert {r["split"] for r in records} == {"tune", "report"}
    assert all(len(s) == 1 for s in sides.values())


@pytest.mark.parametrize("split", ["tune", "report"])
@pytest.mark.parametrize("name", ISSUE_26_CORPORA)
def test_issue_26_accuracy_against_the_pipelines_own_extractor(name: str, split: str) -> None:
    """Accuracy >= the pipeline's own extractor on each half, once the source's credit for a
    hedge is taken away: MIRAGE reads "A/B" or "A, B, C, D" in the answer field as its first
    letter, MMMU reads the pronoun of "I'm sorry, I can't …" as option I; medsft leaves both
    unanswered on purpose (issue #26). Counted as measured in benchmarks/README.md."""
    records = [r for r in _issue_26_corpus(name) if r["split"] == split]
    ours = sum(_ours(r) == r["gold"] for r in records)
    theirs = sum(_source_correct(r) and not _source_credit_for_no_answer(r) for r in records)
    assert ours >= theirs


def _source_credit_for_no_answer(record: dict) -> bool:
    """The source counted a response that commits to no single option (a hedge in the answer
    field, a refusal) as answering one."""
    if _FIELD.search(record["response"]):
        return not _commits_to_one_option(record)
    return record["response"].lstrip().startswith(("I'm", "I am", "I can"))


@pytest.mark.parametrize("path", CORPORA, ids=lambda p: p.stem)
def test_never_worse_than_the_source_on_committed_answers(path: Path) -> None:
    """Wherever the source scores a response right and medsft does not, the response either
    commits to no single option (a hedge like "A, B, or C", "none of the above", a loop) and
    medsft abstains, or it states a later, different final answer that medsft takes."""
    unexplained = []
    for record in _not_held_out(path):
        ours = _ours(record)
        if not _source_correct(record) or ours == record["gold"]:
            continue
        stated = _STATED.findall(record["response"])
        restated = len(set(stated)) > 1 and stated[-1] == ours
        if restated or (ours is None and not _commits_to_one_option(record)):
            continue
        unexplained.append((record["id"], ours, record["gold"], _last_line(record)[-120:]))
    assert not unexplained


@pytest.mark.parametrize("path", CORPORA, ids=lambda p: p.stem)
def test_never_none_when_the_last_line_names_exactly_one_option(path: Path) -> None:
    missed = [
        (r["id"], _last_line(r)[-120:])
        for r in _not_held_out(path)
        if _commits_to_one_option(r) and _ours(r) is None
    ]
    assert not missed


@pytest.mark.parametrize("path", CORPORA, ids=lambda p: p.stem)
def test_agreement_and_none_rate_stay_where_they_were_measured(path: Path) -> None:
    """Regression bounds a little under what benchmarks/README.md reports (93-100 %
    agreement, at most 9 % None, mostly hedges)."""
    records = _records(path)
    preds = [_ours(r) for r in records]
    agree = [(p == r["gold"]) == _source_correct(r) for p, r in zip(preds, records, strict=True)]
    assert sum(agree) / len(records) >= 0.9
    assert sum(p is None for p in preds) / len(records) <= 0.1
