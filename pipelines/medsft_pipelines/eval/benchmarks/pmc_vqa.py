"""PMC-VQA: multiple-choice questions on figures from PubMed Central papers, 4 options.

Published files (huggingface.co/datasets/xiaoman-zhang/PMC-VQA): ``test_2.csv`` (the
cleaned test set; ``test.csv`` older) with columns ``Figure_path, Question, Answer,
Choice A … Choice D, Answer_label``; choices are written ``"A:text"``; images in
``images/`` (``images_2/`` for version 2 in some mirrors).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..files import BenchmarkFiles
from ..items import BenchItem, Family
from ..loaders import choice_item
from ..registry import BenchmarkInfo, register

_PREFIX = re.compile(r"^\s*[A-D]\s*[:.]\s*")


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    key = files.find(f"{split}_2.csv", f"{split}_clean.csv", f"{split}.csv")
    image_dir = "images_2" if files.keys("images_2/") else "images"
    for index, row in enumerate(files.read_rows(key)):
        options = {letter: _PREFIX.sub("", row[f"Choice {letter}"]).strip() for letter in "ABCD"}
        yield choice_item(
            row.get("index") or f"{split}-{index}",
            row["Question"],
            options,
            row["Answer_label"],
            images=(f"{image_dir}/{row['Figure_path']}",),
        )


register(
    BenchmarkInfo(
        name="pmc-vqa",
        family=Family.MM_REASONING,
        load=load,
        distribution="in",
        description="PMC-VQA (test_2.csv + images/, 4 options)",
    )
)
