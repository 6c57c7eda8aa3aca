"""MMLU-Pro, health category: 10-option professional-level questions.

Published files (huggingface.co/datasets/TIGER-Lab/MMLU-Pro): ``data/test-00000-of-00001.parquet``
with columns ``question_id, question, options (list), answer (letter), answer_index,
category, src``; only ``category == "health"`` rows are kept.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..files import BenchmarkFiles
from ..items import BenchItem, Family
from ..loaders import choice_item, lettered
from ..registry import BenchmarkInfo, register


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    key = files.find_split(
        split, ["data/{split}-00000-of-00001", "{split}"], [".parquet", ".jsonl"]
    )
    for row in files.read_rows(key):
        if row["category"] != "health":
            continue
        options = lettered([o for o in row["options"] if str(o).strip() and o != "N/A"])
        yield choice_item(
            row["question_id"],
            row["question"],
            options,
            row["answer"],
            meta={"source": row.get("src")},
        )


register(
    BenchmarkInfo(
        name="mmlu-pro-health",
        family=Family.TEXT,
        load=load,
        distribution="out",
        description="MMLU-Pro health category (data/test-*.parquet, up to 10 options)",
    )
)
