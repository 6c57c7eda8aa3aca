"""The ``s3://`` backend on the ``minio`` SDK.

* Uploads: ``put_object`` with ``part_size``/``num_parallel_uploads`` (parallel multipart parts);
  S3 makes an object visible only when its upload completes, so a failed upload leaves nothing
  (its parts are aborted, or expire on the server).
* Downloads: a HEAD tells the size and ETag; objects up to ``parallelism x part_size`` come in
  one GET, larger ones as ``parallelism`` ranges at once, all with ``If-Match`` so that a
  concurrently replaced object restarts the read instead of mixing two versions.
* Every operation retries connection errors and 5xx answers with exponential backoff until
  ``settings.retry_timeout_s``, then raises :class:`StorageError`.
* With a ``budget`` (seconds the caller may still spend: the operator's leader term), every
  HTTP request — each part, each listing page, each delete batch, each retry — is refused
  once it is spent (:class:`OutOfBudget`) and times out within what is left of it.
* Conditional writes (``If-Match`` / ``If-None-Match: *``) let a writer replace an object
  only if it is still the version it read: a write delayed in the network past its writer's
  term then fails at the server instead of overwriting a successor's. Error texts are rebuilt from
  the backend error with the credentials redacted, and chaining is cut so that no traceback
  carries an unredacted original.
"""

from __future__ import annotations

import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import SSLError

from .errors import (
    ObjectNotFound,
    OutOfBudget,
    PreconditionFailed,
    StorageError,
    StorageUnavailable,
    redact,
)
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
# A conditional write lost to another writer (S3 answers 409 for one racing it in flight).
CONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
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


class BudgetedPool(urllib3.PoolManager):
    """A connection pool whose every request is refused once ``budget()`` is spent and
    otherwise times out within it (connect, and each wait for response bytes)."""

    def __init__(
        self, budget: Callable[[], float], timeout: urllib3.Timeout, **kwargs: Any
    ) -> None:
        super().__init__(timeout=timeout, **kwargs)
        self._budget = budget
        self._connect = float(timeout.connect_timeout or 0) or None  # type: ignore[arg-type]
        self._read = float(timeout.read_timeout or 0) or None

    def urlopen(  # type: ignore[override]
        self, method: str, url: str, redirect: bool = True, **kw: Any
    ) -> urllib3.BaseHTTPResponse:
        left = self._budget()
        if left <= 0:
            raise OutOfBudget(f"not sent: {method} refused, the time budget is spent")
        kw["timeout"] = urllib3.Timeout(
            connect=min(self._connect or left, left), read=min(self._read or left, left)
        )
        return super().urlopen(method, url, redirect=redirect, **kw)


class S3Backend:
    """Objects in one bucket of an S3-compatible server.

    ``budget``: seconds this backend may still spend (None: unbounded), read before every
    request and every retry (see :class:`BudgetedPool`).
    """

    def __init__(
        self,
        bucket: str,
        settings: StorageSettings,
        budget: Callable[[], float] | None = None,
    ) -> None:
        if not settings.endpoint:
            raise StorageError(
                "no S3 endpoint configured: set MEDSFT_S3_ENDPOINT or StorageSettings.endpoint"
            )
        self.bucket = bucket
        self.settings = settings
        self._secrets = settings.secrets()
        access, secret = self._secrets
        self._budget = budget
        pool: Callable[..., urllib3.PoolManager] = urllib3.PoolManager
        if budget is not None:
            pool = lambda **kw: BudgetedPool(budget, **kw)  # noqa: E731
        http = pool(
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
        started = time.monotonic()
        deadline = started + self.settings.retry_timeout_s
        delay = BACKOFF_START_S
        attempt = 1
        while True:
            try:
                return op()
            except Exception as exc:
                failure = self._error(what, key, exc)
                if not is_retryable(exc):
                    raise failure from None
                if time.monotonic() + delay > deadline:
                    # The outage outlasted the retry budget: say so, and for how long it was
                    # tried, so that a failed stage reads as an outage, not as bad data.
                    raise StorageUnavailable(
                        f"{failure}; gave up after {attempt} attempt(s) over "
                        f"{time.monotonic() - started:.0f}s (retry budget "
                        f"{self.settings.retry_timeout_s:g}s)"
                    ) from None
                if self._budget is not None and self._budget() <= delay:
                    raise failure from None  # no retry can be sent within the budget
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

    def put_bytes_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Write ``data`` only if the object's ETag is still ``tag`` (``None``: only if no
        object exists); the new ETag. :class:`PreconditionFailed` when it changed."""
        # The server decides, when the request arrives: a request held up in the network
        # and delivered late fails there if anyone wrote the object meanwhile.
        condition = {"If-Match": f'"{tag}"'} if tag is not None else {"If-None-Match": "*"}
        headers: Mapping[str, str] = {"Content-Type": "application/octet-stream", **condition}

        def attempt() -> str:
            try:
                # minio-py's put_object sends unknown headers as user metadata (x-amz-meta-);
                # its single-request PutObject sends them as they are. One request, no
                # multipart: a condition on a multipart upload would only apply at its end.
                result = self._client._put_object(self.bucket, key, data, dict(headers))
            except S3Error as exc:
                if exc.code in CONDITION_CODES:
                    raise PreconditionFailed(
                        f"{self.uri(key)} changed since it was read (conditional write refused)"
                    ) from None
                raise
            return str(result.etag)

        return self._retrying("PUT", key, attempt)

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
        return self.get_bytes_tagged(key)[0]

    def get_bytes_tagged(self, key: str) -> tuple[bytes, str]:
        """The object's content and the ETag of exactly that content."""

        def attempt() -> tuple[bytes, str]:
            parts: dict[int, bytes] = {}

            def open_sink(total: int) -> Sink:
                return parts.__setitem__  # ranges are disjoint: one dict entry each

            tag = self._read(key, open_sink)
            if len(parts) == 1:
                return parts[0], tag  # the common small-object case: no copy at all
            return b"".join(parts[offset] for offset in sorted(parts)), tag

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

    def _read(self, key: str, open_sink: Callable[[int], Sink], *, chunked: bool = False) -> str:
        """Fetch ``key`` into the sink ``open_sink(size)`` returns: one call per range, or per
        chunk of at most STREAM_CHUNK bytes with ``chunked`` (bounded memory); its ETag.

        A HEAD tells the size and ETag. Objects up to ``parallelism x part_size`` come in one
        request (on a fast link one stream is as quick as several, and every extra request
        costs); larger ones as ``parallelism`` equal ranges at once. Every GET carries
        ``If-Match``, so an object replaced meanwhile fails the read (and it is retried)
        instead of mixing two versions.
        """
        info = self._client.stat_object(self.bucket, key)
        total = int(info.size or 0)
        write = open_sink(total)
        tag = str(info.etag or "")
        if total == 0:
            return tag
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
            return tag
        with ThreadPoolExecutor(len(ranges), thread_name_prefix="s3-range") as pool:
            futures = [pool.submit(fetch, offset, length) for offset, length in ranges]
            try:
                for future in futures:
                    future.result()
            finally:
                for future in futures:
                    future.cancel()
        return tag

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
