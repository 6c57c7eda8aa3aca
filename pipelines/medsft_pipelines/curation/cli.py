"""``medsft-curate``: run a curation worker, the merge, or both.

    medsft-curate --config job.yaml                   # the config's step (work | merge | all)
    medsft-curate --config job.yaml --worker-index 3  # one worker
    medsft-curate --config job.yaml --merge           # the merge

In an Indexed batch Job the worker index comes from ``JOB_COMPLETION_INDEX``, and without
flags a pod of such a Job runs its own worker only (even if the config's step is ``all``). A curation
error (bad input beyond the error budget, a missing worker, a bad spec) exits with status 1
and one clear line; nothing else is printed about the data.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from medsft_pipelines.specs.jobconfig import CurationJobConfig, load_job_config
from medsft_pipelines.termination import reports_failure

from .errors import CurationError
from .job import resolve_worker_index

log = logging.getLogger("medsft.curation")

PEER_WAIT_ENV = "MEDSFT_CURATION_PEER_WAIT_S"
DEFAULT_PEER_WAIT_S = 900.0
"""How long a worker pod waits for its peers' scans before scanning their slices itself."""


def run(config: CurationJobConfig, *, worker_index: int | None = None, merge: bool = False) -> None:
    """Do what the flags (or else the config's ``step``) say."""
    from .merge import run_merge
    from .worker import run_worker

    indexed_job = "JOB_COMPLETION_INDEX" in os.environ
    if merge:
        run_merge(config)
    elif (
        worker_index is not None or config.step == "work" or (config.step == "all" and indexed_job)
    ):
        # Pods of an Indexed Job run side by side: wait a while for the peers' scans rather
        # than scanning their slices too.
        wait = float(os.environ.get(PEER_WAIT_ENV, DEFAULT_PEER_WAIT_S)) if indexed_job else 0.0
        run_worker(config, resolve_worker_index(config, worker_index), peer_wait_s=wait)
    elif config.step == "merge":
        run_merge(config)
    else:  # "all": every worker in this process, then the merge
        for index in range(config.workers):
            run_worker(config, index)
        run_merge(config)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    parser = argparse.ArgumentParser(prog="medsft-curate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="CurationJobConfig YAML file")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--worker-index",
        type=int,
        help="run this worker (default: the config / JOB_COMPLETION_INDEX)",
    )
    group.add_argument("--merge", action="store_true", help="run the merge step")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_job_config(args.config)
        if not isinstance(config, CurationJobConfig):
            raise CurationError(f"{args.config} is a {config.kind}, not a CurationJobConfig")
        with reports_failure():  # the pod's status keeps why (see medsft_pipelines.termination)
            run(config, worker_index=args.worker_index, merge=args.merge)
    except CurationError as exc:
        print(f"medsft-curate: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
