"""docs/recipe.md's "default" column is the models' defaults: the page cannot drift."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from medsft_operator.api.kinds import MedSFTRunSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "recipe.md"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def default_of(path: str) -> Any:
    """The default of a ``MedSFTRun.spec`` field given by its wire path (``a.b.c``)."""
    model: type[BaseModel] | None = MedSFTRunSpec
    *parents, last = path.split(".")
    for name in [*parents, last]:
        assert model is not None, path
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        assert name in fields, f"{path}: no field {name!r} in {model.__name__}"
        field = fields[name]
        if name == last:
            return field.get_default(call_default_factory=True)
        model = _model_of(field.annotation)
    raise AssertionError(path)


def _rows() -> list[tuple[str, str]]:
    """(field, default) of every table row whose default column names a value."""
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[3] in ("default", "—", "---") or not cells[1].startswith("`"):
            continue
        fields = re.findall(r"`([a-zA-Z.]+)`", cells[1])
        defaults = [d.strip() for d in cells[3].split("/")]
        rows += list(zip(fields, defaults, strict=False))
    return rows


ROWS = _rows()


def test_the_doc_has_defaults_to_check():
    assert len(ROWS) >= 20


@pytest.mark.parametrize(("path", "written"), ROWS, ids=[r[0] for r in ROWS])
def test_documented_default_is_the_models_default(path, written):
    value = default_of(path)
    assert written.strip("`") == str(value), f"{path}: the page says {written}, the model {value!r}"
