"""NEJM Image Challenge: a clinical image, a one-line question, 5 options.

There is no official dump; the format read here is the one of the public scrapes used in
published evaluations (one row per challenge): ``<split>.jsonl``/``.json``/``.csv`` with
``id`` (or ``date``), ``question``, options as ``option_A`` … ``option_E`` (or an
``options`` dict), ``answer`` (letter) and ``image`` (file name under ``images/``).
"""

from __future__ import annotations

from collections.abc import Iterator

from medsft_pipelines.answers import OPTION_LETTERS

from ..files import BenchmarkFiles
from ..items import BenchItem, Family
from ..loaders import choice_item
from ..registry import BenchmarkInfo, register


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    key = files.find_split(split, ["{split}"], [".jsonl", ".json", ".csv"])
    for row in files.read_rows(key):
        options = row.get("options") or {
            letter: row[f"option_{letter}"]
            for letter in OPTION_LETTERS
            if str(row.get(f"option_{letter}") or "").strip()
        }
        yield choice_item(
            row.get("id") or row["date"],
            row["question"],
            {k: str(v).strip() for k, v in options.items()},
            row["answer"],
            images=(f"images/{row['image']}",),
        )


register(
    BenchmarkInfo(
        name="nejm",
        family=Family.MM_REASONING,
        load=load,
        distribution="out",
        description="NEJM Image Challenge (<split>.jsonl|csv rows with option_A..E + images/)",
    )
)
