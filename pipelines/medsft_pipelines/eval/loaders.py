"""Small helpers shared by the benchmark loaders (one module per benchmark)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from medsft_pipelines.answers import OPTION_LETTERS, AnswerKind

from .files import BenchmarkFileMissing, BenchmarkFiles, BenchmarkFormatError
from .items import BenchItem

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
YES_NO_MAYBE_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}
YES_NO_OPTIONS = {"A": "yes", "B": "no"}

# "… Answer Choices: (A) x (B) y" — MedXpertQA and others repeat the options in the question.
_CHOICES_SUFFIX = re.compile(r"\s*Answer Choices:.*\Z", re.DOTALL)


def lettered(options: Sequence[str]) -> dict[str, str]:
    """``["x", "y"]`` -> ``{"A": "x", "B": "y"}``."""
    if len(options) > len(OPTION_LETTERS):
        raise BenchmarkFormatError(
            f"{len(options)} options; at most {len(OPTION_LETTERS)} supported"
        )
    return {OPTION_LETTERS[i]: str(text).strip() for i, text in enumerate(options)}


def letter_of(index: int, options: Mapping[str, str]) -> str:
    """The letter of the 0-based option ``index``; format error when out of range."""
    if not 0 <= index < len(options):
        raise BenchmarkFormatError(f"answer index {index} out of range for {len(options)} options")
    return OPTION_LETTERS[index]


def strip_choices_suffix(question: str) -> str:
    """Drop an "Answer Choices: (A) …" tail: templates render the options themselves."""
    return _CHOICES_SUFFIX.sub("", question).strip()


def choice_item(
    item_id: Any,
    question: str,
    options: Mapping[str, str],
    answer: str,
    *,
    images: tuple[str | bytes, ...] = (),
    context: str = "",
    meta: Mapping[str, Any] | None = None,
) -> BenchItem:
    """A multiple-choice item; ``answer`` must be one of the option letters."""
    answer = str(answer).strip().upper()
    if answer not in options:
        raise BenchmarkFormatError(f"item {item_id}: answer {answer!r} is not an option letter")
    return BenchItem(
        id=str(item_id),
        question=str(question).strip(),
        answer=answer,
        kind=AnswerKind.CHOICE,
        options=dict(options),
        images=images,
        context=context,
        meta={k: str(v) for k, v in (meta or {}).items() if v not in (None, "")},
    )


def yes_no_or_open_item(
    item_id: Any, question: str, answer: Any, *, image: str, meta: Mapping[str, Any]
) -> BenchItem:
    """A radiology VQA question with one image (SLAKE, VQA-RAD): a yes/no answer makes a
    two-option choice item, any other answer an open one."""
    answer = str(answer).strip()
    if answer.lower() in ("yes", "no"):
        letter = "A" if answer.lower() == "yes" else "B"
        return choice_item(item_id, question, YES_NO_OPTIONS, letter, images=(image,), meta=meta)
    return BenchItem(
        id=str(item_id),
        question=question.strip(),
        answer=answer,
        kind=AnswerKind.OPEN,
        images=(image,),
        meta={k: str(v) for k, v in meta.items() if v},
    )


def image_folder_items(
    files: BenchmarkFiles, split_dir: str, labels: Mapping[str, str], question: str
) -> Iterator[BenchItem]:
    """Items from an ImageFolder tree ``<split_dir>/<class folder>/<image>`` (Kaggle style).

    ``labels`` maps each class folder name to its display label; the options are the labels
    in that order, so the prompt is the same for every item.
    """
    options = lettered(list(labels.values()))
    letter_by_folder = {folder: OPTION_LETTERS[i] for i, folder in enumerate(labels)}
    keys = files.keys(f"{split_dir}/")
    if not keys:
        raise BenchmarkFileMissing(
            f"benchmark {files.benchmark}: no files under {files.uri}{split_dir}/"
        )
    for key in keys:
        folder = posixpath.basename(posixpath.dirname(key))
        if posixpath.splitext(key)[1].lower() not in IMAGE_EXTS:
            continue
        if folder not in letter_by_folder:
            raise BenchmarkFormatError(
                f"{files.benchmark}: unknown class folder {folder!r} in {key}"
            )
        item_id = posixpath.relpath(key, split_dir)
        yield choice_item(item_id, question, options, letter_by_folder[folder], images=(key,))


def inline_image(value: Any) -> bytes | None:
    """Image bytes from a parquet image cell (``{"bytes": …, "path": …}``) or None."""
    if isinstance(value, dict) and value.get("bytes"):
        return bytes(value["bytes"])
    if isinstance(value, bytes | bytearray) and value:
        return bytes(value)
    return None
