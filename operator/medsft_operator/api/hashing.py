"""Content hashes of effective specs: the keys that let a new generation reuse a stage.

A hash must change when, and only when, the stage's *result* would: what the user wrote
plus the effective value of every default. It must not change when a new release adds a
defaulted field or changes a default, or every existing MedSFTRun would start a new
generation (re-running curation, SFT and eval) on an operator upgrade.

The canonical form therefore leaves out every value equal to its field's *recorded*
default: the default the field had when it first shipped, kept in ``hash_defaults.json``
(python ``Model.field`` -> wire value, never edited once written). So:

* an explicit default and an omitted field hash the same (the apiserver fills defaults in);
* a field added later, at its default, is left out: old hashes stand;
* when a default changes, resources stored with the old value (the apiserver filled it in
  when they were created) still hash as before, and new ones that get the new value hash
  differently, as their results differ.

A field missing from the table is compared with its current default (a new field needs no
entry to keep hashes stable); ``python -m medsft_operator.api.hashing --record`` adds the
missing entries and a test keeps the table complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import types
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

DEFAULTS_FILE = Path(__file__).with_name("hash_defaults.json")


@cache
def recorded_defaults() -> dict[str, Any]:
    """``{"GenerationSpec.temperature": 0.6, ...}``: each field's default as first shipped."""
    return json.loads(DEFAULTS_FILE.read_text(encoding="utf-8"))


_NO_DEFAULT = object()

NOT_HASHED = frozenset({"TeacherSpec.retry", "TeachersSpec.cache"})
"""Fields a stage reads that cannot change its result: how often a teacher request is sent
and where its responses are cached (the responses are the same either way). Editing them
must not start a new generation, which would re-run SFT for an identical dataset. (Fields of
this kind that shipped hashed, such as ``concurrency``, stay hashed: leaving them out now
would change the hash of every run that sets them on an operator upgrade.)"""


def _field_default(cls: type[BaseModel], name: str) -> Any:
    """The wire value a field's value is compared against (``_NO_DEFAULT``: required)."""
    table = recorded_defaults()
    for klass in cls.__mro__:  # a subclass inherits the entries of the class it extends
        key = f"{klass.__name__}.{name}"
        if key in table:
            return table[key]
    field = cls.model_fields[name]
    if field.default is PydanticUndefined and field.default_factory is None:
        return _NO_DEFAULT
    default = field.get_default(call_default_factory=True)
    return None if default is None else canonical_data(default)


def canonical_data(value: Any) -> Any:
    """``value`` in wire form (camelCase keys) with ``None`` and default-valued fields left out."""
    if isinstance(value, BaseModel):
        cls = type(value)
        out: dict[str, Any] = {}
        for name, field in cls.model_fields.items():
            if f"{cls.__name__}.{name}" in NOT_HASHED:
                continue
            item = getattr(value, name)
            data = None if item is None else canonical_data(item)
            if data == _field_default(cls, name):
                continue  # None included: unset where unset is the default
            out[field.alias or name] = data
        return out
    if isinstance(value, dict):
        return {str(k): canonical_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_data(v) for v in value]
    return to_jsonable_python(value)


def canonical_json(model: BaseModel) -> str:
    """The canonical form as compact JSON with sorted keys (what :func:`spec_hash` digests)."""
    data = canonical_data(model)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_hash(model: BaseModel, *inputs: str) -> str:
    """sha256 (hex) of the canonical spec and of the hashes of its inputs, in order.

    ``spec_hash(sft_spec, curation_hash)`` changes when either the training recipe or
    the dataset it trains on changes, and only then.
    """
    digest = hashlib.sha256(canonical_json(model).encode("utf-8"))
    for value in inputs:
        digest.update(b"\0")
        digest.update(value.encode("utf-8"))
    return digest.hexdigest()


# ------------------------------------------------------------------ the recorded defaults


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)
    if isinstance(annotation, types.UnionType):  # X | Y without typing.Union
        for arg in annotation.__args__:
            yield from _models_in(arg)


def hashed_models() -> list[type[BaseModel]]:
    """Every model whose fields reach a stage hash (the pure-data specs and storage)."""
    from medsft_pipelines.specs.common import StorageSpec
    from medsft_pipelines.specs.curation import CurationSpec
    from medsft_pipelines.specs.eval import EvalSpec
    from medsft_pipelines.specs.sft import SFTSpec

    seen: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = [CurationSpec, SFTSpec, EvalSpec, StorageSpec]
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen[model.__name__] = model
        for field in model.model_fields.values():
            todo.extend(_models_in(field.annotation))
    return [seen[name] for name in sorted(seen)]


def current_defaults() -> dict[str, Any]:
    """The defaults of the hashed models as they are now, in canonical form (a model-typed
    default is usually ``{}``: all of its own fields at their recorded defaults)."""
    found: dict[str, Any] = {}
    for model in hashed_models():
        for name, field in model.model_fields.items():
            if field.default is PydanticUndefined and field.default_factory is None:
                continue
            default = field.get_default(call_default_factory=True)
            if default is None:
                continue
            found[f"{model.__name__}.{name}"] = canonical_data(default)
    return found


def record_missing_defaults() -> list[str]:
    """Add the fields the table lacks (their current default); never change an entry."""
    table = dict(recorded_defaults())
    added = [key for key in current_defaults() if key not in table]
    for key in added:
        table[key] = current_defaults()[key]
    DEFAULTS_FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    recorded_defaults.cache_clear()
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Keep the recorded defaults of spec hashes.")
    parser.add_argument(
        "--record", action="store_true", help="add the defaults of new fields to the table"
    )
    args = parser.parse_args(argv)
    if args.record:
        for key in record_missing_defaults():
            print(f"recorded {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
