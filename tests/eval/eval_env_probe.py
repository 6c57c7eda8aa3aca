"""One greedy pass of the eval harness (``run_pass``: prompts, images, generation with the
transformers engine, grading) over three VQA-RAD items: called in the suite's process, and
run as a script by the eval environment's interpreter (tests/eval/test_eval_image.py), so both
sides run the same code.

    python tests/eval/eval_env_probe.py MODEL_DIR VQA_RAD_DIR   # prints the records as JSON
"""

from __future__ import annotations

import json
import sys
from typing import Any

from medsft_pipelines.eval import load_benchmark
from medsft_pipelines.eval.backends import open_engine
from medsft_pipelines.eval.prompting import TEMPLATES
from medsft_pipelines.eval.run import run_pass
from medsft_pipelines.specs.eval import GenerationSpec

BATCH_SIZE = 4
GREEDY = GenerationSpec(temperature=0.0, max_new_tokens=6, forced_exit_tokens=4)


def greedy_pass(engine: Any, benchmark: str) -> list[dict[str, Any]]:
    """The graded records of one greedy pass (forced think exit on), in their stored form."""
    bench = load_benchmark("vqa-rad", benchmark, max_items=3)
    records = run_pass(engine, bench, TEMPLATES["thinking"], GREEDY, seed=0)
    return [r.to_json() for r in records]


if __name__ == "__main__":
    model, benchmark = sys.argv[1:]
    engine = open_engine(
        "transformers", model, batch_size=BATCH_SIZE, max_pixels=65536, max_images=10
    )
    print(json.dumps(greedy_pass(engine, benchmark)))
