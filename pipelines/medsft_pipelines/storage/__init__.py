"""Object storage for every stage: one API over MinIO/S3 (``s3://``) and a local folder
(``file://``), plus the layouts built on it.

* :mod:`.shards` — checksummed Parquet dataset shards with a manifest written last, and a
  deterministic, rank-partitioned, resumable reader.
* :mod:`.layout` — the names of a dataset's objects (pure: the operator imports them).
* :mod:`.checkpoints` — checkpoint directories uploaded in parallel, a completion marker last.
* :mod:`.progress` — ``progress.json`` and ``metrics.jsonl`` written by jobs, read by the operator.

Importing this package loads neither the minio SDK nor pyarrow; the operator may import it.
"""

from .base import ObjectStore, check_key, open_store
from .errors import (
    CheckpointNotComplete,
    DatasetExistsError,
    DatasetNotReady,
    ObjectNotFound,
    OutOfBudget,
    PreconditionFailed,
    ShardIntegrityError,
    StorageError,
    StorageUnavailable,
)
from .settings import StorageSettings

__all__ = [
    "CheckpointNotComplete",
    "DatasetExistsError",
    "DatasetNotReady",
    "ObjectNotFound",
    "ObjectStore",
    "OutOfBudget",
    "PreconditionFailed",
    "ShardIntegrityError",
    "StorageError",
    "StorageSettings",
    "StorageUnavailable",
    "check_key",
    "open_store",
]
