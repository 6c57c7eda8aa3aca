"""The ``s3://`` backend on the ``minio`` SDK.

* Uploads: ``put_object`` with ``part_size``/``num_parallel_uploads`` (parallel multipart parts);
  S3 makes an object visible only when its upload completes, so a failed upload leaves nothing
  (its parts are aborted, or expire on the server).
* Downloads: a HEAD tells the size and ETag; objects up to ``parallelism x part_size`` come in
  one GET, larger ones as ``parallelism`` ranges at once, all with ``If-Match`` so that a
  concurrently replaced object restarts the read instead of mixing two versions.
* Every operation retries connection errors and 5xx answers with exponential backoff until
  ``settings.retry_timeout_s``, then raises :class:`StorageError`. Error texts are rebuilt from
  the backend error with the credentials redacted, and chaining is cut so that no traceback
  carries an unredacted original.
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import SSLError

from .errors import ObjectNotFound, StorageError, redact
from .settings import StorageSettings

log = logging.getLogger("medsft.storage")

T = TypeVar("T")
STREAM_CHUNK = 1024 * 1024
# S3 error codes worth retrying: the server is busy, starting, or the object changed mid-read.
RETRYABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "XMinioServerNotInitialized",
        "XMinioReadQuorum",
        "XMinioWriteQuorum",
        "PreconditionFailed",
    }
)
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject"})
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0

Sink = Callable[[int, bytes], None]


def is_retryable(exc: BaseException) -> bool:
    """Whether retrying ``exc`` later may succeed (network and server-side trouble)."""
    if isinstance(exc, S3Error):
        return exc.code in RETRYABLE_CODES
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        return "code: 5" in str(exc).lower() or "response code: 5" in str(exc).lower()
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return not isinstance(exc.reason, SSLError)
    if isinstance(exc, SSLError):
        return False  # a certificate problem does not heal by waiting
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def describe(exc: BaseException) -> str:
    """A one-line description of a backend error (not yet redacted)."""
    if isinstance(exc, S3Error):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class S3Backend:
    """Objects in one bucket of an S3-compatible server."""

    def __init__(self, bucket: str, settings: StorageSettings) -> None:
        if not settings.endpoint:
            raise StorageError(
                "no S3 endpoint configured: set MEDSFT_S3_ENDPOINT or StorageSettings.endpoint"
            )
        self.bucket = bucket
        self.settings = settings
        self._secrets = settings.secrets()
        access, secret = self._secrets
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(
                connect=settings.connect_timeout_s, read=settings.read_timeout_s
            ),
            # Checkpoint transfers run `parallelism` objects x `parallelism` parts at once.
            maxsize=settings.parallelism * settings.parallelism + 4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=settings.ca_file or os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # One retry layer only: ours, with backoff over a deadline (see _retrying).
            retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
        )
        self._client = Minio(
            settings.endpoint,
            access_key=access,
            secret_key=secret,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )

    def __repr__(self) -> str:
        return f"S3Backend({self.uri('')!r})"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # -- retry and error mapping ------------------------------------------------------------

    def _retrying(self, what: str, key: str, op: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.settings.retry_timeout_s
        delay = BACKOFF_START_S
        attempt = 1
        while True:
            try:
                return op()
            except Exception as exc:
                failure = self._error(what, key, exc)
                if not is_retryable(exc) or time.monotonic() + delay > deadline:
                    raise failure from None
                log.warning("%s (attempt %d); retrying in %.1fs", failure, attempt, delay)
            time.sleep(delay)  # backoff between attempts, bounded by the deadline above
            delay = min(delay * 2, BACKOFF_MAX_S)
            attempt += 1

    def _error(self, what: str, key: str, exc: BaseException) -> StorageError:
        if isinstance(exc, StorageError):
            return type(exc)(redact(str(exc), self._secrets))
        if isinstance(exc, S3Error) and exc.code in MISSING_CODES:
            return ObjectNotFound(redact(f"no object at {self.uri(key)}", self._secrets))
        text = redact(f"{what} {self.uri(key)} failed: {describe(exc)}", self._secrets)
        return StorageError(text)

    # -- objects ----------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        self._retrying("PUT", key, lambda: self._put(key, io.BytesIO(data), len(data)))

    def upload_file(self, path: Path, key: str) -> None:
        size = path.stat().st_size

        def attempt() -> None:
            with path.open("rb") as src:
                self._put(key, src, size)

        self._retrying("upload", key, attempt)

    def _put(self, key: str, data: io.BufferedIOBase | io.BytesIO, size: int) -> None:
        self._client.put_object(
            self.bucket,
            key,
            data,  # type: ignore[arg-type]
            size,
            part_size=self.settings.part_size,
            num_parallel_uploads=self.settings.parallelism,
        )

    def get_bytes(self, key: str) -> bytes:
        def attempt() -> bytes:
            parts: dict[int, bytes] = {}

            def open_sink(total: int) -> Sink:
                return parts.__setitem__  # ranges are disjoint: one dict entry each

            self._read(key, open_sink)
            if len(parts) == 1:
                return parts[0]  # the common small-object case: no copy at all
            return b"".join(parts[offset] for offset in sorted(parts))

        return self._retrying("GET", key, attempt)

    def download_file(self, key: str, path: Path) -> None:
        def attempt() -> None:
            tmp = path.parent / f".medsft-tmp-{uuid.uuid4().hex}"
            try:
                with tmp.open("wb") as out:
                    fd = out.fileno()

                    def open_sink(total: int) -> Sink:
                        os.ftruncate(fd, total)
                        return lambda offset, data: _pwrite_all(fd, data, offset)

                    self._read(key, open_sink, chunked=True)
                # No fsync: a download is a local copy, re-fetched after a crash anyway.
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

        self._retrying("download", key, attempt)

    def _read(self, key: str, open_sink: Callable[[int], Sink], *, chunked: bool = False) -> None:
        """Fetch ``key`` into the sink ``open_sink(size)`` returns: one call per range, or per
        chunk of at most STREAM_CHUNK bytes with ``chunked`` (bounded memory).

        A HEAD tells the size and ETag. Objects up to ``parallelism x part_size`` come in one
        request (on a fast link one stream is as quick as several, and every extra request
        costs); larger ones as ``parallelism`` equal ranges at once. Every GET carries
        ``If-Match``, so an object replaced meanwhile fails the read (and it is retried)
        instead of mixing two versions.
        """
        info = self._client.stat_object(self.bucket, key)
        total = int(info.size or 0)
        write = open_sink(total)
        if total == 0:
            return
        headers: dict[str, str | list[str] | tuple[str]] = (
            {"If-Match": f'"{info.etag}"'} if info.etag else {}
        )
        parallelism, part = self.settings.parallelism, self.settings.part_size
        ranges = [(0, total)]
        if total > parallelism * part:
            ranges = _split(0, total, parallelism, part)

        def fetch(offset: int, length: int) -> None:
            response = self._client.get_object(
                self.bucket,
                key,
                offset=offset,
                length=length if len(ranges) > 1 else 0,
                request_headers=headers,
            )
            _read_body(response, offset, length, write, chunked)

        if len(ranges) == 1:
            fetch(0, total)
            return
        with ThreadPoolExecutor(len(ranges), thread_name_prefix="s3-range") as pool:
            futures = [pool.submit(fetch, offset, length) for offset, length in ranges]
            try:
                for future in futures:
                    future.result()
            finally:
                for future in futures:
                    future.cancel()

    def size(self, key: str) -> int:
        return int(
            self._retrying("HEAD", key, lambda: self._client.stat_object(self.bucket, key)).size
            or 0
        )

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str, recursive: bool) -> Iterator[str]:
        def attempt() -> list[str]:
            objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=recursive)
            return [o.object_name for o in objects if o.object_name]

        return iter(self._retrying("LIST", prefix, attempt))

    def delete(self, key: str) -> None:
        self._retrying("DELETE", key, lambda: self._client.remove_object(self.bucket, key))

    def delete_many(self, keys: Iterable[str]) -> None:
        batch = list(keys)

        def attempt() -> None:
            errors = list(
                self._client.remove_objects(self.bucket, (DeleteObject(k) for k in batch))
            )
            if errors:
                raise StorageError(
                    f"could not delete {len(errors)} object(s), first: {errors[0].name}"
                )

        if batch:
            self._retrying("DELETE", batch[0], attempt)


def _split(start: int, end: int, streams: int, min_size: int) -> list[tuple[int, int]]:
    """(offset, length) ranges covering [start, end): at most ``streams`` of them, each at
    least ``min_size`` bytes (but the last): few large requests, all running at once."""
    remaining = end - start
    if remaining <= 0:
        return []
    size = max(min_size, -(-remaining // streams))
    return [(offset, min(size, end - offset)) for offset in range(start, end, size)]


def _read_body(
    response: urllib3.BaseHTTPResponse, offset: int, expected: int, write: Sink, chunked: bool
) -> None:
    received = 0
    try:
        if chunked:
            for chunk in response.stream(STREAM_CHUNK):
                write(offset + received, chunk)
                received += len(chunk)
        else:
            data = response.read()
            received = len(data)
            write(offset, data)
    finally:
        response.close()
        response.release_conn()
    if received != expected:
        raise ConnectionError(f"short read: {received} of {expected} bytes")


def _pwrite_all(fd: int, chunk: bytes, offset: int) -> None:
    view = memoryview(chunk)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
