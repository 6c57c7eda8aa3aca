"""The checked-in CRDs and docs match the models, and the schemas are structural."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import yaml
from pydantic import BaseModel

from medsft_operator.api import KINDS, crdgen, docs

from .conftest import CRDS_DIR, REPO

REGENERATE = (
    "run `python -m medsft_operator.api.crdgen --write crds/ && "
    "python -m medsft_operator.api.docs > docs/api.md` (or `make crds`)"
)


def test_crds_dir_is_up_to_date():
    expected = {crdgen.crd_file_name(c): crdgen.render_crd(c) for c in crdgen.crd_manifests()}
    present = {p.name: p.read_text() for p in CRDS_DIR.glob("medsft.io_*.yaml")}
    assert set(present) == set(expected), (
        f"crds/ has other files than the models make; {REGENERATE}"
    )
    stale = [name for name, text in expected.items() if present[name] != text]
    assert not stale, f"crds/ is stale ({', '.join(stale)}); {REGENERATE}"


def test_api_docs_are_up_to_date():
    current = (REPO / "docs" / "api.md").read_text()
    assert current == docs.render(), f"docs/api.md is stale; {REGENERATE}"


def test_crdgen_cli_writes_the_same_files(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "medsft_operator.api.crdgen", "--write", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for path in CRDS_DIR.glob("medsft.io_*.yaml"):
        assert (tmp_path / path.name).read_text() == path.read_text()


def _walk(node: Any, path: str = ""):
    if isinstance(node, dict):
        yield path, node
        for key in ("properties", "additionalProperties", "items"):
            value = node.get(key)
            if key == "properties":
                for name, sub in (value or {}).items():
                    yield from _walk(sub, f"{path}.{name}")
            elif isinstance(value, dict):
                yield from _walk(value, f"{path}[]")


def test_schemas_are_structural_and_documented():
    for crd in crdgen.crd_manifests():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        text = yaml.safe_dump(schema)
        assert "$ref" not in text and "$defs" not in text and "allOf" not in text
        for path, node in _walk(schema):
            where = f"{crd['metadata']['name']}{path}"
            int_or_string = node.get("x-kubernetes-int-or-string")
            assert "type" in node or int_or_string, f"{where} has no type"
            assert "anyOf" not in node or int_or_string, f"{where} is a non-structural union"
            assert not isinstance(node.get("exclusiveMinimum"), int | float) or isinstance(
                node.get("exclusiveMinimum"), bool
            ), f"{where}: exclusiveMinimum must be a boolean in OpenAPI v3"
            is_field = not path.endswith("[]")  # list items and map values need no text
            if is_field and path.startswith((".spec", ".status")) and path.count(".") >= 2:
                assert node.get("description"), f"{where} has no description"


def _models(root: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    if root in seen:
        return seen
    seen.add(root)
    for field in root.model_fields.values():
        for arg in _type_args(field.annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _models(arg, seen)
    return seen


def _type_args(annotation: Any):
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _type_args(arg)
    for arg in getattr(annotation, "__metadata__", ()):
        yield from _type_args(arg)


def test_every_spec_and_status_field_has_a_docstring():
    missing = []
    for kind in KINDS:
        for field_name in ("spec", "status"):
            annotation = kind.model_fields[field_name].annotation
            for model in _models(
                next(
                    a
                    for a in _type_args(annotation)
                    if isinstance(a, type) and issubclass(a, BaseModel)
                ),
                set(),
            ):
                missing += [
                    f"{model.__name__}.{name}"
                    for name, info in model.model_fields.items()
                    if not info.description
                ]
    assert not missing, f"document these fields with a docstring under them: {sorted(set(missing))}"


def test_kinds_have_short_names_category_status_and_columns():
    crds = {c["spec"]["names"]["kind"]: c for c in crdgen.crd_manifests()}
    expected = {"CurationJob": "cj", "SFTJob": "sft", "EvalJob": "ev", "MedSFTRun": "msr"}
    assert set(crds) == set(expected)
    for kind, short in expected.items():
        crd = crds[kind]
        assert crd["spec"]["names"]["shortNames"] == [short]
        assert crd["spec"]["names"]["categories"] == ["medsft"]
        version = crd["spec"]["versions"][0]
        assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
        columns = [c["name"] for c in version["additionalPrinterColumns"]]
        assert {"Phase", "Progress", "Age"} <= set(columns)
