"""Fixtures of the storage tests: every contract test runs on both backends.

``file`` is a local folder; ``s3`` is a fresh bucket on the real MinIO server from
tests/harness (``minio``/``minio_bucket``), requested only by the s3 variant so that the
file variant runs without the MinIO binary.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store

MiB = 1024 * 1024


def s3_settings(minio, **overrides) -> StorageSettings:
    """Settings for the test MinIO; small parts so that multipart paths run on small data."""
    values = {
        "endpoint": minio.endpoint,
        "secure": False,
        "access_key": minio.access_key,
        "secret_key": minio.secret_key,
        "part_size": 5 * MiB,
        "parallelism": 2,  # reads: up to 10 MiB in one request, larger ones as 2 ranges
        "retry_timeout_s": 60.0,
        **overrides,
    }
    return StorageSettings(**values)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """An empty store rooted below the backend's root (so prefix handling is exercised)."""
    if backend == "file":
        return open_store(f"file://{tmp_path}/root/run-1")
    minio = request.getfixturevalue("minio")
    bucket = request.getfixturevalue("minio_bucket")
    return open_store(f"s3://{bucket}/root/run-1", settings=s3_settings(minio))


class RetrySignal(logging.Handler):
    """Sets an event when the storage layer logs that it is retrying (a real retry happened)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.retried = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if "retrying" in message:
            self.retried.set()


@pytest.fixture
def retry_signal() -> Iterator[RetrySignal]:
    handler = RetrySignal()
    logger = logging.getLogger("medsft.storage")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
