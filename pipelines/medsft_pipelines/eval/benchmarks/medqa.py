"""MedQA (USMLE): 4- or 5-option clinical vignettes.

Published files (github.com/jind11/MedQA, ``data_clean/questions/US/``): JSON lines of
``{question, options: {A: …}, answer, answer_idx, meta_info}``: ``test.jsonl`` (5 options)
or ``4_options/phrases_no_exclude_test.jsonl`` (the usual 4-option benchmark); the
GBaker/MedQA-USMLE-4-options parquet export has the same columns.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..files import BenchmarkFiles
from ..items import BenchItem, Family
from ..loaders import choice_item
from ..registry import BenchmarkInfo, register


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    key = files.find_split(
        split,
        [
            "4_options/phrases_no_exclude_{split}",
            "phrases_no_exclude_{split}",
            "{split}",
            "data/{split}-00000-of-00001",
        ],
        [".jsonl", ".parquet"],
    )
    for index, row in enumerate(files.read_rows(key)):
        options = {k.strip(): str(v).strip() for k, v in row["options"].items() if v is not None}
        yield choice_item(
            row.get("id", f"{split}-{index}"),
            row["question"],
            options,
            row["answer_idx"],
            meta={"step": row.get("meta_info")},
        )


register(
    BenchmarkInfo(
        name="medqa",
        family=Family.TEXT,
        load=load,
        distribution="in",
        description="MedQA USMLE (jind11/MedQA questions/US jsonl, 4 or 5 options)",
    )
)
