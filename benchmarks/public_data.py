"""Where the benchmark scripts find the complete public PubMedQA and VQA-RAD files.

The repository vendors only the demo's sample (``examples/data/``); the measurements in
``README.md`` use the complete upstream files (1,000 PubMedQA PQA-L items, 2,248 VQA-RAD
questions over 315 images) laid out like ``examples/data/`` (``pubmedqa/``, ``vqa-rad/``;
sources and licences in ``examples/data/README.md``). ``MEDSFT_PUBLIC_DATA`` names that folder;
unset, the test suite's data folder is used (``tests/harness/testbin.py``: ``shared_dir()``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness.testbin import shared_dir

ENV = "MEDSFT_PUBLIC_DATA"


def public_data() -> Path:
    """The folder holding the complete ``pubmedqa/`` and ``vqa-rad/`` files."""
    path = Path(os.environ[ENV]) if os.environ.get(ENV) else shared_dir() / "data"
    if not (path / "pubmedqa" / "ori_pqal.json").is_file():
        raise SystemExit(
            f"no complete PubMedQA / VQA-RAD files under {path}: set {ENV} to the folder "
            "holding them (see benchmarks/public_data.py)"
        )
    return path
