"""VQA-RAD: radiology visual questions, closed (mostly yes/no) and open.

Published files (OSF release, osf.io/89kps): ``VQA_RAD_Dataset_Public.json`` — a list of
``{qid, image_name, question, answer, answer_type: CLOSED|OPEN, phrase_type, …}`` — and the
images in ``images/`` (some releases: ``VQA_RAD Image Folder/``). The test split is the rows
whose ``phrase_type`` starts with ``test`` (451 questions); ``train`` is the rest.
Yes/no questions are two-option choice items; every other answer is open (exact match for
accuracy, token F1 as the soft score).
"""

from __future__ import annotations

from collections.abc import Iterator

from ..files import BenchmarkFiles, BenchmarkFormatError
from ..items import BenchItem, Family
from ..loaders import yes_no_or_open_item
from ..registry import BenchmarkInfo, register


def load(files: BenchmarkFiles, split: str) -> Iterator[BenchItem]:
    if split not in ("test", "train"):
        raise BenchmarkFormatError(f"vqa-rad: split {split!r} unknown (test, train)")
    rows = files.read_rows(files.find("VQA_RAD_Dataset_Public.json"))
    image_dir = "VQA_RAD Image Folder" if not files.keys("images/") else "images"
    for row in rows:
        if row["phrase_type"].startswith("test") != (split == "test"):
            continue
        image = f"{image_dir}/{row['image_name']}"
        meta = {
            "answer_type": row["answer_type"].strip(),
            "question_type": row.get("question_type"),
            "organ": row.get("image_organ"),
        }
        yield yes_no_or_open_item(
            row["qid"], row["question"], row["answer"], image=image, meta=meta
        )


register(
    BenchmarkInfo(
        name="vqa-rad",
        family=Family.MM_REASONING,
        load=load,
        description="VQA-RAD radiology VQA (VQA_RAD_Dataset_Public.json + images/)",
        distribution="in",
    )
)
