"""Reading a benchmark's published files from object storage or a local folder.

Loaders never touch paths or S3 directly: they get a :class:`BenchmarkFiles` rooted at the
benchmark's folder and ask for files by their published names. Missing files raise
:class:`BenchmarkFileMissing` naming the benchmark and what was looked for.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

from medsft_pipelines.storage import ObjectStore, open_store


class BenchmarkFileMissing(FileNotFoundError):
    """A benchmark file or image that the benchmark's format requires is not there."""


class BenchmarkFormatError(ValueError):
    """A benchmark file exists but does not have the published format."""


class BenchmarkFiles:
    """The files of one benchmark, under one root (``s3://…``, ``file://…`` or a path)."""

    def __init__(self, benchmark: str, root: str | ObjectStore) -> None:
        self.benchmark = benchmark
        self.store = root if isinstance(root, ObjectStore) else open_store(root)

    @property
    def uri(self) -> str:
        """The root URI, for messages."""
        return self.store.uri

    def find(self, *candidates: str) -> str:
        """The first of ``candidates`` (keys relative to the root) that exists."""
        for key in candidates:
            if self.store.exists(key):
                return key
        raise BenchmarkFileMissing(
            f"benchmark {self.benchmark}: none of {', '.join(candidates)} found under {self.uri}"
        )

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists under the root."""
        return self.store.exists(key)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (recursive, sorted)."""
        return self.store.list(prefix)

    def read_bytes(self, key: str) -> bytes:
        """The content of one file; :class:`BenchmarkFileMissing` when absent."""
        if not self.store.exists(key):
            raise BenchmarkFileMissing(
                f"benchmark {self.benchmark}: {self.store.uri_of(key)} not found"
            )
        return self.store.get_bytes(key)

    def read_json(self, key: str) -> Any:
        """Parse one JSON document."""
        try:
            return json.loads(self.read_bytes(key))
        except ValueError as exc:
            raise BenchmarkFormatError(
                f"benchmark {self.benchmark}: {key} is not JSON: {exc}"
            ) from None

    def read_rows(self, key: str) -> list[dict[str, Any]]:
        """Rows of a table file, by extension: ``.jsonl``, ``.json`` (list, or JSON lines),
        ``.parquet`` or ``.csv`` (with a header)."""
        data = self.read_bytes(key)
        ext = posixpath.splitext(key)[1].lower()
        try:
            if ext == ".parquet":
                import pyarrow.parquet as pq

                return pq.read_table(io.BytesIO(data)).to_pylist()
            if ext == ".csv":
                return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
            text = data.decode("utf-8")
            if ext == ".json" and text.lstrip().startswith("["):
                return list(json.loads(text))
            return list(_json_lines(text))
        except (ValueError, OSError) as exc:
            raise BenchmarkFormatError(
                f"benchmark {self.benchmark}: cannot read {key}: {exc}"
            ) from None

    def find_split(self, split: str, stems: Iterable[str], exts: Iterable[str]) -> str:
        """The first existing ``<stem><ext>`` where stems may contain ``{split}``."""
        exts = list(exts)
        candidates = [stem.format(split=split) + ext for stem in stems for ext in exts]
        return self.find(*candidates)

    def check_images(self, refs: Iterable[str]) -> None:
        """Raise :class:`BenchmarkFileMissing` naming the first images that are absent.

        One listing per folder, not one request per image: benchmarks have thousands.
        """
        by_folder: dict[str, set[str]] = {}
        for ref in refs:
            by_folder.setdefault(posixpath.dirname(ref), set()).add(ref)
        missing: list[str] = []
        for folder, wanted in by_folder.items():
            present = set(self.store.list(f"{folder}/" if folder else "", recursive=False))
            missing.extend(sorted(wanted - present))
        if missing:
            shown = ", ".join(self.store.uri_of(k) for k in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise BenchmarkFileMissing(f"benchmark {self.benchmark}: missing image {shown}{more}")


def _json_lines(text: str) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"line {number} is not a JSON object")
            yield row
