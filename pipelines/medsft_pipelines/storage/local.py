"""The ``file://`` backend: a local folder, same semantics as the S3 backend.

Every write goes to a hidden temporary file in the destination folder, is fsynced, then
``os.replace``d onto its key, so readers see the old object or the new one, never a partial one.
Temporary files are invisible to :meth:`LocalBackend.list`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import ObjectNotFound, PreconditionFailed

TMP_MARK = ".medsft-tmp-"


class LocalBackend:
    """Objects as files under ``root``; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def uri(self, key: str) -> str:
        return f"file://{self.root.as_posix()}/{key}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        self._write_atomically(self._path(key), lambda out: out.write(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object at {self.uri(key)}") from None

    def get_bytes_tagged(self, key: str) -> tuple[bytes, str]:
        data = self.get_bytes(key)
        return data, hashlib.md5(data, usedforsecurity=False).hexdigest()

    def put_bytes_if(self, key: str, data: bytes, tag: str | None) -> str:
        """Conditional writes exclude each other with a lock on the object's folder (the
        content's MD5 is the tag, as a single-part S3 ETag is)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            try:
                current: str | None = self.get_bytes_tagged(key)[1]
            except ObjectNotFound:
                current = None
            if current != tag:
                raise PreconditionFailed(f"{self.uri(key)} changed since it was read")
            self._write_atomically(path, lambda out: out.write(data))
        finally:
            os.close(folder)  # releases the lock
        return hashlib.md5(data, usedforsecurity=False).hexdigest()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no object at {self.uri(key)}")
        return path.stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str, recursive: bool) -> Iterator[str]:
        folder, _, name_start = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return
        lead = f"{folder}/" if folder else ""
        for entry in os.scandir(base):
            if not entry.name.startswith(name_start) or entry.name.startswith(TMP_MARK):
                continue
            key = lead + entry.name
            if entry.is_file():
                yield key
            elif entry.is_dir() and recursive:
                yield from self._walk(Path(entry.path), key + "/")
            elif entry.is_dir() and next(self._walk(Path(entry.path), key + "/"), None):
                yield key + "/"  # like an S3 common prefix: only when objects exist below

    def _walk(self, folder: Path, lead: str) -> Iterator[str]:
        for dirpath, _dirnames, filenames in os.walk(folder):
            rel = Path(dirpath).relative_to(folder).as_posix()
            sub = "" if rel == "." else rel + "/"
            for name in filenames:
                if not name.startswith(TMP_MARK):
                    yield lead + sub + name

    def upload_file(self, path: Path, key: str) -> None:
        with path.open("rb") as src:
            self._write_atomically(self._path(key), lambda out: shutil.copyfileobj(src, out))

    def download_file(self, key: str, path: Path) -> None:
        try:
            src = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"no object at {self.uri(key)}") from None
        with src:
            # No fsync: a download is a local copy, re-fetched after a crash anyway.
            self._write_atomically(path, lambda out: shutil.copyfileobj(src, out), durable=False)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError):
            return
        self._prune_empty_parents(path.parent)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def _prune_empty_parents(self, folder: Path) -> None:
        # S3 has no folders: remove the ones a delete emptied, so listings stay equal.
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    @staticmethod
    def _write_atomically(
        path: Path, write: Callable[[BinaryIO], object], *, durable: bool = True
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{TMP_MARK}{uuid.uuid4().hex}"
        try:
            with tmp.open("wb") as out:
                write(out)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
