"""The canonical benchmark item every loader produces and every later step consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from medsft_pipelines.answers import AnswerKind

if TYPE_CHECKING:
    from .files import BenchmarkFiles

Distribution = Literal["in", "out"]

#: An image of an item: a key relative to the benchmark's root (a file next to the data), or
#: the encoded image itself (parquet exports embed PNG/JPEG bytes).
ImageRef = str | bytes


class Family(StrEnum):
    """The task families the paper averages over."""

    TEXT = "text"
    """Text-only medical QA (MedQA, MedMCQA, PubMedQA …)."""
    MM_REASONING = "mm_reasoning"
    """Image + text reasoning and VQA (MMMU-Pro, NEJM, PMC-VQA, VQA-RAD …)."""
    CLASSIFICATION = "classification"
    """Image classification posed as a question with the class labels as options."""


@dataclass(frozen=True)
class BenchItem:
    """One evaluation item, whatever benchmark it came from."""

    id: str
    """Identifier unique within the benchmark (the benchmark's own id when it has one)."""
    question: str
    """The question text, without the options (templates render options themselves)."""
    answer: str
    """Gold answer: the option letter for choice items, the text for open ones."""
    kind: AnswerKind
    """How the answer is extracted and matched (see :mod:`medsft_pipelines.answers`)."""
    options: dict[str, str] = field(default_factory=dict)
    """Options as ``{letter: text}`` in display order; empty for open questions."""
    images: tuple[ImageRef, ...] = ()
    """Images in the order the question refers to them."""
    context: str = ""
    """Extra material shown before the question (PubMedQA abstracts)."""
    meta: dict[str, str] = field(default_factory=dict)
    """Benchmark-specific descriptors (subject, question type …), never used for scoring."""

    def to_dict(self) -> dict:
        """JSON-friendly view (inline images are summarised by size)."""
        return {
            "id": self.id,
            "question": self.question,
            "answer": self.answer,
            "kind": self.kind.value,
            "options": self.options,
            "images": [
                i if isinstance(i, str) else f"<inline {len(i)} bytes>" for i in self.images
            ],
            "context": self.context,
            "meta": self.meta,
        }


@dataclass(frozen=True)
class Benchmark:
    """A loaded benchmark: its items plus what the report needs to know about it."""

    name: str
    """Registry name (``medqa``, ``vqa-rad`` …)."""
    split: str
    """The split the items come from."""
    family: Family
    """Task family, for family means."""
    distribution: Distribution
    """Whether the benchmark is in- or out-of-distribution for the model under test."""
    items: tuple[BenchItem, ...]
    """The items, in the benchmark's order."""
    root: str
    """URI of the folder the files were read from (images resolve against it)."""
    files: BenchmarkFiles = field(repr=False, compare=False)
    """Access to the benchmark's files, for images referenced by key."""

    def __len__(self) -> int:
        return len(self.items)

    def image_bytes(self, ref: ImageRef) -> bytes:
        """The encoded bytes of one image of an item."""
        return ref if isinstance(ref, bytes) else self.files.read_bytes(ref)
