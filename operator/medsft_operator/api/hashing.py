"""Content hashes of effective specs: the keys that let a new generation reuse a stage."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel


def canonical_json(model: BaseModel) -> str:
    """The spec as compact JSON with sorted keys: wire names, defaults filled, unset left out.

    Filling defaults makes an explicit default and an omitted field hash the same, so
    the apiserver's defaulting never starts a new generation by itself.
    """
    data = model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(model: BaseModel, *inputs: str) -> str:
    """sha256 (hex) of the effective spec and of the hashes of its inputs, in order.

    ``spec_hash(sft_spec, curation_hash)`` changes when either the training recipe or
    the dataset it trains on changes, and only then.
    """
    digest = hashlib.sha256(canonical_json(model).encode("utf-8"))
    for value in inputs:
        digest.update(b"\0")
        digest.update(value.encode("utf-8"))
    return digest.hexdigest()
