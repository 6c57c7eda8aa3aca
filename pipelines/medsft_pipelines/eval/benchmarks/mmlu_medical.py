"""MMLU medical subjects: anatomy, clinical knowledge, college biology/medicine, medical
genetics, professional medicine (4 options).

Published files: the original release (people.eecs.berkeley.edu/~hendrycks/data.tar)
``<split>/<subject>_<split>.csv`` without header (question, A, B, C, D, answer letter), or
the cais/mmlu parquet export ``<subject>/<split>-00000-of-00001.parquet`` (question,
subject, choices, answer index).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from ..files import BenchmarkFiles
from ..items import BenchItem, Family
from ..loaders import choice_item, letter_of, lettered
from ..registry import BenchmarkInfo, register

SUBJECTS = (
    "anatomy",
    "clinical_knowledge",
    "college_biology",
    "college_medicine",
    "medical_genetics",
    "professional_medicine",
)


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    for subject in SUBJECTS:
        key = files.find(
            f"{split}/{subject}_{split}.csv", f"{subject}/{split}-00000-of-00001.parquet"
        )
        if key.endswith(".csv"):
            text = files.read_bytes(key).decode("utf-8")
            # No header: question, A, B, C, D, answer letter.
            for index, cells in enumerate(csv.reader(io.StringIO(text))):
                yield choice_item(
                    f"{subject}-{index}",
                    cells[0],
                    lettered(cells[1:5]),
                    cells[5],
                    meta={"subject": subject},
                )
        else:
            for index, row in enumerate(files.read_rows(key)):
                options = lettered(row["choices"])
                yield choice_item(
                    f"{subject}-{index}",
                    row["question"],
                    options,
                    letter_of(int(row["answer"]), options),
                    meta={"subject": subject},
                )


register(
    BenchmarkInfo(
        name="mmlu-medical",
        family=Family.TEXT,
        load=load,
        distribution="out",
        description="MMLU medical subjects (<split>/<subject>_<split>.csv or cais/mmlu parquet)",
    )
)
