"""What a curation job derives from its config: the dataset's spec hash and this worker's index."""

from __future__ import annotations

import hashlib
import json
import os

from medsft_pipelines.specs.jobconfig import CurationJobConfig

from .errors import CurationError


def spec_hash(config: CurationJobConfig) -> str:
    """The run's spec hash when the operator gave one, else the sha256 of the spec itself.

    The worker count is *not* part of it: N workers and one produce the same dataset.
    """
    if config.run.spec_hash:
        return config.run.spec_hash
    wire = json.dumps(config.spec.to_wire(), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(wire.encode()).hexdigest()


def resolve_worker_index(config: CurationJobConfig, override: int | None = None) -> int:
    """This worker's index: the CLI flag, the config, or ``JOB_COMPLETION_INDEX`` (Indexed Job)."""
    index = override if override is not None else config.worker_index
    if index is None:
        env = os.environ.get("JOB_COMPLETION_INDEX")
        if env is None:
            raise CurationError(
                "no worker index: pass --worker-index, set workerIndex in the config, or run "
                "as an Indexed Job (JOB_COMPLETION_INDEX)"
            )
        index = int(env)
    if not 0 <= index < config.workers:
        raise CurationError(f"worker index {index} is not in [0, {config.workers})")
    return index
