"""Sources: read jsonl / json / parquet / saved-HF datasets and map rows to :class:`Sample`.

A source is read as a sequence of raw rows with a stable row index; a worker reads only its
contiguous slice ``[start, stop)`` of each source. Files on ``file://`` (or plain paths) are read
in place; objects in ``s3://`` are downloaded once into the worker's scratch folder.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from medsft_pipelines.answers import OPTION_LETTERS, normalize_answer
from medsft_pipelines.specs.curation import CurationSource
from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store

from .errors import BadInput, CurationError
from .sample import ImageRef, Sample

RawRow = dict[str, Any] | BadInput
"""A row as read, or the reason it could not even be parsed."""

BATCH_ROWS = 1024


# -- locations ----------------------------------------------------------------------------------


def local_path(uri: str) -> Path | None:
    """The local path of a ``file://`` URI or plain path; None for object-store URIs."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.netloc + parsed.path) if parsed.netloc else Path(parsed.path)
    if parsed.scheme == "":
        return Path(uri)
    return None


def split_uri(uri: str) -> tuple[str, str]:
    """(parent URI, last name) of a file URI: ``s3://b/x/y.json`` -> (``s3://b/x``, ``y.json``)."""
    parent, _, name = uri.rstrip("/").rpartition("/")
    return parent, name


class Fetcher:
    """Makes files local: in place for ``file://``, downloaded once (into ``scratch``) otherwise."""

    def __init__(self, scratch: Path, settings: StorageSettings | None = None) -> None:
        self.scratch = scratch
        self.settings = settings
        self._stores: dict[str, ObjectStore] = {}

    def store(self, uri: str) -> ObjectStore:
        """An object store rooted at ``uri`` (cached per URI)."""
        if uri not in self._stores:
            self._stores[uri] = open_store(uri, self.settings)
        return self._stores[uri]

    def file(self, uri: str) -> Path:
        """A local path holding the file at ``uri``."""
        path = local_path(uri)
        if path is not None:
            if not path.is_file():
                raise CurationError(f"source file {uri} does not exist")
            return path
        parent, name = split_uri(uri)
        target = self.scratch / "downloads" / _safe_name(uri)
        if not target.exists():
            self.store(parent).download_file(name, target)
        return target

    def folder(self, uri: str, suffix: str = "") -> tuple[Path, list[Path]]:
        """(local root, sorted local paths of the files ending in ``suffix``) of a folder."""
        path = local_path(uri)
        if path is not None:
            if not path.is_dir():
                raise CurationError(f"source folder {uri} does not exist")
            return path, sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
        store = self.store(uri)
        root = self.scratch / "downloads" / _safe_name(uri)
        out = []
        for key in store.list():
            if key.endswith(suffix):
                target = root / key
                if not target.exists():
                    store.download_file(key, target)
                out.append(target)
        return root, sorted(out)

    def read_bytes(self, uri: str) -> bytes:
        """The content of one file (images): read in place or fetched, not cached on disk."""
        path = local_path(uri)
        if path is not None:
            return path.read_bytes()
        parent, name = split_uri(uri)
        return self.store(parent).get_bytes(name)


def _safe_name(uri: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in uri)[-200:]


# -- raw rows -----------------------------------------------------------------------------------


class SourceReader:
    """The raw rows of one source, addressable by row index."""

    def __init__(self, source: CurationSource, fetcher: Fetcher) -> None:
        self.source = source
        self.fetcher = fetcher
        self._lines: list[bytes] | None = None
        self._json_rows: list[RawRow] | None = None
        self._tables: list[pa.Table] | None = None

    def num_rows(self) -> int:
        """How many rows the source has."""
        fmt = self.source.format
        if fmt == "jsonl":
            return len(self._jsonl_lines())
        if fmt == "json":
            return len(self._json())
        return sum(t.num_rows for t in self._arrow_tables())

    def rows(self, start: int, stop: int) -> Iterator[tuple[int, RawRow]]:
        """(row index, raw row) for rows ``start <= index < stop``."""
        fmt = self.source.format
        if fmt == "jsonl":
            for i, line in enumerate(self._jsonl_lines()[start:stop], start):
                yield i, _parse_json_line(line)
        elif fmt == "json":
            yield from enumerate(self._json()[start:stop], start)
        else:
            yield from self._arrow_rows(start, stop)

    # jsonl / json load the whole file: the slicing is by line, parsing only what is asked.
    def _jsonl_lines(self) -> list[bytes]:
        if self._lines is None:
            data = self.fetcher.file(self.source.uri).read_bytes()
            self._lines = [line for line in data.splitlines() if line.strip()]
        return self._lines

    def _json(self) -> list[RawRow]:
        if self._json_rows is None:
            try:
                data = json.loads(self.fetcher.file(self.source.uri).read_bytes())
            except ValueError as exc:
                raise CurationError(
                    f"source {self.source.name}: invalid JSON file: {exc}"
                ) from None
            id_column = self.source.fields.id
            if isinstance(data, Mapping):
                # An {id: record} map (PubMedQA): the key is the row id.
                rows: list[RawRow] = []
                for key, value in data.items():
                    if isinstance(value, Mapping):
                        row = dict(value)
                        if id_column and id_column not in row:
                            row[id_column] = key
                        rows.append(row)
                    else:
                        rows.append(BadInput("malformed_row", "record is not an object"))
                self._json_rows = rows
            elif isinstance(data, list):
                self._json_rows = [
                    dict(v)
                    if isinstance(v, Mapping)
                    else BadInput("malformed_row", "record is not an object")
                    for v in data
                ]
            else:
                raise CurationError(
                    f"source {self.source.name}: a json source must be an array or an object"
                )
        return self._json_rows

    def _arrow_tables(self) -> list[pa.Table]:
        if self._tables is None:
            if self.source.format == "parquet":
                self._tables = [pq.read_table(p) for p in self._parquet_files()]
            else:
                self._tables = [_read_arrow_stream(p) for p in self._hf_files()]
        return self._tables

    def _parquet_files(self) -> list[Path]:
        uri = self.source.uri
        if uri.endswith(".parquet"):
            return [self.fetcher.file(uri)]
        _, files = self.fetcher.folder(uri, ".parquet")
        if not files:
            raise CurationError(f"source {self.source.name}: no .parquet files under {uri}")
        return files

    def _hf_files(self) -> list[Path]:
        """The Arrow files of a ``datasets.save_to_disk`` folder (a Dataset or a DatasetDict)."""
        root, files = self.fetcher.folder(self.source.uri)
        rel = {p.relative_to(root).as_posix(): p for p in files}
        prefix = ""
        if "dataset_dict.json" in rel:
            splits = json.loads(rel["dataset_dict.json"].read_text())["splits"]
            split = self.source.split or ("train" if "train" in splits else splits[0])
            if split not in splits:
                raise CurationError(
                    f"source {self.source.name}: split {split!r} not in {sorted(splits)}"
                )
            prefix = f"{split}/"
        state_key = f"{prefix}state.json"
        if state_key not in rel:
            raise CurationError(
                f"source {self.source.name}: {self.source.uri} is not a saved Hugging Face dataset "
                f"(no {state_key})"
            )
        state = json.loads(rel[state_key].read_text())
        return [rel[f"{prefix}{f['filename']}"] for f in state["_data_files"]]

    def _arrow_rows(self, start: int, stop: int) -> Iterator[tuple[int, RawRow]]:
        offset = 0
        for table in self._arrow_tables():
            lo, hi = max(start - offset, 0), min(stop - offset, table.num_rows)
            for begin in range(lo, hi, BATCH_ROWS):
                chunk = table.slice(begin, min(BATCH_ROWS, hi - begin)).to_pylist()
                yield from enumerate(chunk, offset + begin)
            offset += table.num_rows


def _read_arrow_stream(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


def _parse_json_line(line: bytes) -> RawRow:
    try:
        value = json.loads(line)
    except ValueError as exc:
        return BadInput("malformed_row", f"invalid JSON: {exc.__class__.__name__}")
    if not isinstance(value, dict):
        return BadInput("malformed_row", "record is not an object")
    return value


def worker_slice(num_rows: int, worker_index: int, num_workers: int) -> tuple[int, int]:
    """The contiguous row range ``[start, stop)`` of a source that worker ``worker_index`` takes."""
    return num_rows * worker_index // num_workers, num_rows * (worker_index + 1) // num_workers


# -- mapping ------------------------------------------------------------------------------------

_MISSING = object()


def get_path(record: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``a.b.0``) of a record, or ``_MISSING``."""
    value: Any = record
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list | tuple) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _present(value: Any) -> bool:
    if value is _MISSING or value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return not (isinstance(value, str | list | tuple | dict) and len(value) == 0)


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "\n".join(str(v) for v in value if _present(v))
    return str(value).strip()


def _options(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [str(value[k]) for k in sorted(value, key=lambda k: str(k).upper())]
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    if isinstance(value, str):
        # a JSON-encoded list or map, as parquet exports of MCQ datasets often carry
        try:
            parsed = json.loads(value)
        except ValueError:
            raise BadInput("malformed_row", "options is a string, not a list or map") from None
        return _options(parsed)
    raise BadInput("malformed_row", f"options has type {type(value).__name__}")


def canonical_answer(answer: Any, options: list[str], task_type: str) -> str:
    """The ground truth as the verifiers expect it: an option letter for multiple choice."""
    if task_type != "mcq":
        return _text(answer)
    if isinstance(answer, bool):
        raise BadInput("malformed_row", "multiple-choice answer is a boolean")
    letters = OPTION_LETTERS[: len(options)]
    if isinstance(answer, int):  # a 0-based option index (MedMCQA's `cop`)
        if 0 <= answer < len(options):
            return letters[answer]
        raise BadInput("malformed_row", f"answer index {answer} out of range")
    text = _text(answer)
    if text.upper() in letters:
        return text.upper()
    if len(text) > 1 and text[0].upper() in letters and text[1] in ".):":
        return text[0].upper()
    matches = [
        letters[i] for i, o in enumerate(options) if normalize_answer(o) == normalize_answer(text)
    ]
    if len(matches) == 1:
        return matches[0]
    raise BadInput("malformed_row", "the answer names none of the options")


def _image_refs(value: Any) -> list[ImageRef]:
    items = value if isinstance(value, list | tuple) else [value]
    refs: list[ImageRef] = []
    for item in items:
        if isinstance(item, Mapping):  # HF Image feature: {"bytes": ..., "path": ...}
            data, path = item.get("bytes"), item.get("path")
            if data:
                refs.append(bytes(data))
            elif path:
                refs.append(str(path))
            else:
                raise BadInput("missing_image", "image entry has neither bytes nor path")
        elif isinstance(item, bytes | bytearray | memoryview):
            refs.append(bytes(item))
        elif isinstance(item, str) and item.startswith("data:"):
            try:
                refs.append(base64.b64decode(item.partition(",")[2], validate=True))
            except (binascii.Error, ValueError):
                raise BadInput("undecodable_image", "invalid base64 data URL") from None
        elif isinstance(item, str) and item.strip():
            refs.append(item.strip())
        elif _present(item):
            raise BadInput("malformed_row", f"image entry has type {type(item).__name__}")
    return refs


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


@dataclass(frozen=True)
class SourceContext:
    """What mapping a row needs to know about its source."""

    source: CurationSource
    index: int


def to_sample(record: RawRow, ctx: SourceContext, row_index: int) -> Sample:
    """Map one raw row to a :class:`Sample`; :class:`BadInput` says why a row is unusable."""
    if isinstance(record, BadInput):
        raise record
    src, fields = ctx.source, ctx.source.fields
    question = get_path(record, fields.question)
    if not _present(question):
        raise BadInput("malformed_row", f"missing field {fields.question!r}")
    answer = get_path(record, fields.answer)
    if not _present(answer) and src.task != "report":
        raise BadInput("malformed_row", f"missing field {fields.answer!r}")
    raw_id = get_path(record, fields.id) if fields.id else _MISSING
    row_id = _text(raw_id) if _present(raw_id) else str(row_index)

    options = list(src.options)
    if fields.options and _present(value := get_path(record, fields.options)):
        options = _options(value)
    if src.task == "mcq":
        if len(options) < 2:
            raise BadInput("malformed_row", "multiple-choice row with fewer than 2 options")
        if len(options) > len(OPTION_LETTERS):
            raise BadInput("malformed_row", f"more than {len(OPTION_LETTERS)} options")

    context = ""
    if fields.context and _present(value := get_path(record, fields.context)):
        context = _text(value)
    images: list[ImageRef] = []
    if fields.images and _present(value := get_path(record, fields.images)):
        images = _image_refs(value)
    if src.modality == "image" and not images:
        raise BadInput("missing_image", "image question without an image")
    traces: list[str] = []
    if fields.traces and _present(value := get_path(record, fields.traces)):
        traces = [str(t) for t in (value if isinstance(value, list | tuple) else [value])]

    return Sample(
        id=f"{src.name}/{row_id}",
        source=src.name,
        task_type=src.task,
        modality=src.modality,
        question=_text(question),
        answer=canonical_answer(answer, options, src.task) if _present(answer) else "",
        options=options,
        context=context,
        image_refs=images,
        traces=traces,
        metadata={
            col: _json_safe(v)
            for col in fields.metadata
            if (v := get_path(record, col)) is not _MISSING
        },
        order=(ctx.index, row_index),
    )


def describe_raw(record: RawRow) -> dict[str, Any]:
    """A JSON-able copy of a raw row for the quarantine file (bytes replaced by their size)."""
    if isinstance(record, BadInput):
        return {}
    return _json_safe(record)
