"""Teacher requests per curation run: what the teacher is asked vs what can be kept.

    .venv/bin/python benchmarks/curation_teacher_budget.py

Input: the teacher-budget test's two sources (tests/curation/test_pipeline.py
``budget_inputs``): 20 unique questions + 3 exact copies + 2 near copies + a verbatim
PubMedQA test question, capped at 10; and a 6/4/2 class-balanced source. 4 samples per
question. The teacher is the tests' chat-completions server (generated answers: a paid API
cannot run here); it counts the requests and samples it serves. Run this file with
``PYTHONPATH`` pointing at an older ``pipelines/`` to measure the order before the change.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from curation.curation_helpers import TeacherServer, gold_responder  # noqa: E402
from curation.test_pipeline import _rows, budget_config, budget_inputs  # noqa: E402
from public_data import public_data  # noqa: E402

from medsft_pipelines.curation.lengths import TokenCounter  # noqa: E402
from medsft_pipelines.curation.merge import run_merge  # noqa: E402
from medsft_pipelines.curation.worker import run_worker  # noqa: E402
from medsft_pipelines.models import load_processor  # noqa: E402
from medsft_pipelines.models.tiny import cached_tiny_model  # noqa: E402


def main() -> None:
    shared = public_data()
    tmp = Path(tempfile.mkdtemp(prefix="teacher-budget-"))
    data = budget_inputs(tmp, shared)
    model = cached_tiny_model(seed=0)
    counter = TokenCounter(load_processor(model))
    with TeacherServer(gold_responder(data["gold"], data["wrong"])) as server:
        config = budget_config(data, tmp / "out", server.url, shared, model, workers=1)
        run_worker(config, 0, token_counter=counter, show_progress=False)
        run_merge(config, show_progress=False)
    report = json.loads((tmp / "out/report/report.json").read_text())
    print(
        json.dumps(
            {
                "requests_served": server.requests,
                "samples_served": server.samples_served,
                "final_rows": len(_rows(f"file://{tmp / 'out'}")),
                "report_teacher_budget": report.get("teacher_budget"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
