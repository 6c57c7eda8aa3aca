"""PubMedQA (PQA-L): yes/no/maybe questions over a PubMed abstract.

Published files (github.com/pubmedqa/pubmedqa, ``data/``): ``ori_pqal.json`` — a dict from
PMID to ``{QUESTION, CONTEXTS[], final_decision, LONG_ANSWER, …}`` — and
``test_ground_truth.json`` — ``{PMID: label}`` for the 500-item test split. Split ``test``
is those 500; ``all`` is the 1,000 labelled items.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..files import BenchmarkFiles, BenchmarkFormatError
from ..items import BenchItem, Family
from ..loaders import YES_NO_MAYBE_OPTIONS, choice_item
from ..registry import BenchmarkInfo, register

_LETTER = {text: letter for letter, text in YES_NO_MAYBE_OPTIONS.items()}


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    labelled = files.read_json(files.find("ori_pqal.json", "data/ori_pqal.json"))
    if split == "all":
        ids = list(labelled)
    elif split == "test":
        ids = list(
            files.read_json(files.find("test_ground_truth.json", "data/test_ground_truth.json"))
        )
    else:
        raise BenchmarkFormatError(f"pubmedqa: split {split!r} unknown (test, all)")
    for pmid in ids:
        if pmid not in labelled:
            raise BenchmarkFormatError(f"pubmedqa: test id {pmid} is not in ori_pqal.json")
        row = labelled[pmid]
        yield choice_item(
            pmid,
            row["QUESTION"],
            YES_NO_MAYBE_OPTIONS,
            _LETTER[row["final_decision"]],
            context="\n".join(row.get("CONTEXTS", [])),
            meta={"year": row.get("YEAR")},
        )


register(
    BenchmarkInfo(
        name="pubmedqa",
        family=Family.TEXT,
        load=load,
        description="PubMedQA PQA-L yes/no/maybe over abstracts (ori_pqal.json + test_ground_truth.json)",
        distribution="in",
    )
)
