"""Checking the base model folder of an SFT job, and exporting the trained model.

The base model itself is fetched by :mod:`medsft_pipelines.models.fetch` (once per node: by
local rank 0, the other ranks wait at a barrier; see ``recipe.fetch_model``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsft_pipelines.models.fetch import ModelFilesError
from medsft_pipelines.storage import ObjectStore


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
