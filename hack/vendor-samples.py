"""Cut the demo's public samples (examples/data/) from the complete upstream files.

    python3 hack/vendor-samples.py SOURCE [--out examples/data]

SOURCE holds the unmodified upstream releases: ``pubmedqa/ori_pqal.json`` and
``pubmedqa/test_ground_truth.json`` (github.com/pubmedqa/pubmedqa, data/) and
``vqa-rad/VQA_RAD_Dataset_Public.json`` + ``vqa-rad/images/`` (the OSF release, osf.io/89kps).
Rows and images are copied unchanged; only which rows are kept is decided here:

* PubMedQA test items: the ``--pubmedqa-test`` test-split ids with the smallest SHA-1 of the
  id, which is how the eval's ``maxItems`` picks a subset, so ``maxItems: k`` (k <= that
  number) selects the same items here as on the complete file.
* PubMedQA training items: the ``--pubmedqa-train`` non-test ids with the smallest SHA-1.
* VQA-RAD: the ``--vqa-rad-test`` test rows (``phrase_type`` test*) chosen the same way, and
  only the images they show.

Standard library only, deterministic: running it again gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path


def _rank(item_id: str) -> str:
    return hashlib.sha1(item_id.encode()).hexdigest()


def _dump(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def vendor_pubmedqa(source: Path, out: Path, n_test: int, n_train: int) -> None:
    labelled = json.loads((source / "ori_pqal.json").read_text(encoding="utf-8"))
    truth = json.loads((source / "test_ground_truth.json").read_text(encoding="utf-8"))
    test = set(sorted(truth, key=_rank)[:n_test])
    train = set(sorted((i for i in labelled if i not in truth), key=_rank)[:n_train])
    # Upstream order, upstream rows: a subset of the published file, nothing rewritten.
    _dump(out / "ori_pqal.json", {i: row for i, row in labelled.items() if i in test | train})
    _dump(out / "test_ground_truth.json", {i: lab for i, lab in truth.items() if i in test})


def vendor_vqa_rad(source: Path, out: Path, n_test: int) -> None:
    rows = json.loads((source / "VQA_RAD_Dataset_Public.json").read_text(encoding="utf-8"))
    test = [r for r in rows if r["phrase_type"].startswith("test")]
    keep = {str(r["qid"]) for r in sorted(test, key=lambda r: _rank(str(r["qid"])))[:n_test]}
    kept = [r for r in rows if str(r["qid"]) in keep]
    _dump(out / "VQA_RAD_Dataset_Public.json", kept)
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    for name in sorted({r["image_name"] for r in kept}):
        shutil.copyfile(source / "images" / name, images / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="folder with pubmedqa/ and vqa-rad/ as published")
    parser.add_argument("--out", type=Path, default=Path("examples/data"))
    parser.add_argument("--pubmedqa-test", type=int, default=32)
    parser.add_argument("--pubmedqa-train", type=int, default=160)
    parser.add_argument("--vqa-rad-test", type=int, default=16)
    args = parser.parse_args()
    vendor_pubmedqa(
        args.source / "pubmedqa", args.out / "pubmedqa", args.pubmedqa_test, args.pubmedqa_train
    )
    vendor_vqa_rad(args.source / "vqa-rad", args.out / "vqa-rad", args.vqa_rad_test)


if __name__ == "__main__":
    main()
