"""MedXpertQA: expert-level text (10 options) and multimodal (5 options) questions.

Published files (huggingface.co/datasets/TsinghuaC3I/MedXpertQA): ``Text/test.jsonl`` and
``MM/test.jsonl`` of ``{id, question, options: {A: …}, label, images: [file], medical_task,
body_system, question_type}``, images in ``images/``. The question repeats the options after
"Answer Choices:"; that tail is dropped because templates render the options.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..files import BenchmarkFiles
from ..items import BenchItem, Family
from ..loaders import choice_item, strip_choices_suffix
from ..registry import BenchmarkInfo, register


def _loader(subset: str):
    def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
        key = files.find(f"{subset}/{split}.jsonl", f"{split}.jsonl")
        for row in files.read_rows(key):
            images = tuple(f"images/{name}" for name in row.get("images") or [])
            yield choice_item(
                row["id"],
                strip_choices_suffix(row["question"]),
                row["options"],
                row["label"],
                images=images,
                meta={
                    "task": row.get("medical_task"),
                    "system": row.get("body_system"),
                    "type": row.get("question_type"),
                },
            )

    return load


register(
    BenchmarkInfo(
        name="medxpertqa-text",
        family=Family.TEXT,
        load=_loader("Text"),
        distribution="out",
        description="MedXpertQA Text (Text/test.jsonl, 10 options)",
    )
)
register(
    BenchmarkInfo(
        name="medxpertqa-mm",
        family=Family.MM_REASONING,
        load=_loader("MM"),
        distribution="out",
        description="MedXpertQA MM (MM/test.jsonl + images/, 5 options)",
    )
)
