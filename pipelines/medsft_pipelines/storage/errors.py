"""Errors of the object-store layer.

Every error raised by :mod:`medsft_pipelines.storage` derives from :class:`StorageError`. Messages
name keys, shards and checksums, never credentials: backend errors are re-raised with their text
scrubbed of the configured access and secret keys (see :func:`redact`).
"""

from __future__ import annotations

from collections.abc import Iterable


class StorageError(Exception):
    """An object-store operation failed (after retries, where retrying made sense)."""


class StorageUnavailable(StorageError):
    """The store did not answer within the retry budget (``retry_timeout_s``): connection
    errors, timeouts or 5xx answers, every retry included. Waiting longer may help; the
    data is not at fault."""


class ObjectNotFound(StorageError):
    """The key does not exist in the store."""


class DatasetNotReady(StorageError):
    """The dataset's manifest does not exist (yet): the dataset is not there for readers."""


class DatasetExistsError(StorageError):
    """A writer was asked to write where a complete dataset (a manifest) already exists."""


class ShardIntegrityError(StorageError):
    """A shard's bytes do not match the manifest (size or sha256), or do not parse."""


class PreconditionFailed(StorageError):
    """A conditional write found the object changed since it was read (or present where it
    was to be created): someone else wrote it first, and nothing was written."""


class OutOfBudget(StorageError):
    """Not sent: the caller's time budget is spent (for the operator: its leader term ended,
    and it must not act any more)."""


class CheckpointNotComplete(StorageError):
    """The checkpoint has no completion marker: it is absent or its upload never finished."""


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
