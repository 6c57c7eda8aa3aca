"""Getting a model folder onto this machine, shared by curation (the processor), SFT (the base
model) and eval (the model under test and the baseline).

A local folder or ``file://`` URI is used as it is. An ``s3://`` URI is downloaded once into a
per-URI cache folder, crash-safe: the files go to a staging folder, a completion mark is
written last and the folder is renamed into place, so a download that died half-way (a killed
pod, a drained node) is never taken for a model; the next fetch starts it again. Nothing is
ever fetched from a model hub.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from urllib.parse import urlparse

from medsft_pipelines.storage import ObjectStore, StorageSettings, open_store

CACHE_MARKER = ".medsft-complete"


class ModelFilesError(ValueError):
    """The model folder lacks files a Hugging Face Qwen-VL checkpoint needs."""


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
    # A folder without the mark (an interrupted download of an older release) is replaced.
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def model_folder(location: str, settings: StorageSettings, cache_root: Path) -> Path:
    """The local folder of the model at ``location``: the folder itself, or its download."""
    if is_remote(location):
        return download_model(location, cache_root, settings)
    return local_path(location)
