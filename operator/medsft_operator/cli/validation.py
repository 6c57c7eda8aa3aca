"""``medsft validate``: manifests checked the way the apiserver would and more, with
field-level messages (:func:`validate_documents`, a pure function tested on its own)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from medsft_operator.api.k8s import (
    API_VERSION,
    GROUP,
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    QUANTITY_PATTERN,
    QUEUE_NAME_PATTERN,
    VERSION,
)
from medsft_operator.cli.cluster import cluster_errors, default_namespace, kube_client
from medsft_operator.cli.common import (
    KIND_BY_NAME,
    PLURAL_BY_KIND,
    ContextOption,
    KubeconfigOption,
    NamespaceOption,
    console,
    describe,
    err_console,
    load_documents,
)
from medsft_pipelines.specs.common import IDENT_PATTERN, K8S_NAME_PATTERN, URI_PATTERN

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass
class Problem:
    """One finding of ``medsft validate``: where (a field path) and what."""

    document: str
    path: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        where = f"{self.document}: {self.path}" if self.path else self.document
        return f"{self.severity}: {where}: {self.message}"


# pydantic puts the member of a union that failed into `loc` ("int", "constrained-str",
# "function-after[...]"); users wrote none of these, so they are left out of field paths.
_UNION_TAG = re.compile(r"[\[\]-]|^(int|float|str|bool|list|dict|none|json-or-python)$")


def field_path(doc: Any, loc: Sequence[int | str]) -> str:
    """``spec.sft.spec.training.learningRate`` / ``spec.benchmarks[1].name`` from a pydantic loc."""
    out = ""
    node: Any = doc
    for segment in loc:
        if isinstance(segment, int) and isinstance(node, list) and 0 <= segment < len(node):
            out += f"[{segment}]"
            node = node[segment]
        elif isinstance(segment, str) and isinstance(node, dict) and segment in node:
            out += f".{segment}" if out else segment
            node = node[segment]
        elif isinstance(segment, str) and not _UNION_TAG.search(segment):
            out += f".{segment}" if out else segment  # a missing field: name it
            node = None
    return out


# Patterns named in words: a regex is no help to someone fixing a manifest.
PATTERN_NAMES = {
    QUANTITY_PATTERN: "a non-negative resource quantity such as 500m, 8 or 16Gi",
    LABEL_VALUE_PATTERN: "a label value (letters, digits, '-', '_', '.'; alphanumeric at both ends)",
    QUALIFIED_NAME_PATTERN: "a qualified name such as nvidia.com/gpu or app.kubernetes.io/name",
    QUEUE_NAME_PATTERN: "a LocalQueue name (lower-case letters, digits, '-' and '.')",
    K8S_NAME_PATTERN: "a Kubernetes name (lower-case letters, digits, '-' and '.')",
    IDENT_PATTERN: "an identifier (lower-case letters, digits, '-' and '_')",
    URI_PATTERN: "a storage URI (s3://bucket/key, file:///path or a local path)",
    # StorageSpec's endpoint and bucket
    r"^[^/:]+(:[0-9]{1,5})?$": "host[:port] without a scheme, e.g. minio.minio.svc:9000",
    r"^[a-z0-9][-.a-z0-9]*[a-z0-9]$": "an S3 bucket name (lower-case letters, digits, '.', '-')",
}


def _message(error: Any) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field (check its spelling and indentation; see docs/api.md)"
    if kind == "string_pattern_mismatch":
        pattern = (error.get("ctx") or {}).get("pattern", "")
        return f"must be {PATTERN_NAMES.get(pattern, f'a string matching {pattern}')}"
    if kind in ("literal_error", "enum") and "input" in error:
        return f"{message} (got {error['input']!r})"
    return message


def _merge_union_errors(problems: list[Problem]) -> list[Problem]:
    """One problem per field: the failed members of a union (``int | "16Gi"``) become one
    message, a pattern mismatch (the clearer one) winning over a type error."""
    merged: dict[tuple[str, str], Problem] = {}
    for problem in problems:
        key = (problem.document, problem.path)
        if key not in merged or (
            problem.message.startswith("must be ")
            and not merged[key].message.startswith("must be ")
        ):
            merged[key] = problem
        elif problem.message not in merged[key].message and not merged[key].message.startswith(
            "must be "
        ):
            merged[key].message += f"; or: {problem.message}"
    return list(merged.values())


def schema_problems(doc: dict[str, Any]) -> list[Problem]:
    """What the models say about one document: types, enums, ranges, one-ofs, CEL mirrors."""
    name = describe(doc)
    if doc.get("apiVersion") != API_VERSION:
        return [
            Problem(
                name,
                "apiVersion",
                f"must be {API_VERSION} (got {doc.get('apiVersion')!r})",
            )
        ]
    kind = KIND_BY_NAME.get(str(doc.get("kind")))
    if kind is None:
        known = ", ".join(KIND_BY_NAME)
        return [Problem(name, "kind", f"unknown kind {doc.get('kind')!r}; expected one of {known}")]
    try:
        # Strict: the apiserver takes no "2" for an integer, no "true" for a boolean. Status
        # is the operator's to write (the status subresource drops it on create).
        kind.from_manifest({k: v for k, v in doc.items() if k != "status"}, strict=True)
    except ValidationError as exc:
        return _merge_union_errors(
            [
                Problem(name, field_path(doc, e["loc"]), _message(e))
                for e in exc.errors(include_url=False)
            ]
        )
    return []


def metadata_problems(doc: dict[str, Any]) -> list[Problem]:
    """Names the apiserver (and the operator's child naming) would refuse."""
    kind = KIND_BY_NAME.get(str(doc.get("kind")))
    if kind is None:
        return []
    metadata = doc.get("metadata") or {}
    name = metadata.get("name")
    where = describe(doc)
    if not name:
        return [Problem(where, "metadata.name", "is required")]
    max_length = kind.info.max_name_length  # type: ignore[attr-defined]
    problems = []
    namespace = metadata.get("namespace")
    if namespace is not None and not (
        isinstance(namespace, str) and len(namespace) <= 63 and DNS_LABEL.match(namespace)
    ):
        problems.append(
            Problem(
                where,
                "metadata.namespace",
                "must be at most 63 lower-case letters, digits or '-', "
                "starting and ending alphanumeric",
            )
        )
    if not DNS_SUBDOMAIN.match(str(name)):
        problems.append(
            Problem(
                where,
                "metadata.name",
                "must be lower-case letters, digits, '-' or '.', starting and ending alphanumeric",
            )
        )
    if len(str(name)) > max_length:
        problems.append(
            Problem(
                where,
                "metadata.name",
                f"must be at most {max_length} characters (child resources append a suffix)",
            )
        )
    return problems


def storage_warnings(doc: dict[str, Any]) -> list[Problem]:
    """Storage settings that validate but are probably not what the author meant."""
    found: list[Problem] = []
    for path, storage in _storages(doc.get("spec") or {}, "spec"):
        if storage.get("endpoint") and not storage.get("credentialsSecret"):
            found.append(
                Problem(
                    describe(doc),
                    f"{path}.credentialsSecret",
                    "endpoint set without credentials: pods will access the store anonymously",
                    "warning",
                )
            )
    return found


def _storages(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "storage" and isinstance(value, dict):
                yield f"{path}.storage", value
            else:
                yield from _storages(value, f"{path}.{key}")


def duplicate_problems(docs: Sequence[dict[str, Any]]) -> list[Problem]:
    """Two documents of one kind and name (in one namespace): the second would overwrite."""
    seen: set[tuple[str, str, str]] = set()
    problems = []
    for doc in docs:
        metadata = doc.get("metadata") or {}
        ident = (
            str(doc.get("kind")),
            str(metadata.get("namespace", "")),
            str(metadata.get("name")),
        )
        if ident in seen:
            problems.append(Problem(describe(doc), "metadata.name", "defined twice in this file"))
        seen.add(ident)
    return problems


def validate_documents(docs: Sequence[dict[str, Any]]) -> list[Problem]:
    """Every finding about a set of manifests, errors first."""
    problems = duplicate_problems(docs)
    for doc in docs:
        problems += schema_problems(doc) + metadata_problems(doc) + storage_warnings(doc)
    return sorted(problems, key=lambda p: p.severity != "error")


def server_problems(
    api: ApiClient, docs: Sequence[dict[str, Any]], namespace: str
) -> list[Problem]:
    """What the live apiserver says: a server-side dry-run create of each document."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    problems = []
    for doc in docs:
        kind = str(doc.get("kind"))
        if kind not in PLURAL_BY_KIND:
            continue
        ns = (doc.get("metadata") or {}).get("namespace") or namespace
        try:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL_BY_KIND[kind], doc, dry_run="All"
            )
        except client.ApiException as exc:
            if exc.status == 409:  # it exists already: the schema accepted it
                continue
            problems += [Problem(describe(doc), "", m) for m in _api_messages(exc)]
    return problems


def _api_messages(exc: Any) -> list[str]:
    try:
        status = json.loads(exc.body)
    except (TypeError, ValueError):
        return [f"{exc.status} {exc.reason}"]
    causes = (status.get("details") or {}).get("causes") or []
    if causes:
        return [f"{c.get('field', '')}: {c.get('message', '')}".strip(": ") for c in causes]
    return [status.get("message", f"{exc.status} {exc.reason}")]


def validate(
    files: Annotated[
        list[Path],
        typer.Argument(help="Manifest files (YAML, several documents allowed; - for stdin)."),
    ],
    server: Annotated[
        bool, typer.Option("--server", help="Also server-side dry-run against the cluster.")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Check manifests offline: schema, enums, ranges, cross-field rules, names (field-level messages)."""
    failed = False
    for path in files:
        try:
            docs = load_documents(path)
        except (OSError, yaml.YAMLError, ValueError) as exc:
            err_console.print(f"[red]✗[/] {path}: {exc}", highlight=False)
            failed = True
            continue
        problems = validate_documents(docs)
        if server and not any(p.severity == "error" for p in problems):
            api = kube_client(kubeconfig, context)
            with cluster_errors("server-side dry run", api):
                problems += server_problems(
                    api, docs, namespace or default_namespace(kubeconfig, context)
                )
        errors = [p for p in problems if p.severity == "error" or strict]
        for problem in problems:
            colour = "red" if problem in errors else "yellow"
            err_console.print(f"{path}: {problem}", style=colour, markup=False, highlight=False)
        if errors or not docs:
            failed = True
            if not docs:
                err_console.print(f"[red]✗[/] {path}: no documents", highlight=False)
        else:
            names = ", ".join(describe(d) for d in docs)
            console.print(f"[green]✓[/] {path}: {names}", highlight=False)
    if failed:
        raise typer.Exit(1)
