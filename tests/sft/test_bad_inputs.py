"""Bad input stops medsft-train with one clear error line (exit code 2), before training."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sft.sft_helpers import REPO, curated_rows, job_config, train_env, write_config, write_dataset

from medsft_pipelines.storage import StorageSettings, open_store
from medsft_pipelines.storage.shards import read_manifest


def _train_once(config_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """One process, no torchrun (the recipe forms a group of one)."""
    return subprocess.run(
        [sys.executable, "-m", "medsft_pipelines.sft.train", "--config", str(config_path)],
        env=train_env(env), cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.fixture
def dataset(minio, minio_bucket: str, shared_data: Path) -> tuple[str, StorageSettings]:
    settings = StorageSettings(
        endpoint=minio.endpoint,
        secure=False,
        access_key=minio.access_key,
        secret_key=minio.secret_key,
    )
    store = open_store(f"s3://{minio_bucket}/data", settings)
    write_dataset(store, curated_rows(shared_data, n_text=8, n_image=4), 4096)
    return f"s3://{minio_bucket}", settings


def _config(tmp_path: Path, root: str, minio, model_uri: str, **training) -> Path:
    config = job_config(
        output_uri=f"{root}/out",
        manifest_uri=f"{root}/data/manifest.json",
        model_uri=model_uri,
        storage={"endpoint": minio.endpoint, "secure": False},
        training={"maxSteps": 50, **training},
    )
    return write_config(config, tmp_path / "job.yaml")


def test_corrupted_shard_fails_naming_the_shard(
    dataset, minio, tiny_model_dir: Path, tmp_path: Path
) -> None:
    root, settings = dataset
    store = open_store(f"{root}/data", settings)
    shard = read_manifest(store).shards[-1]
    data = bytearray(store.get_bytes(shard.key))
    data[len(data) // 2] ^= 0xFF  # same size, different content
    store.put_bytes(shard.key, bytes(data))
    result = _train_once(_config(tmp_path, root, minio, str(tiny_model_dir)), minio.env())
    assert result.returncode == 2, result.stderr[-4000:]
    assert "ShardIntegrityError" in result.stderr
    assert f"{shard.key}: sha256 mismatch" in result.stderr
    assert minio.secret_key not in result.stderr + result.stdout


def test_model_folder_missing_files(dataset, minio, tiny_model_dir: Path, tmp_path: Path) -> None:
    root, _ = dataset
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").unlink()
    result = _train_once(_config(tmp_path, root, minio, str(broken)), minio.env())
    assert result.returncode == 2, result.stderr[-4000:]
    assert "is missing: model.safetensors" in result.stderr


def test_batch_configuration_that_does_not_divide(
    dataset, minio, tiny_model_dir: Path, tmp_path: Path
) -> None:
    root, _ = dataset
    config = _config(
        tmp_path, root, minio, str(tiny_model_dir), globalBatchSize=3, microBatchSize=2
    )
    result = _train_once(config, minio.env())
    assert result.returncode == 2, result.stderr[-4000:]
    assert "globalBatchSize 3 is not divisible by microBatchSize 2 x world size 1" in result.stderr
