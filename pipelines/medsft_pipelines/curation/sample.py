"""The canonical sample every source is mapped to, and the rows the pipeline writes.

A :class:`Sample` is one *question* (with its images and any imported traces); after
rejection sampling it becomes one output row per kept trace. The output row schema
(:data:`ROW_SCHEMA`) is what the SFT trainer reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

ImageRef = bytes | str
"""An image as read from a source: inline encoded bytes, or a path/URI to fetch."""


@dataclass(frozen=True)
class ProcessedImage:
    """An image after the images step: decoded, normalised, resized, re-encoded if needed."""

    data: bytes
    """Encoded image (PNG/JPEG/WebP) as stored in the shards."""
    sha256: str
    """sha256 of the decoded pixels before resizing: equal for re-encoded copies."""
    file_sha256: str
    """sha256 of the bytes as read from the source (exact-file identity)."""
    width: int
    """Width after resizing."""
    height: int
    """Height after resizing."""


@dataclass
class Sample:
    """One question in the canonical schema."""

    id: str
    """Globally unique id: ``<source>/<row id>``."""
    source: str
    """Name of the source it came from."""
    task_type: str
    """mcq | open | classification | report."""
    modality: str
    """text | image."""
    question: str
    """The question text."""
    answer: str
    """Ground truth; for multiple choice canonicalised to the option letter."""
    options: list[str] = field(default_factory=list)
    """Option texts, lettered A, B, C... in order; empty for open questions."""
    context: str = ""
    """Optional context shown before the question (e.g. an abstract)."""
    image_refs: list[ImageRef] = field(default_factory=list)
    """Images as read from the source (inline bytes or references)."""
    traces: list[str] = field(default_factory=list)
    """Imported traces (``tracesFrom``); empty when a teacher generates them."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Extra JSON-able columns copied from the source."""
    order: tuple[int, int] = (0, 0)
    """(source index, row index): the canonical order used by every keep-first decision."""
    images: list[ProcessedImage] = field(default_factory=list)
    """Filled by the images step."""
    question_hash: str = ""
    """Exact-duplicate key (normalised text + image identity), filled by the dedup step."""

    def prompt_text(self) -> str:
        """Everything a reader of the question sees as text: context, question, options."""
        parts = [self.context, self.question, *self.options]
        return "\n".join(p for p in parts if p)


# One output row per kept trace: the contract with the SFT trainer (sft/data.py reads ``id``,
# ``images`` and ``messages``; the rest is for people, reports and filtering).
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
# Images are dictionary-encoded: the K rows of one question share one copy of its image bytes
# in memory and in the Parquet files; readers see plain ``bytes`` (``to_pylist``).
IMAGES_TYPE = pa.list_(pa.dictionary(pa.int32(), pa.binary()))
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question_id", pa.string()),
        ("source", pa.string()),
        ("task_type", pa.string()),
        ("modality", pa.string()),
        ("images", IMAGES_TYPE),
        ("image_sha256", pa.list_(pa.string())),
        ("question", pa.string()),
        ("context", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("n_tokens", pa.int32()),
        ("trace_tokens", pa.int32()),
        ("trace_index", pa.int32()),
        ("teacher", pa.string()),
        ("metadata", pa.string()),
    ]
)
"""Schema of the rows of worker partials and of the final shards."""

# One record per question that a worker finished (with or without kept traces): what the
# merge needs for its global decisions, without reading a single image.
QUESTION_SCHEMA = pa.schema(
    [
        ("question_id", pa.string()),
        ("source", pa.string()),
        ("source_index", pa.int32()),
        ("row_index", pa.int64()),
        ("task_type", pa.string()),
        ("answer", pa.string()),
        ("question_hash", pa.string()),
        ("prompt_text", pa.string()),
        ("image_ids", pa.list_(pa.string())),
        ("trace_index", pa.list_(pa.int32())),
        ("n_tokens", pa.list_(pa.int32())),
        ("trace_tokens", pa.list_(pa.int32())),
    ]
)
"""Schema of the per-worker question records (``trace_index`` etc.: one entry per kept row)."""
