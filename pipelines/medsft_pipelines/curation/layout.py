"""Where a curation job keeps things, and what worker and merge share.

Under the job's output URI::

    manifest.json                         the dataset exists once this exists (written last)
    shards/shard-NNNNN.parquet            final rows (sample.ROW_SCHEMA)
    report/report.{json,md} report/*.png  the report (written before the manifest)
    quarantine/<worker>.jsonl             bad input, by reason
    teacher-cache/xx/<sha256>.json        teacher responses, only when the config names no
                                          teacherCacheUri (the operator and ``medsft run
                                          --local`` put it at the run level: see below)
    _scan/<worker>.json.gz                one slice's candidate questions (before the teacher)
    _work/<worker>/questions/...          per-worker question records (a small dataset)
    _work/<worker>/rows/sNNNNN/...        per-worker rows, one shard run per source
    _work/<worker>/manifest.json          the worker is done once this exists (written last)

The teacher response cache outlives generations: ``<storage root>/<namespace>/<run>/
teacher-cache/`` (``teachers.cache.scope: Run``) or ``<storage root>/teacher-cache/``
(``Bucket``), one object per distinct request (:func:`.teacher.request_identity`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medsft_pipelines.specs.jobconfig import CurationJobConfig
from medsft_pipelines.storage import StorageSettings

from .errors import CurationError

log = logging.getLogger("medsft.curation")

WORK_PREFIX = "_work"
QUARANTINE_PREFIX = "quarantine"
TEACHER_CACHE_PREFIX = "teacher-cache"
REPORT_PREFIX = "report"
#: The report's files in ``REPORT_PREFIX`` (besides its plots).
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
STAGE = "curation"


def worker_name(index: int, workers: int) -> str:
    """``worker-00003-of-00008``: the name of a worker's partial output and quarantine file."""
    return f"worker-{index:05d}-of-{workers:05d}"


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


def storage_settings(config: CurationJobConfig) -> StorageSettings:
    """S3 settings: the job config's endpoint/TLS, credentials from the environment."""
    from medsft_pipelines.sft.model_files import storage_settings as settings_of

    return settings_of(config.storage)


def load_token_counter(config: CurationJobConfig, settings: StorageSettings, scratch: Path) -> Any:
    """The :class:`TokenCounter` of the spec's processor (downloaded once if remote)."""
    from medsft_pipelines.models import load_processor
    from medsft_pipelines.sft.model_files import download_model, is_remote, local_path

    from .lengths import TokenCounter

    if config.spec.processor is None:
        raise CurationError(
            "spec.processor is required: token lengths are measured with the target model's "
            "processor (in a MedSFTRun it defaults to the SFT base model)"
        )
    location = config.spec.processor.model
    folder = (
        download_model(location, scratch / "models", settings)
        if is_remote(location)
        else local_path(location)
    )
    if not (folder / "config.json").exists():
        raise CurationError(f"processor model {location} has no config.json")
    return TokenCounter(load_processor(folder))


def add_counts(total: Counter[str], more: Mapping[str, int]) -> Counter[str]:
    """``total += more`` for plain dicts read back from JSON."""
    total.update({k: int(v) for k, v in more.items()})
    return total


def key(*parts: Any) -> str:
    """A counter key: ``"removed/too_long/pubmedqa"``."""
    return "/".join(str(p) for p in parts)


def sum_counts(parts: Iterable[Mapping[str, int]]) -> Counter[str]:
    """The sum of several count dicts."""
    total: Counter[str] = Counter()
    for part in parts:
        add_counts(total, part)
    return total
