"""Dataset shards: Parquet files of a target size, checksummed, listed by a manifest written last.

Layout under a dataset root::

    shards/shard-00000.parquet   zstd Parquet; images are ``binary`` columns
    shards/shard-00001.parquet
    manifest.json                written LAST: totals, shard list with sha256, spec hash, stats

A dataset exists for readers only once ``manifest.json`` exists, and readers trust only the shards
it lists, verified against its sizes and checksums.

Sample order (see :meth:`DatasetReader.sample_order`) is a pure function of the manifest and
``(seed, epoch, rank, world_size)``. Shards are grouped by folder (the curation merge writes
each source into its own folder). Per group, the shard order is shuffled per ``(seed, epoch)``,
rows are shuffled within each shard, and the group's sequence is cut into ``world_size``
contiguous ranges, so ranks are disjoint, together cover every sample once, and each rank reads
only about ``1/world_size`` of each group's shards. Within a group, ``mix_shards`` consecutive
shard pieces are interleaved at random; a rank's groups are interleaved at random in proportion
to their sizes, so its stream mixes the sources at their global shares from the first sample
on. Resuming at a sample offset recomputes the same order and skips without reading the
shards only the skipped samples needed.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import accumulate
from types import TracebackType
from typing import Any, Literal, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from medsft_pipelines.contract import Spec

from .base import ObjectStore
from .errors import DatasetExistsError, DatasetNotReady, ObjectNotFound, ShardIntegrityError
from .layout import MANIFEST_KEY

log = logging.getLogger("medsft.storage")

MANIFEST_SCHEMA_VERSION = 1
DEFAULT_SHARD_PREFIX = "shards/"
SHARD_NAME = re.compile(r"shard-\d{5}\.parquet")
MiB = 1024 * 1024
# Rows are turned into Python dicts this many at a time (bounded memory, amortised overhead).
DECODE_CHUNK_ROWS = 256

Rows: TypeAlias = Mapping[str, Any] | Sequence[Mapping[str, Any]] | pa.RecordBatch | pa.Table


class ShardInfo(Spec):
    """One shard as the manifest lists it."""

    key: str
    """Object key relative to the dataset root."""
    num_rows: int = Field(ge=0)
    """Rows in the shard."""
    num_bytes: int = Field(ge=0)
    """Size of the Parquet file in bytes."""
    sha256: str
    """Hex sha256 of the Parquet file."""


class Manifest(Spec):
    """What a complete dataset contains. Its presence is what makes the dataset exist."""

    schema_version: int = MANIFEST_SCHEMA_VERSION
    """Version of this manifest format."""
    format: Literal["parquet"] = "parquet"
    """File format of the shards."""
    created_at: str
    """UTC time the manifest was written (ISO 8601)."""
    spec_hash: str | None = None
    """Hash of the spec that produced the dataset (content addressing of stage outputs)."""
    num_rows: int = Field(ge=0)
    """Total rows over all shards."""
    num_bytes: int = Field(ge=0)
    """Total bytes over all shards."""
    columns: dict[str, str]
    """Column name to Arrow type, for humans and for compatibility checks."""
    shards: list[ShardInfo]
    """The shards, in write order."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Stage-specific facts; by convention ``token_stats`` holds the token statistics."""

    @property
    def token_stats(self) -> Any:
        """The token statistics the writer recorded, if any."""
        return self.extra.get("token_stats")

    @classmethod
    def combine(
        cls,
        parts: Sequence[Manifest],
        *,
        spec_hash: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """One manifest listing the shards of several partial ones (e.g. one per curation
        worker, each written with its own ``shard_prefix`` and ``write_manifest=False``)."""
        columns = [p.columns for p in parts if p.shards]
        if any(c != columns[0] for c in columns[1:]):
            raise ValueError("cannot combine manifests with different columns")
        shards = [s for p in parts for s in p.shards]
        if len({s.key for s in shards}) != len(shards):
            raise ValueError("cannot combine manifests that list the same shard twice")
        return cls(
            created_at=_now(),
            spec_hash=spec_hash,
            num_rows=sum(s.num_rows for s in shards),
            num_bytes=sum(s.num_bytes for s in shards),
            columns=columns[0] if columns else {},
            shards=shards,
            extra=dict(extra or {}),
        )


def read_manifest(store: ObjectStore) -> Manifest:
    """The dataset's manifest; :class:`DatasetNotReady` while it does not exist."""
    try:
        raw = store.get_bytes(MANIFEST_KEY)
    except ObjectNotFound:
        raise DatasetNotReady(
            f"{store.uri_of(MANIFEST_KEY)} does not exist: the dataset is not complete (yet)"
        ) from None
    manifest = Manifest.model_validate_json(raw)
    if manifest.schema_version > MANIFEST_SCHEMA_VERSION:
        raise DatasetNotReady(
            f"{store.uri_of(MANIFEST_KEY)} has schema version {manifest.schema_version}; "
            f"this reader understands up to {MANIFEST_SCHEMA_VERSION}"
        )
    return manifest


def write_manifest(store: ObjectStore, manifest: Manifest) -> None:
    """Publish ``manifest``: from now on the dataset exists for readers."""
    store.put_bytes(MANIFEST_KEY, manifest.model_dump_json(by_alias=True, indent=2).encode())


def dataset_ready(store: ObjectStore) -> bool:
    """Whether the dataset at ``store`` is complete (its manifest exists)."""
    return store.exists(MANIFEST_KEY)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _row_bytes(row: Mapping[str, Any]) -> int:
    """A cheap estimate of a row's in-memory size, to decide when a row group is full."""
    return sum(len(v) if isinstance(v, bytes | str) else 8 for v in row.values())


class ShardWriter:
    """Writes rows into zstd Parquet shards of about ``target_shard_bytes`` each.

    Each shard is built in memory, checksummed, then uploaded by a background thread while the
    next one fills. :meth:`close` writes the manifest last. Use as a context manager: leaving the
    block with an exception writes no manifest, so readers never see the partial dataset.
    """

    def __init__(
        self,
        store: ObjectStore,
        schema: pa.Schema | None = None,
        *,
        target_shard_bytes: int = 128 * MiB,
        spec_hash: str | None = None,
        shard_prefix: str = DEFAULT_SHARD_PREFIX,
        row_group_bytes: int | None = None,
        compression: str = "zstd",
        overwrite: bool = False,
    ) -> None:
        if target_shard_bytes <= 0:
            raise ValueError("target_shard_bytes must be positive")
        if shard_prefix and not shard_prefix.endswith("/"):
            shard_prefix += "/"
        self.store = store
        self.schema = schema
        self.target_shard_bytes = target_shard_bytes
        self.spec_hash = spec_hash
        self.shard_prefix = shard_prefix
        # Row groups: big enough to compress well, small enough to fill shards evenly.
        self.row_group_bytes = row_group_bytes or min(
            max(target_shard_bytes // 4, 64 * 1024), target_shard_bytes, 64 * MiB
        )
        self.compression = compression
        if store.exists(MANIFEST_KEY):
            if not overwrite:
                raise DatasetExistsError(f"{store.uri_of(MANIFEST_KEY)} already exists")
            # Unpublish first: from here on readers see "not ready", never a mix of versions.
            store.delete(MANIFEST_KEY)
        self._pending_rows: list[Mapping[str, Any]] = []
        self._pending_tables: list[pa.Table] = []
        self._pending_bytes = 0
        self._sink: pa.BufferOutputStream | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._shard_rows = 0
        self._shards: list[ShardInfo] = []
        self._uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-upload")
        self._upload: Future[ShardInfo] | None = None
        self._closed = False

    # -- writing ----------------------------------------------------------------------------

    def write(self, rows: Rows) -> None:
        """Add one row (a dict), a list of rows, or an Arrow RecordBatch/Table."""
        if self._closed:
            raise ValueError("ShardWriter is closed")
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if isinstance(rows, pa.Table):
            self._flush_rows()  # keep the write order of mixed dict and Arrow input
            # Big tables are cut into row-group-sized slices so that shards keep their size.
            step = max(1, rows.num_rows * self.row_group_bytes // max(1, rows.nbytes))
            for offset in range(0, rows.num_rows, step):
                piece = rows.slice(offset, step)
                self._pending_tables.append(piece)
                self._pending_bytes += piece.nbytes
                self._maybe_write_row_group()
        elif isinstance(rows, Mapping):
            self._add_row(rows)
        else:
            for row in rows:
                self._add_row(row)

    def _add_row(self, row: Mapping[str, Any]) -> None:
        self._pending_rows.append(row)
        self._pending_bytes += _row_bytes(row)
        self._maybe_write_row_group()

    def _maybe_write_row_group(self) -> None:
        if self._pending_bytes >= self.row_group_bytes:
            self._write_row_group()

    def _flush_rows(self) -> None:
        if not self._pending_rows:
            return
        if self.schema is None:
            self.schema = pa.Table.from_pylist(self._pending_rows).schema
        names = set(self.schema.names)
        unknown = {k for row in self._pending_rows for k in row} - names
        if unknown:
            raise ValueError(f"rows have columns not in the schema: {sorted(unknown)}")
        self._pending_tables.append(pa.Table.from_pylist(self._pending_rows, schema=self.schema))
        self._pending_rows = []

    def _write_row_group(self) -> None:
        self._flush_rows()
        if not self._pending_tables:
            return
        if self.schema is None:
            self.schema = self._pending_tables[0].schema
        table = pa.concat_tables(
            [t.select(self.schema.names).cast(self.schema) for t in self._pending_tables]
        )
        self._pending_tables = []
        self._pending_bytes = 0
        if self._parquet is None:
            self._sink = pa.BufferOutputStream()
            self._parquet = pq.ParquetWriter(self._sink, self.schema, compression=self.compression)
        self._parquet.write_table(table, row_group_size=max(1, table.num_rows))
        self._shard_rows += table.num_rows
        assert self._sink is not None
        if self._sink.tell() >= self.target_shard_bytes:
            self._finish_shard()

    def _finish_shard(self) -> None:
        if self._parquet is None or self._sink is None:
            return
        self._parquet.close()
        data = self._sink.getvalue().to_pybytes()
        info = ShardInfo(
            key=f"{self.shard_prefix}shard-{len(self._shards):05d}.parquet",
            num_rows=self._shard_rows,
            num_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        self._shards.append(info)
        self._parquet, self._sink, self._shard_rows = None, None, 0
        self.wait_for_uploads()  # at most one shard in flight: bounded memory
        self._upload = self._uploader.submit(self._put_shard, info, data)

    def _put_shard(self, info: ShardInfo, data: bytes) -> ShardInfo:
        self.store.put_bytes(info.key, data)
        return info

    def wait_for_uploads(self) -> None:
        """Block until every finished shard is stored (raises what a failed upload raised)."""
        if self._upload is not None:
            upload, self._upload = self._upload, None
            upload.result()

    # -- finishing --------------------------------------------------------------------------

    def close(self, extra: Mapping[str, Any] | None = None, *, publish: bool = True) -> Manifest:
        """Flush the last shard, wait for uploads, then write the manifest (unless
        ``publish=False``: a worker whose shards a merge step lists with
        :meth:`Manifest.combine` and :func:`write_manifest`). Returns the manifest."""
        if self._closed:
            raise ValueError("ShardWriter is already closed")
        try:
            self._write_row_group()
            self._finish_shard()
            self.wait_for_uploads()
        finally:
            self._closed = True
            self._uploader.shutdown(wait=True)
        schema = self.schema or pa.schema([])
        manifest = Manifest(
            created_at=_now(),
            spec_hash=self.spec_hash,
            num_rows=sum(s.num_rows for s in self._shards),
            num_bytes=sum(s.num_bytes for s in self._shards),
            columns={f.name: str(f.type) for f in schema},
            shards=self._shards,
            extra=dict(extra or {}),
        )
        if publish:
            write_manifest(self.store, manifest)
            self._delete_stale_shards(manifest)
        return manifest

    def abort(self) -> None:
        """Stop without a manifest (what leaving the context with an exception does)."""
        if self._closed:
            return
        self._closed = True
        self._uploader.shutdown(wait=True, cancel_futures=True)

    def _delete_stale_shards(self, manifest: Manifest) -> None:
        # Shards of an earlier, overwritten or crashed attempt: unlisted, so nobody reads them.
        listed = {s.key for s in manifest.shards}
        stale = [
            key
            for key in self.store.list(self.shard_prefix, recursive=False)
            if SHARD_NAME.fullmatch(key[len(self.shard_prefix) :]) and key not in listed
        ]
        for key in stale:
            self.store.delete(key)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()


# -- reading ----------------------------------------------------------------------------------


class _Piece:
    """A contiguous range ``[start, stop)`` of one shard's shuffled row sequence."""

    __slots__ = ("shard", "start", "stop")

    def __init__(self, shard: int, start: int, stop: int) -> None:
        self.shard, self.start, self.stop = shard, start, stop

    def __len__(self) -> int:
        return self.stop - self.start


class DatasetReader:
    """Streams the samples of a complete dataset (its manifest must exist).

    ``verify`` checks each shard's sha256 against the manifest (sizes and row counts are always
    checked). ``prefetch`` shards are fetched (and verified and parsed) ahead in background
    threads; ``mix_shards`` shard pieces are interleaved. Memory: about
    ``mix_shards + prefetch`` decoded shards.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        verify: bool = True,
        prefetch: int = 2,
        mix_shards: int = 2,
        columns: Sequence[str] | None = None,
    ) -> None:
        if prefetch < 0 or mix_shards < 1:
            raise ValueError("prefetch must be >= 0 and mix_shards >= 1")
        self.store = store
        self.manifest = read_manifest(store)
        self.verify = verify
        self.prefetch = prefetch
        self.mix_shards = mix_shards
        self.columns = list(columns) if columns is not None else None
        self._hasher = ThreadPoolExecutor(max(1, prefetch), thread_name_prefix="shard-sha256")

    def __len__(self) -> int:
        return self.manifest.num_rows

    def num_samples(self, rank: int = 0, world_size: int = 1) -> int:
        """How many samples ``rank`` gets (ranks differ by at most one)."""
        return sum(hi - lo for lo, hi in self._rank_ranges(rank, world_size))

    def read_shard(self, index: int) -> pa.Table:
        """Shard ``index`` of the manifest as a table, after checking it against the manifest."""
        info = self.manifest.shards[index]
        uri = self.store.uri_of(info.key)
        try:
            data = self.store.get_bytes(info.key)
        except ObjectNotFound:
            raise ShardIntegrityError(f"shard {uri} listed in the manifest is missing") from None
        if len(data) != info.num_bytes:
            raise ShardIntegrityError(
                f"shard {uri} is {len(data)} bytes, the manifest says {info.num_bytes} "
                f"(sha256 {info.sha256}): truncated or replaced"
            )
        # Hash and parse at once (both release the GIL); nothing is returned unverified.
        digest = self._hasher.submit(_sha256, data) if self.verify else None
        try:
            table = pq.read_table(pa.BufferReader(data), columns=self.columns)
            parse_error = None
        except (pa.ArrowException, OSError) as exc:
            parse_error = exc
        if digest is not None:
            actual = digest.result()
            if actual != info.sha256:
                raise ShardIntegrityError(
                    f"shard {uri}: sha256 mismatch: manifest {info.sha256}, content {actual}"
                )
        if parse_error is not None:
            raise ShardIntegrityError(f"shard {uri} is not valid Parquet: {parse_error}")
        if table.num_rows != info.num_rows:
            raise ShardIntegrityError(
                f"shard {uri} has {table.num_rows} rows, the manifest says {info.num_rows}"
            )
        return table

    def iter_samples(
        self, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> Iterator[dict[str, Any]]:
        """This rank's samples for ``(seed, epoch)`` as dicts, from its ``start``-th sample on.

        The order is :meth:`sample_order`; ranks are disjoint and together cover the dataset
        exactly once; ``start=k`` yields exactly what the full iteration yields after its
        first k, without reading shards only the skipped samples needed.
        """
        shards, rows = self.sample_order(seed, epoch, rank, world_size)
        if start < 0:
            raise ValueError("start must be >= 0")
        shards, rows = shards[start:], rows[start:]
        if not len(shards):
            return
        # Each shard is fetched once, in order of first use, and dropped after its last use.
        by_shard = np.argsort(shards, kind="stable")
        uniq, first, counts = np.unique(shards[by_shard], return_index=True, return_counts=True)
        wanted = {
            int(s): rows[by_shard[f : f + c]].tolist()
            for s, f, c in zip(uniq, first, counts, strict=True)
        }
        fetch_order = list(dict.fromkeys(shards.tolist()))
        remaining = {s: len(w) for s, w in wanted.items()}
        open_rows: dict[int, dict[int, dict[str, Any]]] = {}
        with _Prefetcher(self, fetch_order) as prefetcher:
            for shard, row in zip(shards.tolist(), rows.tolist(), strict=True):
                if shard not in open_rows:
                    open_rows[shard] = _decode(prefetcher.next(), wanted.pop(shard))
                yield open_rows[shard].pop(row)
                remaining[shard] -= 1
                if not remaining[shard]:
                    del open_rows[shard]

    def sample_order(
        self, seed: int, epoch: int, rank: int = 0, world_size: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """``rank``'s samples for ``(seed, epoch)`` in reading order: (shard index, row) arrays.

        A pure function of the manifest and the arguments (nothing is read). Shards are grouped
        by folder: the curation merge writes each source into its own folder, so a group is a
        source. Each group is shuffled on its own (shard order, then rows within a shard) and
        cut into ``world_size`` contiguous ranges of nearly equal size (rank totals differ by at
        most one). Within its range of a group, a rank interleaves ``mix_shards`` shard pieces at
        a time at random; across groups, the rank's ranges are interleaved at random in
        proportion to their sizes, so every window of a rank's stream holds each source at its
        global share up to sampling noise, while every shard is read by about one rank.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        parts = [
            self._group_range(name, members, seed, epoch, lo, hi, rank, world_size)
            for (name, members), (lo, hi) in zip(
                self._groups(), self._rank_ranges(rank, world_size), strict=True
            )
        ]
        sizes = [len(p[0]) for p in parts]
        labels = np.repeat(np.arange(len(parts)), sizes)
        _rng(f"medsft-mix-groups:{seed}:{epoch}:{world_size}:{rank}").shuffle(labels)
        order = np.argsort(labels, kind="stable")
        shards = np.empty(len(labels), dtype=np.int64)
        rows = np.empty(len(labels), dtype=np.int64)
        if parts:
            shards[order] = np.concatenate([p[0] for p in parts])
            rows[order] = np.concatenate([p[1] for p in parts])
        return shards, rows

    def _rank_ranges(self, rank: int, world_size: int) -> list[tuple[int, int]]:
        """``rank``'s range of each group's sequence."""
        ranges = []
        offset = 0
        for _, members in self._groups():
            total = sum(self.manifest.shards[s].num_rows for s in members)
            base, extra = divmod(total, world_size)
            # The group's remainder goes to the ranks after the previous group's remainder,
            # so per-rank totals over all groups differ by at most one.
            counts = [base + ((r - offset) % world_size < extra) for r in range(world_size)]
            offset = (offset + extra) % world_size
            lo = sum(counts[:rank])
            ranges.append((lo, lo + counts[rank]))
        return ranges

    def _groups(self) -> list[tuple[str, list[int]]]:
        groups: dict[str, list[int]] = {}
        for index, info in enumerate(self.manifest.shards):
            groups.setdefault(info.key.rpartition("/")[0], []).append(index)
        return list(groups.items())

    def _group_range(
        self,
        name: str,
        members: list[int],
        seed: int,
        epoch: int,
        lo: int,
        hi: int,
        rank: int,
        world_size: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``[lo, hi)`` of the group's shuffled sequence, ``mix_shards`` pieces mixed."""
        shards = self.manifest.shards
        order = list(members)
        random.Random(f"medsft-shards:{seed}:{epoch}:{name}").shuffle(order)
        ends = list(accumulate(shards[i].num_rows for i in order))
        pieces = []
        for shard, end in zip(order, ends, strict=True):
            begin = end - shards[shard].num_rows
            a, b = max(begin, lo), min(end, hi)
            if a < b:
                pieces.append(_Piece(shard, a - begin, b - begin))
        out_shards: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
        out_rows: list[np.ndarray] = [np.empty(0, dtype=np.int64)]
        for number in range(0, len(pieces), self.mix_shards):
            group = pieces[number : number + self.mix_shards]
            labels = _interleave(group, f"{seed}:{epoch}:{world_size}:{rank}:{name}:{number}")
            piece_rows = [
                _row_permutation(seed, epoch, p.shard, shards[p.shard].num_rows)[p.start : p.stop]
                for p in group
            ]
            slot = np.argsort(labels, kind="stable")
            mixed_rows = np.empty(len(labels), dtype=np.int64)
            mixed_rows[slot] = np.concatenate(piece_rows)
            out_shards.append(np.asarray([p.shard for p in group], dtype=np.int64)[labels])
            out_rows.append(mixed_rows)
        return np.concatenate(out_shards), np.concatenate(out_rows)


def _rng(key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def _row_permutation(seed: int, epoch: int, shard: int, num_rows: int) -> np.ndarray:
    """The shuffled row order of one shard in one epoch."""
    return _rng(f"medsft-rows:{seed}:{epoch}:{shard}").permutation(num_rows)


def _decode(table: pa.Table, wanted: list[int]) -> dict[int, dict[str, Any]]:
    """The rows ``wanted`` of ``table`` as dicts, keyed by row index."""
    if 2 * len(wanted) < table.num_rows:
        # A small part of the shard: gather just those rows.
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(wanted), DECODE_CHUNK_ROWS):
            part = wanted[i : i + DECODE_CHUNK_ROWS]
            out.update(zip(part, table.take(part).to_pylist(), strict=True))
        return out
    # Most of the shard: decode it in storage order (no gather copy of the image bytes).
    rows = table.to_pylist()
    return {i: rows[i] for i in wanted}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _interleave(group: Sequence[_Piece], key: str) -> np.ndarray:
    """A random merge of the pieces: the i-th label is the piece the i-th sample comes from."""
    labels = np.repeat(np.arange(len(group), dtype=np.int64), [len(p) for p in group])
    _rng(f"medsft-mix:{key}").shuffle(labels)
    return labels


class _Prefetcher:
    """Fetches shards in a known order, ``reader.prefetch`` ahead of the consumer."""

    def __init__(self, reader: DatasetReader, order: Iterable[int]) -> None:
        self._read = reader.read_shard
        self._order = deque(order)
        # Shards held: the group being consumed (mix_shards) plus `prefetch` in flight.
        self._depth = max(1, reader.prefetch)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, reader.prefetch), thread_name_prefix="shard-prefetch"
        )
        self._futures: deque[Future[pa.Table]] = deque()
        self._fill()

    def _fill(self) -> None:
        while self._order and len(self._futures) < self._depth:
            self._futures.append(self._pool.submit(self._read, self._order.popleft()))

    def next(self) -> pa.Table:
        table = self._futures.popleft().result()
        self._fill()
        return table

    def __enter__(self) -> _Prefetcher:
        return self

    def __exit__(self, *_: object) -> None:
        # A consumer that stops early must not wait for shards it will never read.
        self._pool.shutdown(wait=False, cancel_futures=True)
