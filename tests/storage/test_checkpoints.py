"""Checkpoints on both backends: marker last, latest complete, download, retention."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medsft_pipelines.storage import CheckpointNotComplete, ObjectStore
from medsft_pipelines.storage.checkpoints import COMPLETE_MARKER, CheckpointStore, step_prefix

MiB = 1024 * 1024


def make_checkpoint(folder: Path, step: int, big: int = 0) -> dict[str, bytes]:
    """A DeepSpeed-like checkpoint folder; ``big`` adds a multi-part-sized file."""
    files = {
        "latest": f"global_step{step}".encode(),
        f"global_step{step}/mp_rank_00_model_states.pt": os.urandom(64 * 1024),
        f"global_step{step}/zero_pp_rank_0_mp_rank_00_optim_states.pt": os.urandom(32 * 1024),
        "trainer_state.json": b'{"global_step": %d}' % step,
    }
    if big:
        files["model.safetensors"] = os.urandom(big)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def read_tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_upload_latest_download_roundtrip(store: ObjectStore, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store)
    assert checkpoints.latest() is None
    files = make_checkpoint(tmp_path / "ckpt", 100, big=11 * MiB + 5)
    marker = checkpoints.upload(tmp_path / "ckpt", 100, metadata={"samples_seen": 3200})
    assert marker["num_bytes"] == sum(len(d) for d in files.values())
    assert checkpoints.latest() == 100
    assert checkpoints.info(100)["metadata"] == {"samples_seen": 3200}
    checkpoints.download(100, tmp_path / "restored")
    assert read_tree(tmp_path / "restored") == files


def test_incomplete_upload_is_not_trusted(store: ObjectStore, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store)
    make_checkpoint(tmp_path / "c100", 100)
    checkpoints.upload(tmp_path / "c100", 100)
    # An upload that died before its marker: files present, no COMPLETE.
    store.put_bytes(step_prefix(200) + "latest", b"global_step200")
    assert checkpoints.latest() == 100
    assert checkpoints.steps() == [100]
    with pytest.raises(CheckpointNotComplete):
        checkpoints.download(200, tmp_path / "out")


def test_reupload_of_a_step_replaces_it(store: ObjectStore, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store)
    make_checkpoint(tmp_path / "a", 5)
    checkpoints.upload(tmp_path / "a", 5)
    files = make_checkpoint(tmp_path / "b", 5)
    checkpoints.upload(tmp_path / "b", 5)
    checkpoints.download(5, tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_prune_keeps_last_n_and_the_protected_step(store: ObjectStore, tmp_path: Path) -> None:
    checkpoints = CheckpointStore(store)
    make_checkpoint(tmp_path / "c", 1)
    for step in [100, 200, 300, 400, 500]:
        checkpoints.upload(tmp_path / "c", step)
    store.put_bytes(step_prefix(250) + "latest", b"crashed upload")  # older, incomplete
    store.put_bytes(step_prefix(600) + "latest", b"upload in flight")  # newer, incomplete
    deleted = checkpoints.prune(keep_last=2, protect={200})
    assert sorted(deleted) == [100, 250, 300]
    assert checkpoints.steps() == [200, 400, 500]
    assert store.list(step_prefix(600))  # a newer upload in flight is left alone
    assert not store.list(step_prefix(100))
    assert checkpoints.prune(keep_last=0, protect={500}) == [200, 400]
    assert checkpoints.steps() == [500]


def test_marker_name_is_reserved(store: ObjectStore, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / COMPLETE_MARKER).write_bytes(b"x")
    with pytest.raises(ValueError, match=COMPLETE_MARKER):
        CheckpointStore(store).upload(tmp_path / "c", 1)
    assert CheckpointStore(store).latest() is None
