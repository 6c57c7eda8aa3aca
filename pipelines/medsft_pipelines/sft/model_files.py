"""Getting the base model onto the node, checking it, and exporting the trained one.

The base model comes from a local folder or a storage URI; a URI is downloaded once per
node into a cache (by local rank 0, the other ranks wait at a barrier). Nothing is ever
fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store

CACHE_MARKER = ".medsft-complete"


class ModelFilesError(ValueError):
    """The model folder lacks files a Hugging Face Qwen-VL checkpoint needs."""


def storage_settings(
    storage: StorageSpec, environ: Mapping[str, str] | None = None
) -> StorageSettings:
    """Connection settings: the job config's storage block, credentials from the environment
    (:meth:`StorageSettings.from_env`: the variables or mounted Secret the operator provides)."""
    settings = StorageSettings.from_env(os.environ if environ is None else environ)
    updates: dict[str, Any] = {}
    if storage.endpoint:
        updates.update(endpoint=storage.endpoint, secure=storage.secure)
    if storage.ca_file:
        updates["ca_file"] = storage.ca_file
    if storage.region:
        updates["region"] = storage.region
    return settings.model_copy(update=updates)


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme == "s3"


def local_path(uri: str) -> Path:
    """The folder of a ``file://`` URI or plain path."""
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri)


def download_model(uri: str, cache_root: Path, settings: StorageSettings) -> Path:
    """Download every object under ``uri`` into a per-URI cache folder (once; reused after)."""
    target = cache_root / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / CACHE_MARKER).exists():
        return target
    store: ObjectStore = open_store(uri, settings)
    keys = store.list()
    if not keys:
        raise ModelFilesError(f"no model files under {uri}")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for key in keys:
        store.download_file(key, staging / key)
    (staging / CACHE_MARKER).write_text(uri + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def check_model_dir(model_dir: Path) -> None:
    """Raise :class:`ModelFilesError` naming every missing file of a Qwen-VL model folder."""
    if not model_dir.is_dir():
        raise ModelFilesError(f"model folder {model_dir} does not exist")
    names = {p.name for p in model_dir.iterdir()}
    missing: list[str] = []
    if "config.json" not in names:
        missing.append("config.json")
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing += [s for s in shards if s not in names]
    elif "model.safetensors" not in names:
        missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= names:
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if not names & {"preprocessor_config.json", "processor_config.json"}:
        missing.append("preprocessor_config.json (or processor_config.json)")
    if missing:
        raise ModelFilesError(
            f"model folder {model_dir} is missing: {', '.join(missing)}; "
            "expected a Hugging Face Qwen-VL checkpoint (weights, tokenizer and processor)"
        )


def upload_export(local_dir: Path, target: ObjectStore, metadata: Mapping[str, Any]) -> None:
    """Upload an exported model folder, then ``export.json`` last (the completion marker)."""
    from medsft_pipelines.sft.layout import EXPORT_MARKER

    target.delete(EXPORT_MARKER)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    for path in files:
        target.upload_file(path, path.relative_to(local_dir).as_posix())
    target.put_json(
        EXPORT_MARKER,
        {
            **metadata,
            "files": {p.relative_to(local_dir).as_posix(): p.stat().st_size for p in files},
        },
    )
