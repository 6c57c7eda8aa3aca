"""MMMU-Pro (standard, 10 options), health subjects.

Published files (huggingface.co/datasets/MMMU/MMMU_Pro, ``standard (10 options)/``):
``test-*.parquet`` with ``id, question, options`` (a Python list literal as text),
``answer`` (letter), ``subject`` and ``image_1`` … ``image_7`` (``{bytes, path}`` cells);
the question refers to them as ``<image 1>`` …. Health subjects are MMMU's Health &
Medicine discipline.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from ..files import BenchmarkFiles
from ..items import BenchItem, Family
from ..loaders import choice_item, inline_image, lettered
from ..registry import BenchmarkInfo, register

HEALTH_SUBJECTS = frozenset(
    {
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    }
)


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    folder = "standard (10 options)"
    keys = [k for k in files.keys(f"{folder}/") if k.endswith(".parquet") and split in k]
    keys = keys or [files.find(f"{split}.parquet", f"{folder}/{split}-00000-of-00001.parquet")]
    for key in keys:
        for row in files.read_rows(key):
            if row["subject"] not in HEALTH_SUBJECTS:
                continue
            options = row["options"]
            options = ast.literal_eval(options) if isinstance(options, str) else options
            images = tuple(
                image for n in range(1, 8) if (image := inline_image(row.get(f"image_{n}")))
            )
            yield choice_item(
                row["id"],
                row["question"],
                lettered(options),
                row["answer"],
                images=images,
                meta={"subject": row["subject"]},
            )


register(
    BenchmarkInfo(
        name="mmmu-pro-health",
        family=Family.MM_REASONING,
        load=load,
        distribution="out",
        description="MMMU-Pro standard 10 options, Health & Medicine subjects (parquet, inline images)",
    )
)
