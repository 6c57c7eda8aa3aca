"""``medsft-eval --config job.yaml``: the EvalJob's entry point (also runs locally)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medsft_pipelines.specs.jobconfig import EvalJobConfig, load_job_config
from medsft_pipelines.termination import reports_failure


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation described by an EvalJobConfig file; print the summary as JSON."""
    parser = argparse.ArgumentParser(prog="medsft-eval", description=__doc__)
    parser.add_argument(
        "--config", required=True, type=Path, help="EvalJobConfig YAML or JSON file"
    )
    parser.add_argument("--cache-dir", type=Path, help="where models from s3:// are downloaded")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_job_config(args.config)
    if not isinstance(config, EvalJobConfig):
        parser.error(f"{args.config} is a {config.kind}, not an EvalJobConfig")

    from .report import summary
    from .run import evaluate

    with reports_failure():  # the pod's status keeps why (see medsft_pipelines.termination)
        results = evaluate(config, cache_dir=args.cache_dir)
    print(json.dumps(summary(results, config.output_uri.rstrip("/") + "/results.json"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
