"""SLAKE: bilingual radiology VQA; the English questions are evaluated.

Published files (huggingface.co/datasets/BoKelvin/SLAKE, www.med-vqa.com/slake): ``test.json``
(a list of ``{qid, img_name, question, answer, q_lang, answer_type: OPEN|CLOSED,
content_type, modality, location}``) and the images under ``imgs/<img_name>``. Yes/no answers
become two-option choice items, the rest are open answers.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..files import BenchmarkFiles
from ..items import BenchItem, Family
from ..loaders import yes_no_or_open_item
from ..registry import BenchmarkInfo, register


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    for row in files.read_rows(files.find(f"{split}.json", f"Slake1.0/{split}.json")):
        if row.get("q_lang", "en") != "en":
            continue
        image = f"imgs/{row['img_name']}"
        meta = {"answer_type": row.get("answer_type"), "modality": row.get("modality")}
        yield yes_no_or_open_item(
            row["qid"], row["question"], row["answer"], image=image, meta=meta
        )


register(
    BenchmarkInfo(
        name="slake",
        family=Family.MM_REASONING,
        load=load,
        distribution="in",
        description="SLAKE English questions (test.json + imgs/)",
    )
)
