"""The ObjectStore contract, on file:// and on a real MinIO (s3://)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medsft_pipelines.storage import ObjectNotFound, ObjectStore, PreconditionFailed, open_store

MiB = 1024 * 1024


def test_put_get_roundtrip_and_overwrite(store: ObjectStore) -> None:
    store.put_bytes("a/b.bin", b"first")
    assert store.get_bytes("a/b.bin") == b"first"
    store.put_bytes("a/b.bin", b"second, longer")
    assert store.get_bytes("a/b.bin") == b"second, longer"
    assert store.size("a/b.bin") == len(b"second, longer")


def test_empty_object(store: ObjectStore) -> None:
    store.put_bytes("empty", b"")
    assert store.exists("empty")
    assert store.get_bytes("empty") == b""
    assert store.size("empty") == 0


def test_large_object_is_read_back_exactly(store: ObjectStore) -> None:
    # Larger than the 5 MiB part size of the s3 fixture: multipart upload, parallel ranges.
    data = os.urandom(12 * MiB + 123)
    store.put_bytes("big.bin", data)
    assert store.get_bytes("big.bin") == data


def test_missing_object(store: ObjectStore) -> None:
    assert not store.exists("nope")
    with pytest.raises(ObjectNotFound, match="nope"):
        store.get_bytes("nope")
    with pytest.raises(ObjectNotFound):
        store.size("nope")
    with pytest.raises(ObjectNotFound):
        store.download_file("nope", "/tmp/never-written")
    store.delete("nope")  # deleting an absent key is not an error


def test_list_is_a_string_prefix_match_relative_to_the_root(store: ObjectStore) -> None:
    for key in ["shards/shard-00000.parquet", "shards/shard-00001.parquet", "shardsx", "m.json"]:
        store.put_bytes(key, b"x")
    store.put_bytes("deep/a/b/c.txt", b"x")
    assert store.list() == sorted(
        [
            "shards/shard-00000.parquet",
            "shards/shard-00001.parquet",
            "shardsx",
            "m.json",
            "deep/a/b/c.txt",
        ]
    )
    assert store.list("shards/") == ["shards/shard-00000.parquet", "shards/shard-00001.parquet"]
    assert store.list("shards") == [
        "shards/shard-00000.parquet",
        "shards/shard-00001.parquet",
        "shardsx",
    ]
    assert store.list("shards/shard-0000") == [
        "shards/shard-00000.parquet",
        "shards/shard-00001.parquet",
    ]
    assert store.list(recursive=False) == ["deep/", "m.json", "shards/", "shardsx"]
    assert store.list("deep/a/", recursive=False) == ["deep/a/b/"]
    assert store.list("nothing-here") == []


def test_child_stores_are_isolated(store: ObjectStore) -> None:
    run_a, run_b = store.child("a"), store.child("b/")
    run_a.put_bytes("x", b"A")
    run_b.put_bytes("x", b"B")
    assert run_a.get_bytes("x") == b"A"
    assert run_b.get_bytes("x") == b"B"
    assert store.list() == ["a/x", "b/x"]
    assert run_a.list() == ["x"]
    assert run_a.uri.endswith("/root/run-1/a/")
    assert store.child("a").child("c").uri == store.child("a/c").uri


def test_delete_and_delete_prefix(store: ObjectStore) -> None:
    for key in ["ckpt/1/a", "ckpt/1/b", "ckpt/2/a", "keep"]:
        store.put_bytes(key, b"x")
    store.delete("ckpt/2/a")
    assert not store.exists("ckpt/2/a")
    assert store.delete_prefix("ckpt/") == 2
    assert store.list() == ["keep"]
    assert store.list(recursive=False) == ["keep"]  # no empty "folders" left behind


def test_upload_and_download_file(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    data = os.urandom(11 * MiB + 7)
    source.write_bytes(data)
    store.upload_file(source, "ckpt/weights.bin")
    assert store.size("ckpt/weights.bin") == len(data)
    target = tmp_path / "out" / "nested" / "weights.bin"
    store.download_file("ckpt/weights.bin", target)
    assert target.read_bytes() == data
    # Downloads go through a temporary file that is renamed: nothing else is left there.
    assert os.listdir(target.parent) == ["weights.bin"]


def test_json_helpers(store: ObjectStore) -> None:
    store.put_json("p.json", {"step": 3, "counts": {"kept": 2}})
    assert store.get_json("p.json") == {"step": 3, "counts": {"kept": 2}}


def test_conditional_writes_replace_only_the_version_read(store: ObjectStore) -> None:
    # Create-only: a second creator loses.
    first = store.put_json_if("p.json", {"generation": 1}, None)
    with pytest.raises(PreconditionFailed):
        store.put_json_if("p.json", {"generation": 9}, None)
    value, tag = store.get_json_tagged("p.json")
    assert (value, tag) == ({"generation": 1}, first)
    # Replace the version read; a writer holding an older tag loses, whatever it writes.
    second = store.put_json_if("p.json", {"generation": 2}, tag)
    with pytest.raises(PreconditionFailed):
        store.put_json_if("p.json", {"generation": 3}, tag)
    assert store.get_json_tagged("p.json") == ({"generation": 2}, second)
    with pytest.raises(ObjectNotFound):
        store.get_json_tagged("absent.json")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "a/./b", "dir/", "a\\b"])
def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_file_store_hides_temporary_files(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".medsft-tmp-123").write_bytes(b"partial")
    assert store.list() == []
    assert store.list(recursive=False) == []


def test_open_store_uris(tmp_path: Path) -> None:
    assert open_store(str(tmp_path)).uri == f"file://{tmp_path}/"
    assert open_store(f"file://{tmp_path}/x").uri == f"file://{tmp_path}/x/"
    with pytest.raises(ValueError, match="scheme"):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError, match="bucket"):
        open_store("s3:///x")
