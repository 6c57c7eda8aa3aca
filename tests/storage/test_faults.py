"""Failure behaviour against the real MinIO: the server is stopped and restarted mid-operation.

Restarts happen only once the storage layer has logged a retry (``retry_signal``), so every
test really exercises the retry path instead of racing the server.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medsft_pipelines.storage import (
    DatasetNotReady,
    ObjectStore,
    OutOfBudget,
    StorageError,
    StorageUnavailable,
    open_store,
)
from medsft_pipelines.storage.checkpoints import CheckpointStore
from medsft_pipelines.storage.shards import DatasetReader, ShardWriter

from .conftest import RetrySignal, s3_settings
from .test_checkpoints import make_checkpoint, read_tree
from .test_shards import SCHEMA, make_row, write_dataset

MiB = 1024 * 1024
OUTAGE_WAIT_S = 30


def s3_store(minio, bucket: str, **overrides: Any) -> ObjectStore:
    return open_store(f"s3://{bucket}/run", settings=s3_settings(minio, **overrides))


class InThread:
    """Runs ``work`` in a thread and hands back its result or its exception."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.result = work()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 120) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "operation did not finish after the restart"
        if self.error is not None:
            raise self.error
        return self.result


def outage(minio, retry_signal: RetrySignal, work: Callable[[], Any]) -> Any:
    """Stop the server, start ``work``, restart the server once ``work`` has retried."""
    minio.stop()
    running = InThread(work)
    assert retry_signal.retried.wait(OUTAGE_WAIT_S), "no retry was logged during the outage"
    minio.start()
    return running.join()


def test_shard_writer_survives_an_outage_mid_dataset(minio, minio_bucket, retry_signal) -> None:
    store = s3_store(minio, minio_bucket)
    writer = ShardWriter(store, SCHEMA, target_shard_bytes=16 * 1024)
    writer.write([make_row(i) for i in range(300)])
    writer.wait_for_uploads()
    uploaded = len(store.list("shards/"))
    assert uploaded >= 2  # shards already uploaded before the outage

    def rest_of_the_dataset():
        writer.write([make_row(i) for i in range(300, 600)])
        return writer.close()

    manifest = outage(minio, retry_signal, rest_of_the_dataset)
    assert len(manifest.shards) > uploaded
    reader = DatasetReader(store)
    assert sorted(s["id"] for s in reader.iter_samples(0, 0)) == list(range(600))


def test_checkpoint_upload_retries_through_an_outage(
    minio, minio_bucket, retry_signal, tmp_path: Path
) -> None:
    checkpoints = CheckpointStore(s3_store(minio, minio_bucket))
    make_checkpoint(tmp_path / "c100", 100)
    checkpoints.upload(tmp_path / "c100", 100)
    files = make_checkpoint(tmp_path / "c200", 200, big=11 * MiB)  # multipart: 3 parts

    outage(minio, retry_signal, lambda: checkpoints.upload(tmp_path / "c200", 200))
    assert checkpoints.latest() == 200
    checkpoints.download(200, tmp_path / "restored")
    assert read_tree(tmp_path / "restored") == files


def test_reader_retries_through_an_outage(minio, minio_bucket, retry_signal) -> None:
    store = s3_store(minio, minio_bucket)
    write_dataset(store, n=600)
    reader = DatasetReader(store, prefetch=1)
    expected = [s["id"] for s in reader.iter_samples(1, 1, rank=0, world_size=2)]
    got = outage(
        minio,
        retry_signal,
        lambda: [s["id"] for s in reader.iter_samples(1, 1, rank=0, world_size=2)],
    )
    assert got == expected


def test_an_upload_that_gives_up_leaves_nothing_trusted(
    minio, minio_bucket, retry_signal, tmp_path: Path
) -> None:
    store = s3_store(minio, minio_bucket, retry_timeout_s=1.0)
    checkpoints = CheckpointStore(store)
    make_checkpoint(tmp_path / "c100", 100)
    checkpoints.upload(tmp_path / "c100", 100)
    writer = ShardWriter(store.child("dataset"), SCHEMA, target_shard_bytes=16 * 1024)
    writer.write([make_row(i) for i in range(300)])
    writer.wait_for_uploads()

    minio.stop()
    make_checkpoint(tmp_path / "c200", 200, big=6 * MiB)
    with pytest.raises(StorageUnavailable, match="step-000000200") as gave_up:
        checkpoints.upload(tmp_path / "c200", 200)
    # It says it was an outage, and for how long it was tried: not bad data.
    assert "(retry budget 1s)" in str(gave_up.value)
    assert "gave up after" in str(gave_up.value)
    with pytest.raises(StorageError):
        writer.close()
    assert retry_signal.retried.is_set()  # it did retry before giving up
    minio.start()

    assert checkpoints.latest() == 100
    with pytest.raises(DatasetNotReady):
        DatasetReader(store.child("dataset"))


def assert_no_secret(texts: list[str], *secret_values: str) -> None:
    for text in texts:
        for value in secret_values:
            assert value not in text


def test_credentials_never_in_exceptions_or_logs(
    minio, minio_bucket, caplog, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)  # everything, urllib3 and minio included
    # 1. Wrong secret: the server refuses the signature.
    wrong = "wrong-" + secrets.token_hex(12)
    bad = s3_store(minio, minio_bucket, secret_key=wrong)
    with pytest.raises(StorageError) as refused:
        bad.put_bytes("x", b"data")
    assert "SignatureDoesNotMatch" in str(refused.value)
    # 2. Keys that contain the secret (the worst case of text echoed back) are redacted.
    good = s3_store(minio, minio_bucket, retry_timeout_s=0.5)
    with pytest.raises(StorageError) as missing:
        good.get_bytes(f"leak/{minio.secret_key}")
    assert "***" in str(missing.value)
    assert_no_secret(
        [str(missing.value), "".join(traceback.format_exception(missing.value))], minio.secret_key
    )
    # urllib3's own debug log echoes that (caller-chosen) key in the request line: not ours.
    caplog.clear()
    # 3. Server down: retries are logged, then the operation fails.
    minio.stop()
    try:
        (tmp_path / "f").write_bytes(os.urandom(1024))
        with pytest.raises(StorageError) as down:
            good.upload_file(tmp_path / "f", "f")
    finally:
        minio.start()
    errors = [refused.value, down.value]
    texts = [caplog.text] + [m for r in caplog.records for m in (r.getMessage(), str(r.args))]
    for exc in errors:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    assert any("retrying" in t for t in texts)  # the logs under test are really there
    assert_no_secret(texts, minio.secret_key, minio.access_key, wrong)


def test_a_budget_bounds_every_request_of_a_call_not_just_its_start(minio, minio_bucket) -> None:
    """A long call (delete_prefix: a listing, then delete batches) stops at the request
    after its budget is spent — the operator's leader term ends in the middle of it."""
    open_store(f"s3://{minio_bucket}/run", settings=s3_settings(minio)).put_bytes("a/1", b"x")
    requests = []

    def budget() -> float:
        requests.append(1)
        return 5.0 if len(requests) == 1 else 0.0  # the listing goes; the term ends then

    store = open_store(f"s3://{minio_bucket}/run", settings=s3_settings(minio), budget=budget)
    with pytest.raises(OutOfBudget):
        store.delete_prefix("a/")
    assert s3_store(minio, minio_bucket).list() == ["a/1"]  # no delete was sent
