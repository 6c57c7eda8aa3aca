"""Dataset shards on both backends: manifest last, checksums, deterministic partitioned reads."""

from __future__ import annotations

import hashlib
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medsft_pipelines.storage import (
    DatasetExistsError,
    DatasetNotReady,
    ObjectStore,
    ShardIntegrityError,
)
from medsft_pipelines.storage.layout import MANIFEST_KEY
from medsft_pipelines.storage.shards import (
    DatasetReader,
    Manifest,
    ShardWriter,
    read_manifest,
    write_manifest,
)

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("question", pa.string()),
        ("image", pa.binary()),
        ("num_tokens", pa.int32()),
    ]
)
TARGET = 48 * 1024


def make_row(i: int) -> dict:
    rng = random.Random(i)
    return {
        "id": i,
        "question": f"question {i} " + "lorem " * rng.randint(1, 40),
        "image": rng.randbytes(rng.randint(50, 400)) if i % 3 else None,
        "num_tokens": rng.randint(10, 500),
    }


def write_dataset(store: ObjectStore, n: int = 1500, **kwargs) -> Manifest:
    kwargs.setdefault("target_shard_bytes", TARGET)
    writer = ShardWriter(store, SCHEMA, spec_hash="sha256:feed", **kwargs)
    for i in range(0, n, 100):
        if i % 200:
            writer.write([make_row(j) for j in range(i, min(i + 100, n))])
        else:  # mixed input kinds: Arrow batches and dicts
            writer.write(
                pa.RecordBatch.from_pylist([make_row(j) for j in range(i, min(i + 100, n))], SCHEMA)
            )
    return writer.close(extra={"token_stats": {"mean": 1.5}})


def ids(samples) -> list[int]:
    return [s["id"] for s in samples]


def test_writer_shards_and_manifest(store: ObjectStore) -> None:
    manifest = write_dataset(store)
    assert manifest == read_manifest(store)
    assert manifest.num_rows == 1500
    assert manifest.spec_hash == "sha256:feed"
    assert manifest.token_stats == {"mean": 1.5}
    assert manifest.columns == {
        "id": "int64",
        "question": "string",
        "image": "binary",
        "num_tokens": "int32",
    }
    assert len(manifest.shards) >= 4
    assert sum(s.num_rows for s in manifest.shards) == 1500
    assert sum(s.num_bytes for s in manifest.shards) == manifest.num_bytes
    for shard in manifest.shards:
        data = store.get_bytes(shard.key)
        assert hashlib.sha256(data).hexdigest() == shard.sha256
        assert len(data) == shard.num_bytes
        parquet = pq.ParquetFile(pa.BufferReader(data))
        assert parquet.metadata.num_rows == shard.num_rows
        assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
    # Every shard but the last reaches the target size, and none overshoots by much.
    for shard in manifest.shards[:-1]:
        assert TARGET <= shard.num_bytes < 2 * TARGET
    assert sorted(store.list()) == sorted([MANIFEST_KEY] + [s.key for s in manifest.shards])


def test_rows_roundtrip_with_binary_images(store: ObjectStore) -> None:
    write_dataset(store, n=300)
    reader = DatasetReader(store)
    got = {s["id"]: s for s in reader.iter_samples(seed=0, epoch=0)}
    assert got == {i: make_row(i) for i in range(300)}


def test_manifest_is_written_last(store: ObjectStore) -> None:
    writer = ShardWriter(store, SCHEMA, target_shard_bytes=8 * 1024)
    writer.write([make_row(i) for i in range(400)])
    writer.wait_for_uploads()  # shards are in the store ...
    assert store.list("shards/")
    with pytest.raises(DatasetNotReady, match=r"manifest\.json"):  # ... yet the dataset is not
        DatasetReader(store)
    writer.close()
    assert len(DatasetReader(store)) == 400


def test_failed_writer_publishes_nothing(store: ObjectStore) -> None:
    with pytest.raises(RuntimeError), ShardWriter(store, SCHEMA, target_shard_bytes=8 * 1024) as w:
        w.write([make_row(i) for i in range(400)])
        raise RuntimeError("curation worker crashed")
    assert not store.exists(MANIFEST_KEY)
    with pytest.raises(DatasetNotReady):
        DatasetReader(store)


def test_existing_dataset_needs_overwrite(store: ObjectStore) -> None:
    first = write_dataset(store, n=1500)
    with pytest.raises(DatasetExistsError):
        ShardWriter(store, SCHEMA)
    second = write_dataset(store, n=200, overwrite=True)
    assert len(second.shards) < len(first.shards)
    # The earlier attempt's extra shards are gone; only listed shards remain.
    assert sorted(store.list("shards/")) == sorted(s.key for s in second.shards)
    assert sorted(ids(DatasetReader(store).iter_samples(0, 0))) == list(range(200))


def test_unknown_columns_are_rejected(store: ObjectStore) -> None:
    writer = ShardWriter(store, SCHEMA)
    writer.write({"id": 1, "patient_name": "x"})
    with pytest.raises(ValueError, match="patient_name"):
        writer.close()


def test_order_is_deterministic_per_seed_and_epoch(store: ObjectStore) -> None:
    write_dataset(store)
    reader = DatasetReader(store)
    first = ids(reader.iter_samples(seed=7, epoch=0))
    assert sorted(first) == list(range(1500))
    assert ids(DatasetReader(store).iter_samples(seed=7, epoch=0)) == first
    assert ids(reader.iter_samples(seed=7, epoch=1)) != first
    assert ids(reader.iter_samples(seed=8, epoch=0)) != first
    assert first != sorted(first)


@pytest.mark.parametrize("world_size", [1, 3, 4, 64])
def test_ranks_are_disjoint_and_cover_everything(store: ObjectStore, world_size: int) -> None:
    write_dataset(store)
    reader = DatasetReader(store, mix_shards=2)
    per_rank = [ids(reader.iter_samples(3, 2, rank, world_size)) for rank in range(world_size)]
    everything = [i for rank in per_rank for i in rank]
    assert sorted(everything) == list(range(1500))  # covering, and no sample twice
    sizes = [len(r) for r in per_rank]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [reader.num_samples(rank, world_size) for rank in range(world_size)]


def test_ranks_read_only_their_part_of_the_shards(store: ObjectStore) -> None:
    manifest = write_dataset(store)
    reader = DatasetReader(store)
    read: list[int] = []
    original = reader.read_shard

    def counting(index: int) -> pa.Table:
        read.append(index)
        return original(index)

    reader.read_shard = counting  # type: ignore[method-assign]
    list(reader.iter_samples(0, 0, rank=0, world_size=4))
    assert len(read) <= len(manifest.shards) // 4 + 2


@pytest.mark.parametrize("start", [0, 1, 137, 250, 499, 500])
def test_resume_from_an_offset_is_exact(store: ObjectStore, start: int) -> None:
    write_dataset(store)
    reader = DatasetReader(store, mix_shards=3)
    full = ids(reader.iter_samples(11, 4, rank=1, world_size=3))
    assert len(full) == 500
    assert ids(reader.iter_samples(11, 4, rank=1, world_size=3, start=start)) == full[start:]


def test_resume_across_shard_groups_without_reading_skipped_shards(store: ObjectStore) -> None:
    manifest = write_dataset(store)
    reader = DatasetReader(store, mix_shards=1, prefetch=0)
    full = ids(reader.iter_samples(5, 0))
    skip = manifest.shards[0].num_rows + manifest.shards[1].num_rows + 3
    read: list[int] = []
    original = reader.read_shard
    reader.read_shard = lambda i: read.append(i) or original(i)  # type: ignore[method-assign]
    assert ids(reader.iter_samples(5, 0, start=skip)) == full[skip:]
    assert len(read) < len(manifest.shards)


def test_corrupted_shard_names_the_shard_and_the_checksums(store: ObjectStore) -> None:
    manifest = write_dataset(store)
    victim = manifest.shards[1]
    data = bytearray(store.get_bytes(victim.key))
    data[len(data) // 2] ^= 0xFF
    store.put_bytes(victim.key, bytes(data))
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(ShardIntegrityError) as err:
        list(DatasetReader(store).iter_samples(0, 0))
    message = str(err.value)
    assert victim.key in message
    assert victim.sha256 in message
    assert actual in message
    assert "sha256 mismatch" in message


def test_truncated_shard_is_an_integrity_error(store: ObjectStore) -> None:
    manifest = write_dataset(store)
    victim = manifest.shards[0]
    store.put_bytes(victim.key, store.get_bytes(victim.key)[:-100])
    with pytest.raises(ShardIntegrityError, match=f"{victim.key}.*truncated"):
        DatasetReader(store).read_shard(0)
    store.delete(victim.key)
    with pytest.raises(ShardIntegrityError, match=f"{victim.key}.*missing"):
        DatasetReader(store).read_shard(0)


def test_workers_write_parts_and_a_merge_publishes_them(store: ObjectStore) -> None:
    parts = []
    for worker in range(3):
        writer = ShardWriter(
            store, SCHEMA, target_shard_bytes=16 * 1024, shard_prefix=f"shards/w{worker}"
        )
        writer.write([make_row(i) for i in range(worker * 100, worker * 100 + 100)])
        parts.append(writer.close(publish=False))
    assert not store.exists(MANIFEST_KEY)
    write_manifest(store, Manifest.combine(parts, spec_hash="h", extra={"token_stats": {}}))
    reader = DatasetReader(store)
    assert len(reader) == 300
    assert sorted(ids(reader.iter_samples(0, 0))) == list(range(300))


def write_sources(store: ObjectStore, sizes: list[int]) -> dict[int, int]:
    """One folder of shards per source, as the curation merge writes them; id -> source."""
    parts, source_of, first = [], {}, 0
    for source, size in enumerate(sizes):
        writer = ShardWriter(
            store, SCHEMA, target_shard_bytes=4 * 1024, shard_prefix=f"shards/s{source:05d}/"
        )
        writer.write([make_row(i) for i in range(first, first + size)])
        parts.append(writer.close(publish=False))
        source_of.update(dict.fromkeys(range(first, first + size), source))
        first += size
    write_manifest(store, Manifest.combine(parts, spec_hash="h"))
    return source_of


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_window_of_every_rank_mixes_the_sources_at_their_global_share(
    store: ObjectStore, world_size: int
) -> None:
    """Sources of 1200, 600 and 200 rows, each in its own run of shards: in every window of
    N samples of every rank, each source's share stays within 4.5 binomial standard
    deviations (sampling noise) of its global share. Reading shard runs one after the
    other (what a contiguous range per rank gives) fails this at once."""
    sizes = [1200, 600, 200]
    source_of = write_sources(store, sizes)
    reader = DatasetReader(store)
    assert len(reader.manifest.shards) >= 10
    window = 100
    share = [s / sum(sizes) for s in sizes]
    seen: list[int] = []
    for rank in range(world_size):
        stream = ids(reader.iter_samples(5, 1, rank, world_size))
        shards, _ = reader.sample_order(5, 1, rank, world_size)
        assert len(shards) == len(stream) == reader.num_samples(rank, world_size)
        seen += stream
        for start in range(0, len(stream) - window + 1, window):
            counts = [0] * len(sizes)
            for i in stream[start : start + window]:
                counts[source_of[i]] += 1
            for source, p in enumerate(share):
                tolerance = 4.5 * (p * (1 - p) / window) ** 0.5
                assert abs(counts[source] / window - p) <= tolerance, (rank, start, counts)
        # Resuming mid-stream gives the rest of the same stream.
        for start in (1, 137, len(stream) - 1):
            assert ids(reader.iter_samples(5, 1, rank, world_size, start)) == stream[start:]
    assert sorted(seen) == list(range(sum(sizes)))  # every sample once over the ranks
    sizes_per_rank = [reader.num_samples(r, world_size) for r in range(world_size)]
    assert max(sizes_per_rank) - min(sizes_per_rank) <= 1
