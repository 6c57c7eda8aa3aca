"""Answer extraction and matching: the one implementation shared by eval and curation.

Both the eval harness (scoring a model's generations) and the curation verifiers (rejection
sampling of teacher traces) must agree on what "the final answer" of a response is, so that a
trace kept as correct in curation would also be scored correct in eval. Everything here is a
pure function on strings; nothing imports torch.

Conventions
-----------
* A response may start with a reasoning block ``<think> … </think>``; only the text after
  ``</think>`` is the answer part. A think block that never closes has no answer (the eval's
  "forced exit" appends ``</think>`` and lets the model answer, which then splits normally).
* Options are lettered ``A`` to ``J`` in order (MMLU-Pro has ten).
* Explicit answer statements ("Answer: X", "the answer is X", ``\\boxed{X}``) win over
  heuristics on the free text; when a response states several (a model restating or
  correcting itself), the *last* one that names an answer is its final answer.
* A JSON reply's answer field (``"answer": "B"``, ``"answer_choice"``, ``"final_answer"`` …)
  wins over everything, its reasoning field included; a "Final Answer" heading states the
  line below it; a statement right after a negation ("are not the best choice:") is none.
* Without a statement, a reply that opens with its answer ("B. <B's text>", "B.. Explanation",
  "'C'.", "A (<A's text>).", a letter alone on the first line) is read as answering it, even
  when the discussion after it names other options; a reply opening with a hedge is none.
* Extraction returns ``None`` when there is no answer or the final statement names several
  (``Answer: A or C``); ``None`` always grades as wrong. :func:`read_choice` also says how the
  answer was read (:class:`Reading`), which the eval report counts.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

THINK_START = "<think>"
THINK_END = "</think>"
OPTION_LETTERS = "ABCDEFGHIJ"

# ---------------------------------------------------------------------------------------------
# think / answer split
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitResponse:
    """A response cut into its reasoning and its answer part."""

    think: str
    """The reasoning text inside the think block ("" when the model did not think)."""
    answer: str
    """The text after the think block: where the final answer must be."""
    think_closed: bool
    """False when a think block was opened but never closed (truncated reasoning)."""


def split_think_answer(
    text: str,
    *,
    opened_in_prompt: bool = False,
    think_start: str = THINK_START,
    think_end: str = THINK_END,
) -> SplitResponse:
    """Split a generation at the end of its think block.

    ``opened_in_prompt`` is True when the chat template already wrote ``<think>`` at the end of
    the prompt (Qwen3-style), so the generation starts inside the block. The first
    ``</think>`` ends the block (a forced exit appends exactly one). Without any think tag the
    whole text is the answer part.
    """
    end = text.find(think_end)
    if end >= 0:
        think = text[:end]
        start = think.find(think_start)
        if start >= 0:
            think = think[start + len(think_start) :]
        return SplitResponse(think.strip(), text[end + len(think_end) :].strip(), True)
    start = text.find(think_start)
    if start >= 0:
        return SplitResponse(text[start + len(think_start) :].strip(), "", False)
    if opened_in_prompt:
        return SplitResponse(text.strip(), "", False)
    return SplitResponse("", text.strip(), True)


# ---------------------------------------------------------------------------------------------
# normalisation and explicit answer statements
# ---------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# LaTeX inline delimiters too: "Answer: \( I \)".
_MARKUP = re.compile(r"\*\*|__|`|\$|\\[()\[\]]|\\text\{|\\mathrm\{|\\textbf\{")
_BOXED = re.compile(r"\\boxed\s*\{")
# "Answer: X", "Final answer - X", "the answer is X", "correct option is (X)". The keyword must be
# followed by a copula or a colon: "To answer this, ..." and "answer each option" are not
# statements, and a bare "option"/"choice" is not either (chain-of-thought text says "option A
# is wrong" all the time). The word boundary before the keyword is a look-behind, so that the
# newline a first statement ends with ("the correct answer is:\n\nAnswer: C") still starts
# the second.
_STATEMENT = re.compile(
    r"(?<![a-z])(?:(?:final|correct|best|right|true|most\s+(?:likely|appropriate))\s+"
    r"(?:answer|option|choice|response)s?|answers?)(?:\s+(?:choice|option)s?)?"
    r"(?:\s*(?:[:=]|[\-\u2013](?=\s)|\bis\b|\bare\b|\bwould\s+be\b|\bshould\s+be\b|\bwill\s+be\b"
    r"|\bmust\s+be\b)(?:\s+(?:therefore|thus|hence|clearly|likely|most\s+likely|probably"
    r"|definitely))?(?:\s+to\s+be\b)?)+\s*",
    re.IGNORECASE,
)
# "B is the correct answer", "(B) is correct", "option B is the best choice": the same statement
# written the other way round.
_REVERSE_STATEMENT = re.compile(
    r"(?:^|[.:,;!?*]\s*|\s(?=[(]|(?i:option|choice)))"
    r"(?P<value>(?:(?i:option|choice)\s+)?(?:\([A-J]\)|[A-J]))\s+is\s+(?:the\s+)?"
    r"(?i:(?:correct|right|best|most\s+(?:likely|appropriate))(?:\s+(?:answer|option|choice))?"
    r"|answer)\b",
    re.MULTILINE,
)
_INLINE_MARKUP = re.compile(r"\*\*|__|`|\$")
# A statement keyword right after a negation states what the answer is not.
_NEGATED = re.compile(r"(?:\bnot|n't|\bnever)[ \t]+(?:(?:the|a|an)[ \t]+)?$", re.IGNORECASE)
# "## Final Answer", "**Final answer**", "Final Answer" alone on a line, the value below it. A
# colon is a statement of its own (_STATEMENT reads the next line after it).
_ANSWER_HEADING = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:(?:final|correct|best)[ \t]+answer|answer)[ \t]*$\n",
    re.IGNORECASE | re.MULTILINE,
)
# Curly quotes as their straight forms (a curly-quoted letter is a quoted letter).
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
# A letter in quotes is the letter ("'C'.", "the answer is \"D\"").
_QUOTED_LETTER = re.compile(r"(['\"])([A-J])\1")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?")


def strip_markup(text: str) -> str:
    """Remove markdown/LaTeX wrappers models put around answers (``**B**``, ``$5$``)."""
    text = _MARKUP.sub("", text)
    return text.replace("}", "").strip()


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation of an open answer: lowercase, no punctuation/articles."""
    text = strip_markup(text).lower()
    text = "".join(ch if ch not in string.punctuation else " " for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _boxed_matches(text: str) -> list[tuple[re.Match[str], str]]:
    found: list[tuple[re.Match[str], str]] = []
    for match in _BOXED.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found.append((match, text[match.end() : i - 1].strip()))
    return found


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{…}`` in order, nested braces handled."""
    return [content for _, content in _boxed_matches(text)]


def _statement_spans(answer_text: str) -> list[tuple[int, str]]:
    """(position, stated value) of every explicit answer statement, in text order."""
    text = _INLINE_MARKUP.sub("", answer_text)
    spans = [(m.start(), v) for m, v in _boxed_matches(text)]
    for heading in _ANSWER_HEADING.finditer(text):
        # "## Final Answer" on its own line: the answer is the next line that says something.
        below = _first_line(text[heading.end() :])
        if below and not _ANSWER_HEADING.match(below + "\n") and "\\boxed" not in below:
            spans.append((heading.end(), strip_markup(below).rstrip(".").strip()))
    keywords = list(_STATEMENT.finditer(text))
    for match, following in zip(keywords, [*keywords[1:], None], strict=False):
        keyword = match.start()
        if _NEGATED.search(text, max(0, keyword - 24), keyword):
            continue  # "the other options are not the best choice:" then a list
        # The value runs to the end of the line or to the next statement on the same line
        # ("the best answer is (J) and (B) but … The answer is (J).").
        line_end = text.find("\n", match.end())
        end = len(text) if line_end < 0 else line_end
        if following is not None and following.start() < end:
            end = following.start()
        value = text[match.end() : end].strip()
        if "\\boxed" in value:
            continue  # "The answer is \boxed{B}": the box is already a statement
        value = strip_markup(value).rstrip(".").strip()
        if value:
            spans.append((match.end(), value))
    for match in _REVERSE_STATEMENT.finditer(text):
        spans.append((match.start("value"), match.group("value")))
    return sorted(spans)


def answer_statements(answer_text: str) -> list[str]:
    """Explicit final-answer statements in ``answer_text``, in the order they are written.

    Boxed contents, the rest of the line after "Answer:" / "the answer is", and "B is the
    correct answer"; trailing sentence punctuation is dropped.
    """
    return [value for _, value in _statement_spans(answer_text)]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# ---------------------------------------------------------------------------------------------
# multiple choice
# ---------------------------------------------------------------------------------------------


def option_map(options: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """Options as ``{letter: text}``; a sequence is lettered A, B, C… in order."""
    if isinstance(options, Mapping):
        return {str(k).strip().upper(): str(v) for k, v in options.items()}
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options are supported")
    return {OPTION_LETTERS[i]: str(text) for i, text in enumerate(options)}


# "B", "(B)", "B.", "B) text", "option B", "B because …", "b" — inside an explicit statement. A
# lowercase letter counts only on its own ("Answer: b", "(b) text"): "the answer is a
# combination" is prose.
_LEADING_LETTER = re.compile(
    r"^(?i:option|choice|letter)?\s*(?:[\(\[](?P<paren>[A-Ja-j])[\)\]]"
    r"|(?P<bare>[A-J])(?=$|[\s.:,;)\-\u2013])|(?P<lower>[a-j])(?=$|[.)](?:\s|$)))"
)
# "A"/"I" followed by a lowercase word are the article and the pronoun ("I think", "A viral
# cause"), not options.
_ARTICLE_OR_PRONOUN = re.compile(r"\s+[a-z]")
# The same without a statement: the letter must be marked ("B", "B.", "(B)", "B:"), so that a
# line opening with the article "A …" is not read as option A.
_MARKED_LETTER = re.compile(
    r"^(?i:option|choice)?\s*(?:\((?P<paren>[A-J])\)|(?P<bare>[A-J])(?:[.:)](?=\s|$)|$))"
)
# "A or B", "(A), (B), or (C)", "either A or B", "a combination of (C, F, I)", and a run of
# letters as the whole value ("CE", "(CH)"): several options, no answer. "E.fecalis" and
# "B/L otitis" after "B, " are an option's text, not a second letter; "DNA polymerase" is
# text, not the letters D, N, A.
_SEVERAL_LETTERS = re.compile(
    r"^(?i:either|both|all\s+of|a\s+combination\s+of|options?|choices?)?\s*"
    r"(?:[\(\[]?[A-J][\)\]]?\s*(?:,|and|or|&|/|\+)\s*[\(\[]?[A-J](?=$|[\s,;)\]]|\.(?:\s|$))"
    r"|\(?[A-J]{2,4}\)?\.?$)"
)
_MENTIONED_LETTER = re.compile(
    r"(?<![\w(])\((?P<paren>[A-J])\)|\b(?i:option|choice)\s+\(?(?P<named>[A-J])\b|^\s*(?P<lead>[A-J])[.):]\s",
    re.MULTILINE,
)
_LETTER_THEN_TEXT = re.compile(r"(?<![\w(])(?P<letter>[A-J])[.):]\s+")
_BARE_LETTER = re.compile(r"^[\(\[]?([A-J])[\)\]]?$")
# A run of lettered lines ("A. …", "B. …", "C. …"): an option list.
_OPTION_LIST = re.compile(r"(?:^[ \t]*\(?[A-J][.)][ \t]+\S[^\n]*\n?){3,}", re.MULTILINE)
# Where an option's label ends after its letter: "B. Ceftriaxone, because …".
_LABEL_END = re.compile(r"[.;,:!?(]\s|\s[-\u2013]\s|\s(?:because|as|since|which)\s")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


# A JSON (or Python dict) answer field: "answer", "answer_choice", "final_answer",
# "correct_answer", "selected_option" … with a string or bare value. Structured replies
# (response_format=json pipelines) keep their reasoning in another field, which may name other
# options and even say "the answer is A" while weighing it.
_ANSWER_FIELD = re.compile(
    r"""["'](?P<key>(?:final[ _]?|correct[ _]?|best[ _]?)?answer(?:[ _](?:choice|letter|option"""
    r"""|key|idx|index))?|(?:selected|chosen)[ _](?:option|answer|choice))["']\s*:\s*"""
    r"""(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[A-Ja-j])\b)""",
    re.IGNORECASE,
)


# An empty field or a format's placeholder quoted in the reply ("<letter>", "{A/B/C/D}", "X").
_PLACEHOLDER = re.compile(r"^\s*(?:[<{\[].*[>}\]]|X)?\s*$")


def _structured_answers(text: str) -> list[str]:
    """The values of every answer field of a JSON reply, in order."""
    return [
        m.group("dq") if m.group("dq") is not None else m.group("sq") or m.group("bare") or ""
        for m in _ANSWER_FIELD.finditer(text)
    ]


def _option_by_text(value: str, options: Mapping[str, str]) -> str | None:
    """The letter whose option text the value names, by normalised containment.

    The longest matching option wins when the shorter matches are inside it ("pulmonary
    hypertension" vs "hypertension"); otherwise several matching options are ambiguous.
    """
    norm_value = normalize_answer(value)
    if not norm_value:
        return None
    exact = [k for k, v in options.items() if normalize_answer(v) == norm_value]
    if len(exact) == 1:
        return exact[0]
    padded = f" {norm_value} "
    hits = {
        k: normalize_answer(v)
        for k, v in options.items()
        if normalize_answer(v) and f" {normalize_answer(v)} " in padded
    }
    if not hits:
        return None
    longest = max(hits, key=lambda k: len(hits[k]))
    if all(f" {hits[k]} " in f" {hits[longest]} " for k in hits):
        return longest
    return None


def _exact_option(value: str, options: Mapping[str, str]) -> str | None:
    norm = normalize_answer(value)
    matches = [k for k, v in options.items() if norm and normalize_answer(v) == norm]
    return matches[0] if len(matches) == 1 else None


def _names_option(text: str, option_text: str) -> bool:
    norm_text, norm_opt = normalize_answer(text), normalize_answer(option_text)
    return bool(norm_opt) and f" {norm_opt} " in f" {norm_text} "


# A statement that names several options or contradicts itself: the item has no single answer.
_AMBIGUOUS = "?"


def _leading_letter(value: str) -> tuple[str, str] | None:
    """The option letter a statement value opens with, and the text after it."""
    match = _LEADING_LETTER.match(value)
    if not match:
        return None
    bare = match.group("bare")
    rest = value[match.end() :]
    if bare in ("A", "I") and _ARTICLE_OR_PRONOUN.match(rest):
        return None
    letter = (bare or match.group("paren") or match.group("lower")).upper()
    return letter, rest


def _choice_from_statement(value: str, options: Mapping[str, str]) -> str | None:
    """Parse one explicit statement ("B", "(B) text", "option B", "Aspirin") into a letter.

    None when the statement names no option; ``_AMBIGUOUS`` for "A or B" and for
    "B. <text of option C>", which contradicts itself.
    """
    value = strip_markup(value)
    if _SEVERAL_LETTERS.match(value):
        return _AMBIGUOUS
    bare = _BARE_LETTER.match(value)
    if bare and bare.group(1) in options:
        return bare.group(1)  # "C" is option C even when option B's text is "c"
    # The exact text of an option first: "A beta blocker" is option text, not the letter A.
    exact = _exact_option(value, options)
    if exact is not None:
        return exact
    leading = _leading_letter(value)
    if leading and leading[0] in options:
        letter, rest = leading
        own = normalize_answer(options[letter])
        if own and f"{normalize_answer(rest)} ".startswith(f"{own} "):
            return letter  # "D. Facially, lingually, cervically & occlusally": D's own text
        # Only the label right after the letter can contradict it: "B. Doxycycline" names
        # option D's text, "(C). Klinefelter syndrome is not …" starts a new sentence.
        label = _LABEL_END.split(rest.lstrip(" .:)-\u2013"), maxsplit=1)[0]
        if _exact_option(label, options) not in (None, letter):
            return _AMBIGUOUS
        return letter
    return _option_by_text(value, options)


def _choice_from_line(line: str, options: Mapping[str, str]) -> str | None:
    """A short first line without statement: a marked letter or exactly one option's text."""
    line = strip_markup(line)
    if _SEVERAL_LETTERS.match(line):
        return None
    marked = _MARKED_LETTER.match(line)
    if marked:
        letter = marked.group("paren") or marked.group("bare")
        named_too = _mentioned_letters(line, options) - {letter}
        return letter if letter in options and not named_too else None
    return _option_by_text(line, options)


def _mentioned_letters(text: str, options: Mapping[str, str]) -> set[str]:
    """Letters named as "(B)", "option B", "B." at a line start, or "B. <B's text>" anywhere."""
    found = {
        m.group("paren") or m.group("named") or m.group("lead")
        for m in _MENTIONED_LETTER.finditer(text)
    }
    for m in _LETTER_THEN_TEXT.finditer(text):
        own = normalize_answer(options.get(m.group("letter"), ""))
        if own and normalize_answer(text[m.end() : m.end() + 2 * len(own) + 8]).startswith(own):
            found.add(m.group("letter"))
    return found & set(options)


def _last_line(text: str) -> str:
    lines = [strip_markup(line) for line in text.splitlines() if strip_markup(line)]
    return lines[-1] if lines else ""


def _last_sentence(text: str) -> str:
    return _SENTENCE_END.split(_last_line(text))[-1].strip()


def _choice_from_last_sentence(sentence: str, options: Mapping[str, str]) -> str | None:
    """The option the closing sentence names, when it names exactly one.

    A sentence names an option by a marked letter ("(B)", "option B", "B." / "B)" opening it,
    "B. <B's text>", or the sentence being just the letter) or by the option's text.
    """
    named = _marked_in_sentence(sentence, options)
    by_text = _option_by_text(sentence, options)
    if by_text is not None:
        named.add(by_text)
    return named.pop() if len(named) == 1 else None


def _marked_in_sentence(sentence: str, options: Mapping[str, str]) -> set[str]:
    named = _mentioned_letters(sentence, options)
    marked = _MARKED_LETTER.match(sentence)
    if marked and (marked.group("paren") or marked.group("bare")) in options:
        named.add(marked.group("paren") or marked.group("bare"))
    return named


def _cut_runaway(text: str, options: Mapping[str, str]) -> str:
    """The text before a list of options that are not this item's, once it has answered.

    Models that run on after answering (few-shot prompts without a stop sequence) write the
    next, invented question with its own lettered options and answer that too; the answer to
    this item is the one before. A list that repeats this item's options (reviewing them) is
    kept.
    """
    own = {normalize_answer(v) for v in options.values()}
    for block in _OPTION_LIST.finditer(text):
        labels = [
            normalize_answer(re.sub(r"^\s*\(?[A-J][.)]\s+", "", line))
            for line in block.group(0).splitlines()
            if line.strip()
        ]
        ours = sum(any(lab.startswith(o) for o in own if o) for lab in labels)
        if ours * 2 < len(labels) and _statement_spans(text[: block.start()]):
            return text[: block.start()].strip()
    return text


# How a reply opening with its answer opens: a letter, maybe in brackets, maybe followed by
# "." / ".." / ":" / ")" ("B.. Explanation", "(B) Ceftriaxone", "A (Ampicillin).").
_OPENING = re.compile(r"^[\(\[]?(?P<letter>[A-J])[\)\]]?(?P<mark>\.{1,2}|:|\))?(?=\s|$|\()")
# After the opening letter, a word that starts the explanation of a given answer.
_EXPLAINS = re.compile(
    r"^(?:explanation|rationale|reason(?:ing)?|because|justification|is\s+(?:the\s+)?correct"
    r"|is\s+the\s+(?:best|right|answer)|[\-\u2013\u2014])\b",
    re.IGNORECASE,
)


def _answer_first(text: str, options: Mapping[str, str]) -> str | None:
    """The letter a reply opens with, when it opens with its answer ("B. Ceftriaxone", then
    discussion of the other options), else None.

    The opening must be unmistakable: the letter alone on the first line, or followed by its
    own option text, or by an explanation keyword ("B.. Explanation"). "A 45-year-old …",
    "A: Let's think step by step" and an option list ("A. …" / "B. …" / "C. …") do not open
    with an answer.
    """
    first = strip_markup(_first_line(text))
    match = _OPENING.match(first)
    if not match or match.group("letter") not in options:
        return None
    if _SEVERAL_LETTERS.match(first):
        return None
    letter = match.group("letter")
    rest = first[match.end() :].strip()
    block = _OPTION_LIST.search(text)
    if block and block.start() <= text.find(_first_line(text)):
        return None  # the reply opens by listing options
    if rest:
        label = rest.lstrip("(").split(")")[0] if rest.startswith("(") else rest
        named = _option_by_text(label[: 2 * len(options[letter]) + 8], options)
        own = normalize_answer(options[letter])
        opens_with_own = bool(own) and f"{normalize_answer(label)} ".startswith(f"{own} ")
        if not (opens_with_own or (named in (None, letter) and _EXPLAINS.match(rest))):
            return None
    return letter


def extract_choice(answer_text: str, options: Mapping[str, str] | Sequence[str]) -> str | None:
    """The option letter the answer part picks, or None (no answer or several answers).

    Explicit statements (boxed, "Answer: X", "the answer is X", "B is correct") decide, and
    when a response states several, the last one that names an option is its final answer
    (models restate, correct themselves, or quote "the answer" in their reasoning); a last
    statement naming several options ("A, B, or C") is no answer. Without statements: a
    letter the last sentence marks ("… (B).", "B. Ceftriaxone"), a short first line ("B"
    followed by an explanation), the one letter marked anywhere, the last sentence when it
    names exactly one option (by letter or text), and a short text naming one option's text.
    """
    return read_choice(answer_text, options)[0]


class Reading(StrEnum):
    """How an answer was read (reported per benchmark and model)."""

    STRUCTURED = "structured field"
    """An answer field of a JSON reply."""
    STATEMENT = "statement"
    """An explicit statement: "Answer: B", "the answer is B", boxed, a "Final Answer" heading."""
    ANSWER_FIRST = "answer-first"
    """The reply opens with its answer ("B. Ceftriaxone", then discussion)."""
    INFERRED = "inferred"
    """No statement: the closing sentence, a short first line, the one option mentioned."""
    UNANSWERED = "unanswered"
    """No answer, or several (a hedge)."""


def read_choice(
    answer_text: str, options: Mapping[str, str] | Sequence[str]
) -> tuple[str | None, Reading]:
    """:func:`extract_choice` and how the answer was read."""
    opts = option_map(options)
    text = _QUOTED_LETTER.sub(r"\2", answer_text.translate(_QUOTES)).strip()
    fields = [value for value in _structured_answers(text) if not _PLACEHOLDER.match(value)]
    for value in reversed(fields):
        picked = _choice_from_statement(value, opts) or _from_statements(value, opts)
        if picked is not None:
            return (
                (None, Reading.UNANSWERED) if picked == _AMBIGUOUS else (picked, Reading.STRUCTURED)
            )
    if fields:
        # The reply filled its answer field with no option ("None of the above", "Cannot be
        # determined"): its reasoning field, which weighs options, must not answer for it.
        return None, Reading.UNANSWERED
    text = _cut_runaway(text, opts)
    if not text:
        return None, Reading.UNANSWERED
    picked = _from_statements(text, opts)
    if picked is not None:
        return (None, Reading.UNANSWERED) if picked == _AMBIGUOUS else (picked, Reading.STATEMENT)
    if _SEVERAL_LETTERS.match(strip_markup(_first_line(text))):
        return None, Reading.UNANSWERED  # opens with a hedge ("A or B. …") and states nothing
    first = _answer_first(text, opts)
    if first is not None:
        return first, Reading.ANSWER_FIRST
    inferred = _inferred(text, opts)
    return (inferred, Reading.INFERRED) if inferred else (None, Reading.UNANSWERED)


def _from_statements(text: str, opts: Mapping[str, str]) -> str | None:
    """The letter the last statement naming an option picks; ``_AMBIGUOUS`` for a hedge
    (unless the closing sentence settles it); None without a statement naming an option."""
    last = _last_sentence(text)
    for _, value in reversed(_statement_spans(text)):
        picked = _choice_from_statement(value, opts)
        if picked == _AMBIGUOUS and value not in _last_line(text):
            # "The answer is A or C. On balance, (C) fits best.": the closing sentence decides.
            return _choice_from_last_sentence(last, opts) or _AMBIGUOUS
        if picked is not None:
            return picked
    return None


def _inferred(text: str, opts: Mapping[str, str]) -> str | None:
    """Without a statement: the closing sentence's marked letter, a short first line, the one
    letter marked anywhere, the option the closing sentence names, a short text's option."""
    last = _last_sentence(text)
    marked_last = _marked_in_sentence(last, opts)
    if len(marked_last) == 1:
        return marked_last.pop()
    first = _first_line(text)
    if len(first.split()) <= 12:
        from_first = _choice_from_line(first, opts)
        if from_first is not None:
            return from_first
    mentioned = _mentioned_letters(text, opts)
    if len(mentioned) == 1:
        return mentioned.pop()
    from_last = _choice_from_last_sentence(last, opts)
    if from_last is not None:
        return from_last
    if mentioned:
        return None
    return _option_by_text(text, opts) if len(text.split()) <= 40 else None


# ---------------------------------------------------------------------------------------------
# closed label sets (yes/no/maybe, classification labels)
# ---------------------------------------------------------------------------------------------

YES_NO_MAYBE = ("yes", "no", "maybe")


def _label_from_value(value: str, labels: Sequence[str]) -> str | None:
    norm = normalize_answer(value)
    by_norm = {normalize_answer(label): label for label in labels}
    if norm in by_norm:
        return by_norm[norm]
    padded = f" {norm} "
    hits = [n for n in by_norm if n and f" {n} " in padded]
    if not hits:
        return None
    longest = max(hits, key=len)
    if all(f" {h} " in f" {longest} " for h in hits):
        return by_norm[longest]
    return _AMBIGUOUS  # "yes or no": several labels


def extract_label(answer_text: str, labels: Sequence[str]) -> str | None:
    """Which of ``labels`` the answer names (returned in its given spelling), or None.

    The last explicit statement that names a label decides (as for options); one naming
    several ("yes or no") is no answer. Without statements, the first line of the answer part
    when it names exactly one label. Labels contained in a longer matched label ("tumor" in
    "no tumor") do not count as a second answer.
    """
    for statement in reversed(answer_statements(answer_text)):
        label = _label_from_value(statement, labels)
        if label is not None:
            return None if label == _AMBIGUOUS else label
    first = _first_line(answer_text)
    if not first:
        return None
    # "Yes, the lesion …": a label leading the first line is the answer.
    lead = normalize_answer(first).split(" ")
    by_norm = {normalize_answer(label): label for label in labels}
    for size in range(min(4, len(lead)), 0, -1):
        candidate = " ".join(lead[:size])
        if candidate in by_norm:
            return by_norm[candidate]
    label = _label_from_value(first, labels) if len(first.split()) <= 12 else None
    return None if label == _AMBIGUOUS else label


def extract_yes_no(answer_text: str, *, allow_maybe: bool = True) -> str | None:
    """ "yes", "no" or (when allowed) "maybe", or None."""
    labels = YES_NO_MAYBE if allow_maybe else YES_NO_MAYBE[:2]
    return extract_label(answer_text, labels)


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------


def parse_number(text: str) -> float | None:
    """The first number in ``text`` ("1,250", "-3.5e2", "3/4", "45%"), or None."""
    match = _NUMBER.search(strip_markup(text))
    if not match:
        return None
    token = match.group(0).replace(",", "").replace(" ", "")
    if "/" in token:
        num, den = token.split("/")
        return float(num) / float(den) if float(den) != 0 else None
    return float(token)


def extract_number(answer_text: str) -> float | None:
    """The numeric answer: the last explicit statement with a number, else the last number."""
    for statement in reversed(answer_statements(answer_text)):
        number = parse_number(statement)
        if number is not None:
            return number
    numbers = _NUMBER.findall(strip_markup(answer_text))
    return parse_number(numbers[-1]) if numbers else None


def match_numeric(
    prediction: float | None, gold: float, *, rel_tol: float = 1e-2, abs_tol: float = 1e-6
) -> bool:
    """Numeric match within a relative (default 1 %) or absolute tolerance."""
    return prediction is not None and math.isclose(
        prediction, gold, rel_tol=rel_tol, abs_tol=abs_tol
    )


# ---------------------------------------------------------------------------------------------
# open answers
# ---------------------------------------------------------------------------------------------


def extract_open(answer_text: str) -> str | None:
    """The free-text answer: the last explicit statement, else the first line."""
    statements = [s for s in answer_statements(answer_text) if normalize_answer(s)]
    if statements:
        return strip_markup(statements[-1])
    first = _first_line(answer_text)
    return first or None


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between normalised prediction and gold (the VQA open-answer metric)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def match_open(prediction: str | None, gold: str) -> tuple[bool, float]:
    """(exact match after normalisation, token F1) of an open answer; None scores (False, 0)."""
    if prediction is None:
        return False, 0.0
    return normalize_answer(prediction) == normalize_answer(gold), token_f1(prediction, gold)


# ---------------------------------------------------------------------------------------------
# one entry point for both eval and curation
# ---------------------------------------------------------------------------------------------


class AnswerKind(StrEnum):
    """How an item's answer is extracted and matched."""

    CHOICE = "choice"
    """Lettered options; gold is the letter (or the option text)."""
    YES_NO = "yes_no"
    """yes / no / maybe (PubMedQA, closed VQA)."""
    LABEL = "label"
    """One of a closed set of class labels, named by text (options give the label set)."""
    NUMERIC = "numeric"
    """A number, matched within a tolerance."""
    OPEN = "open"
    """Free text: exact match after normalisation for accuracy, token F1 as a soft score."""


@dataclass(frozen=True)
class Grade:
    """The verdict on one response."""

    prediction: str | None
    """The extracted answer in canonical form (letter, label, number, text); None: unparseable."""
    correct: bool
    """Whether it matches the gold answer (always False when prediction is None)."""
    score: float
    """1.0/0.0 for closed kinds; token F1 for open answers."""
    reading: str = Reading.UNANSWERED.value
    """How the answer was read (a :class:`Reading`; "think + " in front when the response
    reasoned in a closed think block first)."""

    @property
    def parsed(self) -> bool:
        """Whether an answer could be extracted at all."""
        return self.prediction is not None


def grade_answer(
    answer_text: str,
    gold: str,
    kind: AnswerKind | str,
    options: Mapping[str, str] | Sequence[str] | None = None,
    *,
    rel_tol: float = 1e-2,
) -> Grade:
    """Extract the answer from an answer part (text after the think block) and match it."""
    kind = AnswerKind(kind)
    if kind is AnswerKind.CHOICE:
        if not options:
            raise ValueError("a multiple-choice item needs options")
        opts = option_map(options)
        gold_letter = gold.strip().upper() if gold.strip().upper() in opts else None
        gold_letter = gold_letter or _option_by_text(gold, opts)
        if gold_letter is None:
            raise ValueError("the gold answer names no option")
        pred, reading = read_choice(answer_text, opts)
        return replace(_closed(pred, pred == gold_letter), reading=reading.value)
    if kind is AnswerKind.YES_NO:
        pred = extract_yes_no(answer_text)
        return _read(
            _closed(pred, pred is not None and pred == normalize_answer(gold)), answer_text
        )
    if kind is AnswerKind.LABEL:
        labels = list(option_map(options).values()) if options else []
        if not labels:
            raise ValueError("a label item needs its label set as options")
        pred = extract_label(answer_text, labels)
        return _read(
            _closed(pred, pred is not None and normalize_answer(pred) == normalize_answer(gold)),
            answer_text,
        )
    if kind is AnswerKind.NUMERIC:
        gold_number = parse_number(gold)
        if gold_number is None:
            raise ValueError("the gold answer is not a number")
        number = extract_number(answer_text)
        pred = None if number is None else f"{number:g}"
        return _read(
            _closed(pred, match_numeric(number, gold_number, rel_tol=rel_tol)), answer_text
        )
    text = extract_open(answer_text)
    exact, f1 = match_open(text, gold)
    return _read(Grade(text, exact, f1), answer_text)


def _read(grade: Grade, answer_text: str) -> Grade:
    """The reading of a grade of a kind other than choice: a statement when there is one."""
    if grade.prediction is None:
        return grade
    reading = Reading.STATEMENT if answer_statements(answer_text) else Reading.INFERRED
    return replace(grade, reading=reading.value)


def grade_response(
    response: str,
    gold: str,
    kind: AnswerKind | str,
    options: Mapping[str, str] | Sequence[str] | None = None,
    *,
    opened_in_prompt: bool = False,
    rel_tol: float = 1e-2,
) -> Grade:
    """Grade a full generation: split off the think block, then :func:`grade_answer`.

    An unclosed think block has no answer part and grades as unparseable.
    """
    split = split_think_answer(response, opened_in_prompt=opened_in_prompt)
    grade = grade_answer(split.answer, gold, kind, options, rel_tol=rel_tol)
    if split.think and grade.parsed:
        return replace(grade, reading=f"think + {grade.reading}")
    return grade


def _closed(prediction: str | None, correct: bool) -> Grade:
    correct = bool(correct and prediction is not None)
    return Grade(prediction, correct, float(correct))
