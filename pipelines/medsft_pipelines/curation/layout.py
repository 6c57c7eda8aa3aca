"""Where a curation job keeps things (pure names: the operator imports them; no imports).

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
