"""Generate the CRDs from the pydantic models (the single source of truth).

pydantic emits JSON Schema (draft 2020-12) with ``$defs``/``$ref``; Kubernetes wants a
*structural* OpenAPI v3 schema: every node typed, no ``$ref``, no ``anyOf`` except
int-or-string, ``exclusiveMinimum`` as a boolean, no ``additionalProperties: false``
(unknown fields are handled by field validation/pruning, see docs/api.md).
``python -m medsft_operator.api.crdgen --write crds/`` rewrites the checked-in YAML.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from medsft_operator.api.k8s import GROUP, VERSION, Resource, name_length_message
from medsft_operator.api.kinds import KINDS

# JSON Schema keywords that have no place in a CRD schema.
_DROP = {"title", "$schema", "discriminator"}


def openapi_schema(model: type[BaseModel], *, defaults: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of ``model`` (wire names, ``$ref``s inlined)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _convert(raw, definitions, defaults)


def _convert(node: dict[str, Any], defs: dict[str, Any], defaults: bool) -> dict[str, Any]:
    node = dict(node)
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        node = _collapse_optional(node)
    if "$ref" in node:  # inline the definition; keywords next to $ref (description, default) win
        target = defs[node.pop("$ref").split("/")[-1]]
        node = {**target, **node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs, defaults) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            if isinstance(value, dict):  # `additionalProperties: false` (extra=forbid) is dropped
                out[key] = _convert(value, defs, defaults)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound], out[key] = value, True
        elif key == "default":
            if defaults and value is not None:
                out[key] = _default(value)
        elif key == "propertyNames":  # not in OpenAPI v3: check map keys with CEL instead
            out.setdefault("x-kubernetes-validations", []).extend(_key_rules(value))
        elif key in ("maxItems", "minItems") and node.get("type") == "object":
            # pydantic puts a dict's length bounds here; OpenAPI calls them maxProperties.
            out[key.replace("Items", "Properties")] = value
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    # type and description first: the YAML reads like kubebuilder's
    head = {k: out.pop(k) for k in ("type", "description") if k in out}
    return head | out


def _key_rules(names: dict[str, Any]) -> list[dict[str, str]]:
    checks = {"maxLength": "size(k) <= {}", "minLength": "size(k) >= {}"}
    unknown = set(names) - set(checks) - {"type"}
    if unknown:
        raise ValueError(f"unsupported key constraints {sorted(unknown)}")
    return [
        {
            "rule": f"self.all(k, {checks[c].format(n)})",
            "message": f"keys must have {c.replace('Length', ' length')} {n}",
        }
        for c, n in names.items()
        if c in checks
    ]


def _collapse_optional(node: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` arrives as ``anyOf: [X, {type: null}]``; an absent field means None."""
    variants = [v for v in node["anyOf"] if v.get("type") != "null"]
    if len(variants) != 1:
        raise ValueError(f"unions are not structural; use one-of fields instead: {node}")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if rest.get("default") is not None:
        # An explicit null must mean None, not "apply the default" (the apiserver prunes
        # nulls of non-nullable fields and then defaults them).
        rest["nullable"] = True
    return {**variants[0], **rest}


def _default(value: Any) -> Any:
    """The default as stored: unset (None) members left out, as ``to_wire`` does."""
    if isinstance(value, dict):
        return {k: _default(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_default(v) for v in value]
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _strip_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """Status is written by the operator: no server-side defaults there."""
    out = {k: v for k, v in schema.items() if k != "default"}
    for key in ("properties",):
        if key in out:
            out[key] = {name: _strip_defaults(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _strip_defaults(out[key])
    return out


def crd_manifest(kind: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    fields = kind.model_fields
    spec_model: type[BaseModel] = fields["spec"].annotation  # type: ignore[assignment]
    status_model: type[BaseModel] = fields["status"].annotation.__args__[0]  # type: ignore[union-attr]
    info = kind.info  # type: ignore[attr-defined]
    name = kind.model_fields["kind"].default
    max_name = info.max_name_length
    schema = {
        "type": "object",
        "description": _doc(kind),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of the object."},
            "kind": {"type": "string", "description": "Kind of the object."},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec_model),
            "status": _strip_defaults(openapi_schema(status_model)),
        },
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {max_name}",
                "message": name_length_message(max_name),
                "reason": "FieldValueInvalid",
            }
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": name,
                "listKind": f"{name}List",
                "plural": info.plural,
                "singular": name.lower(),
                "shortNames": info.short_names,
                "categories": info.categories,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_crd() for c in info.columns],
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def crd_manifests() -> list[dict[str, Any]]:
    """The CRDs of every medsft kind."""
    return [crd_manifest(kind) for kind in KINDS]


def crd_file_name(crd: dict[str, Any]) -> str:
    """``medsft.io_medsftruns.yaml`` (the kubebuilder naming)."""
    return f"{GROUP}_{crd['spec']['names']['plural']}.yaml"


class _NoAliasDumper(yaml.SafeDumper):
    """Write shared sub-schemas out in full: anchors and aliases would puzzle readers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_crd(crd: dict[str, Any]) -> str:
    """The YAML text of a CRD as checked in."""
    header = "# Generated from the pydantic models by medsft_operator.api.crdgen; do not edit.\n"
    body = yaml.dump(crd, Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True)
    return header + body


def write_crds(directory: str | Path) -> list[Path]:
    """Write one YAML file per kind into ``directory``, removing stale medsft CRD files."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for crd in crd_manifests():
        path = folder / crd_file_name(crd)
        path.write_text(render_crd(crd), encoding="utf-8")
        written.append(path)
    for stale in set(folder.glob(f"{GROUP}_*.yaml")) - set(written):
        stale.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="DIR", help="write one file per kind into DIR")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_crds(args.write):
            print(path)
    else:
        sys.stdout.write("---\n".join(render_crd(crd) for crd in crd_manifests()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
