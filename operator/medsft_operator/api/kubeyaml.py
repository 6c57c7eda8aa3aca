"""Read manifests the way ``kubectl`` does, so strict validation judges the same values.

PyYAML implements YAML 1.1: an unquoted ``2e-5`` is a *string* there (its floats need a
dot), ``2024-06-01`` becomes a ``date`` and ``y``/``n`` stay strings. ``kubectl`` reads
YAML with go-yaml v2 (through ``sigs.k8s.io/yaml``) and sends JSON to the apiserver:
``2e-5`` is a number, timestamps stay strings, ``y``/``n`` are booleans, and a whole float
(``3.0``) reaches the server as the JSON number ``3``, an integer. This module replays
that pipeline: go-yaml v2's scalar resolution (``resolve.go``), then the JSON round trip
(map keys become strings, whole floats become integers, NaN/Inf cannot be sent).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import yaml

_GO_NUMBER_TAG = "tag:medsft.io,2026:go-number"
_BOOLS = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE"), True),
    **dict.fromkeys(("on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE"), False),
    **dict.fromkeys(("off", "Off", "OFF"), False),
}
_SPECIAL_FLOATS = {
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
# go-yaml v2's yamlStyleFloat: unlike YAML 1.1, no dot is needed before an exponent.
_GO_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_GO_INT = re.compile(
    r"^[-+]?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0[0-7]*|[1-9][0-9]*)$"
)  # strconv.ParseInt(s, 0, 64)
# JSON numbers Go writes without an exponent (|x| < 1e21) come back as integers when whole.
_GO_JSON_INT_LIMIT = 1e21


class ManifestError(ValueError):
    """A manifest kubectl could not send either (e.g. a NaN, which JSON cannot carry)."""


def _go_number(text: str) -> Any:
    """go-yaml v2's resolve() for a plain scalar starting with a sign, a digit or a dot."""
    if text in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[text]
    if text.startswith("."):
        try:
            return float(text)
        except ValueError:
            return text
    plain = text.replace("_", "")
    if _GO_INT.match(plain):
        sign, digits = (-1, plain[1:]) if plain[0] == "-" else (1, plain.lstrip("+"))
        base = 8 if len(digits) > 1 and digits[0] == "0" and digits[1] in "01234567" else 0
        value = sign * int(digits, base)
        if -(2**63) <= value < 2**64:
            return value
    if _GO_FLOAT.match(plain):
        return float(plain)
    return text


class KubectlLoader(yaml.SafeLoader):
    """A SafeLoader resolving plain scalars like go-yaml v2 (no timestamps, Go numbers)."""


KubectlLoader.yaml_implicit_resolvers = {}
KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile("^(?:" + "|".join(_BOOLS) + ")$"), list("yYnNtTfFoO")
)
KubectlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
KubectlLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])
KubectlLoader.add_implicit_resolver(_GO_NUMBER_TAG, re.compile(r"^[-+0-9.]"), list("-+0123456789."))


def _construct_bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
    assert isinstance(node, yaml.ScalarNode)
    return _BOOLS[loader.construct_scalar(node)]


def _construct_go_number(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    assert isinstance(node, yaml.ScalarNode)
    return _go_number(loader.construct_scalar(node))


KubectlLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
KubectlLoader.add_constructor(_GO_NUMBER_TAG, _construct_go_number)


def as_json(value: Any, path: str = "") -> Any:
    """What the apiserver receives for ``value`` once kubectl has turned it into JSON."""
    if isinstance(value, dict):
        return {_json_key(k): as_json(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ManifestError(f"{path.lstrip('.') or 'value'}: {value} cannot be sent as JSON")
        if value.is_integer() and abs(value) < _GO_JSON_INT_LIMIT:
            return int(value)
    return value


def _json_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        raise ManifestError("a map key is null")
    if isinstance(key, float):
        return repr(key) if not key.is_integer() else str(int(key))
    return str(key)


def load_all(text: str) -> Iterator[Any]:
    """Every YAML document of ``text`` as kubectl would send it (``None`` for empty ones)."""
    for doc in yaml.load_all(text, Loader=KubectlLoader):
        yield as_json(doc)
