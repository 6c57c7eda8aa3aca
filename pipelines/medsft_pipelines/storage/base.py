"""The object-store interface: one :class:`ObjectStore` API over an S3 or a local backend.

An :class:`ObjectStore` is rooted at a prefix (``s3://bucket/runs/r1/`` or ``file:///data/r1/``);
keys are relative to that root, use ``/`` and never start with it. Writes are atomic on both
backends: an object is either absent or complete, never partial, for any reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from .errors import StorageError
from .settings import StorageSettings


class Backend(Protocol):
    """What a storage backend implements, on keys absolute within the backend."""

    def uri(self, key: str) -> str: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_bytes_tagged(self, key: str) -> tuple[bytes, str]: ...
    def put_bytes_if(self, key: str, data: bytes, tag: str | None) -> str: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str, recursive: bool) -> Iterator[str]: ...
    def upload_file(self, path: Path, key: str) -> None: ...
    def download_file(self, key: str, path: Path) -> None: ...
    def delete(self, key: str) -> None: ...
    def delete_many(self, keys: Iterable[str]) -> None: ...


def check_key(key: str) -> str:
    """``key`` if it is a valid object key relative to a store root, else ValueError."""
    if not key or key.startswith("/") or key.endswith("/") or "\\" in key:
        raise ValueError(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


def _as_prefix(sub: str) -> str:
    sub = sub.strip("/")
    return check_key(sub) + "/" if sub else ""


class ObjectStore:
    """Objects under one root prefix of a backend. Thread-safe; cheap to copy with :meth:`child`."""

    def __init__(self, backend: Backend, prefix: str = "") -> None:
        self._backend = backend
        self._prefix = _as_prefix(prefix)

    # -- addressing -------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """The root of this store, e.g. ``s3://bucket/runs/r1/``."""
        return self._backend.uri(self._prefix)

    def uri_of(self, key: str) -> str:
        """Full URI of a key, or of a folder-like prefix ending with ``/`` (for messages)."""
        return self._backend.uri(
            self._prefix + _as_prefix(key) if key.endswith("/") else self._full(key)
        )

    def child(self, sub: str) -> ObjectStore:
        """The store rooted at ``sub/`` under this one."""
        return ObjectStore(self._backend, self._prefix + _as_prefix(sub))

    def _full(self, key: str) -> str:
        return self._prefix + check_key(key)

    def __repr__(self) -> str:
        return f"ObjectStore({self.uri!r})"

    # -- objects ----------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically (replacing any previous object)."""
        self._backend.put_bytes(self._full(key), bytes(data))

    def get_bytes(self, key: str) -> bytes:
        """The object's content; :class:`ObjectNotFound` if absent."""
        return self._backend.get_bytes(self._full(key))

    def get_json_tagged(self, key: str) -> tuple[Any, str]:
        """The object parsed as JSON, and the version tag (ETag) of that content, for
        :meth:`put_json_if`; :class:`ObjectNotFound` if absent."""
        data, tag = self._backend.get_bytes_tagged(self._full(key))
        return self._parse_json(key, data), tag

    def put_json_if(self, key: str, value: Any, tag: str | None) -> str:
        """Write ``value`` only if the object is still the version ``tag`` (from
        :meth:`get_json_tagged`; ``None``: only if no object exists), decided by the store
        when the request arrives; the new tag. :class:`PreconditionFailed` otherwise."""
        data = json.dumps(value, indent=2, sort_keys=True).encode()
        return self._backend.put_bytes_if(self._full(key), data, tag)

    def put_json(self, key: str, value: Any) -> None:
        """Write ``value`` as indented UTF-8 JSON."""
        self.put_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode())

    def get_json(self, key: str) -> Any:
        """Parse the object as JSON."""
        return self._parse_json(key, self.get_bytes(key))

    def _parse_json(self, key: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StorageError(f"{self.uri_of(key)} is not valid JSON: {exc}") from None

    def exists(self, key: str) -> bool:
        """Whether an object exists at exactly ``key``."""
        return self._backend.exists(self._full(key))

    def size(self, key: str) -> int:
        """Size in bytes; :class:`ObjectNotFound` if absent."""
        return self._backend.size(self._full(key))

    def list(self, prefix: str = "", recursive: bool = True) -> list[str]:
        """Sorted keys (relative to this store) starting with ``prefix`` (a string prefix, as
        in S3). With ``recursive=False``, keys below the next ``/`` are folded into one entry
        ending with ``/``."""
        if prefix.startswith("/"):
            raise ValueError(f"invalid prefix {prefix!r}")
        start = len(self._prefix)
        keys = (k[start:] for k in self._backend.list(self._prefix + prefix, recursive))
        return sorted(set(keys))

    def upload_file(self, local_path: str | Path, key: str) -> None:
        """Upload a local file (multipart with parallel parts on S3), atomically."""
        self._backend.upload_file(Path(local_path), self._full(key))

    def download_file(self, key: str, local_path: str | Path) -> None:
        """Download to a local file; the file appears complete or not at all."""
        path = Path(local_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._backend.download_file(self._full(key), path)

    def delete(self, key: str) -> None:
        """Delete one object; deleting an absent key is not an error (as in S3)."""
        self._backend.delete(self._full(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix``; returns how many."""
        keys = self.list(prefix)
        self._backend.delete_many(self._full(k) for k in keys)
        return len(keys)


def open_store(
    uri: str,
    settings: StorageSettings | None = None,
    *,
    budget: Callable[[], float] | None = None,
) -> ObjectStore:
    """An :class:`ObjectStore` rooted at ``uri``.

    ``s3://bucket/prefix`` uses MinIO/S3 with ``settings`` (default:
    :meth:`StorageSettings.from_env`); ``file:///abs/path`` or a plain path uses a local folder.
    ``budget``: seconds the caller may still spend, read before each S3 request (see
    :class:`.s3.S3Backend`); local files take no time worth fencing.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        from .s3 import S3Backend  # the minio SDK loads only when S3 is used

        if not parsed.netloc:
            raise ValueError(f"s3 URI without a bucket: {uri!r}")
        backend: Backend = S3Backend(
            parsed.netloc, settings or StorageSettings.from_env(), budget=budget
        )
        return ObjectStore(backend, parsed.path)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI must be absolute (file:///path): {uri!r}")
        path = parsed.path
    elif parsed.scheme == "":
        path = uri
    else:
        raise ValueError(f"unsupported storage URI scheme {parsed.scheme!r} in {uri!r}")
    from .local import LocalBackend

    return ObjectStore(LocalBackend(Path(path).resolve()))
