"""HEAD-QA: Spanish healthcare specialisation exams (English translation), 4-5 options.

Published files (github.com/aghie/head-qa, ``HEAD_EN/``): ``<split>_HEAD_EN.json`` (or
``HEAD_EN.json``), ``{"exams": {name: {"category", "year", "data": [{qid, qtext, ra,
image, answers: [{aid, atext}]}]}}}``; the dvilares/head_qa parquet export has one row per
question with the same fields plus ``name``/``category``. ``ra`` is the right ``aid``.
Questions that need an image are left out: this is the text benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from medsft_pipelines.answers import OPTION_LETTERS

from ..files import BenchmarkFiles, BenchmarkFormatError
from ..items import BenchItem, Family
from ..loaders import choice_item
from ..registry import BenchmarkInfo, register


def _rows(files: BenchmarkFiles, split: str) -> Iterator[dict[str, Any]]:
    key = files.find(
        f"{split}_HEAD_EN.json",
        f"HEAD_EN/{split}_HEAD_EN.json",
        f"{split}.jsonl",
        f"{split}.parquet",
        f"en/{split}-00000-of-00001.parquet",
    )
    if key.endswith(".json"):
        for exam_name, exam in files.read_json(key)["exams"].items():
            for row in exam["data"]:
                yield {**row, "name": exam_name, "category": exam.get("category")}
    else:
        yield from files.read_rows(key)


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    for row in _rows(files, split):
        if row.get("image"):
            continue
        answers = sorted(row["answers"], key=lambda a: int(a["aid"]))
        options = {OPTION_LETTERS[i]: a["atext"].strip() for i, a in enumerate(answers)}
        right = [i for i, a in enumerate(answers) if int(a["aid"]) == int(row["ra"])]
        if len(right) != 1:
            raise BenchmarkFormatError(f"headqa: question {row['qid']} has no single right answer")
        yield choice_item(
            f"{row['name']}-{row['qid']}",
            row["qtext"],
            options,
            OPTION_LETTERS[right[0]],
            meta={"category": row.get("category")},
        )


register(
    BenchmarkInfo(
        name="headqa",
        family=Family.TEXT,
        load=load,
        distribution="in",
        description="HEAD-QA English (HEAD_EN/<split>_HEAD_EN.json or the parquet export)",
    )
)
