"""MedMCQA: Indian medical entrance exam questions, 4 options.

Published files (medmcqa.github.io data release): JSON lines ``train.json``/``dev.json``/
``test.json`` of ``{id, question, opa, opb, opc, opd, cop, subject_name, …}`` where ``cop``
is 1-4; the test split has no answers, so the published evaluation uses ``dev`` (``test``
here reads ``dev.json`` when ``test.json`` carries no answers). The openlifescienceai/medmcqa
parquet export numbers ``cop`` 0-3.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..files import BenchmarkFiles, BenchmarkFormatError
from ..items import BenchItem, Family
from ..loaders import choice_item, letter_of, lettered
from ..registry import BenchmarkInfo, register


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    names = {"test": ["test", "dev", "validation"], "dev": ["dev", "validation"]}.get(
        split, [split]
    )
    candidates = [n + ext for n in names for ext in (".json", ".jsonl", ".parquet")]
    candidates += [f"data/{n}-00000-of-00001.parquet" for n in names]
    existing = [c for c in candidates if files.exists(c)]
    if not existing:
        files.find(*candidates)  # raises, naming every file looked for
    for key in existing:
        rows = files.read_rows(key)
        zero_based = key.endswith(".parquet")
        labelled = [r for r in rows if r.get("cop") not in (None, "", -1)]
        if not labelled:
            continue  # the unlabelled official test split: fall through to dev
        for row in labelled:
            options = lettered([row["opa"], row["opb"], row["opc"], row["opd"]])
            index = int(row["cop"]) - (0 if zero_based else 1)
            yield choice_item(
                row["id"],
                row["question"],
                options,
                letter_of(index, options),
                meta={"subject": row.get("subject_name")},
            )
        return
    raise BenchmarkFormatError(f"medmcqa: no labelled file for split {split!r} under {files.uri}")


register(
    BenchmarkInfo(
        name="medmcqa",
        family=Family.TEXT,
        load=load,
        distribution="in",
        description="MedMCQA (dev.json JSON lines, cop 1-4; parquet export cop 0-3)",
    )
)
