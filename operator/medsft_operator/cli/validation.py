"""``medsft validate``: manifests checked the way the apiserver would and more, with
field-level messages (:func:`validate_documents`, a pure function tested on its own): the
resource itself, and the children the operator would create from it (rendered with its own
builders, checked with Kubernetes' pod rules by :mod:`medsft_operator.validate_children`)."""

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

from medsft_operator import names
from medsft_operator.api.k8s import (
    API_VERSION,
    GROUP,
    IMAGE_PATTERN,
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    QUANTITY_PATTERN,
    QUEUE_NAME_PATTERN,
    VERSION,
    quantity_value,
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
from medsft_operator.config import OperatorConfig
from medsft_operator.plan import PlanError
from medsft_operator.render import children_of
from medsft_operator.validate_children import (
    annotation_problems,
    child_problems,
    label_problems,
)
from medsft_pipelines.specs.common import (
    IDENT_PATTERN,
    K8S_NAME_PATTERN,
    MODEL_LOCATION_PATTERN,
    URI_PATTERN,
)

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
    severity: str = "error"  # or "warning", or "note" (never a failure)

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
    MODEL_LOCATION_PATTERN: "a model location: s3://bucket/key, file:///path or a local path "
    "(no other scheme: nothing is downloaded from a hub at run time)",
    IMAGE_PATTERN: "a container image reference such as registry.example.org/ml/trainer:1.0 "
    "([registry[:port]/]repository[:tag][@digest], the repository in lower case)",
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
    if not doc.get("apiVersion") or not doc.get("kind"):
        return [Problem(name, "", "apiVersion and kind are required (kubectl refuses it)")]
    if not str(doc.get("apiVersion")).startswith(f"{GROUP}/"):
        # A GitOps folder holds Namespaces, Secrets, Kueue queues beside the runs: kubectl
        # applies them, so they are no error here (their own schemas are the cluster's).
        return [
            Problem(
                name,
                "",
                f"not a {GROUP} resource (apiVersion {doc.get('apiVersion')!r}): passed through "
                "unchecked",
                "note",
            )
        ]
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
    # The apiserver's rules for every object's labels and annotations.
    for path, message in label_problems(
        metadata.get("labels") or {}, "metadata.labels"
    ) + annotation_problems(metadata.get("annotations") or {}, "metadata.annotations"):
        problems.append(Problem(where, path, message))
    return problems


# Where a field of a child's pod template comes from in the stage's spec.
_FROM_SPEC = (
    ("resourcesPerNode.", "resources."),
    ("resources.", "resources."),
    ("tolerations[", "scheduling.tolerations["),
    ("nodeSelector.", "scheduling.nodeSelector."),
)


def spec_field(doc: dict[str, Any], stage: str, child_path: str) -> str:
    """The field of ``doc`` that ``child_path`` of one of its stage's children comes from."""
    run = doc.get("kind") == "MedSFTRun"
    prefix = f"spec.{stage}.spec" if run else "spec"
    for anchor, field in _FROM_SPEC:
        at = child_path.rfind(anchor)
        if at >= 0:
            return f"{prefix}.{field}{child_path[at + len(anchor) :]}"
    if child_path.endswith("image"):
        stage_spec = ((doc.get("spec") or {}).get(stage) or {}).get("spec") or {} if run else {}
        if run and "image" not in stage_spec and "image" in (doc.get("spec") or {}):
            return "spec.image"
        return f"{prefix}.image"
    return "metadata.name" if child_path == "metadata.name" else "metadata"


def children_problems(doc: dict[str, Any]) -> list[Problem]:
    """What Kubernetes would refuse in the children the operator creates for ``doc`` (its
    Jobs', PyTorchJobs' and TrainJobs' pod templates, their names and labels), rendered
    with the operator's own builders and its default settings."""
    if doc.get("kind") not in KIND_BY_NAME:
        return []
    try:
        rendered = children_of(doc, config=OperatorConfig())
    except PlanError as error:
        if error.reason == "StorageNotConfigured":
            return []  # the operator's storage settings decide; it says so at run time
        return [Problem(describe(doc), "spec", str(error))]
    seen: set[tuple[str, str]] = set()
    problems = []
    for child in rendered:
        if child.get("kind") in KIND_BY_NAME:
            continue  # a run's stage resources: checked as the stage specs they are
        stage = ((child.get("metadata") or {}).get("labels") or {}).get(names.COMPONENT, "")
        for child_path, message in child_problems(child):
            field = spec_field(doc, stage, child_path)
            if (field, message) in seen:
                continue  # the same template in a Master and its Workers, a work and merge Job
            seen.add((field, message))
            refused = f"{child['kind']}/{child['metadata']['name']} {child_path}"
            problems.append(
                Problem(describe(doc), field, f"{message} (Kubernetes would refuse {refused})")
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
    return _fields(node, path, "storage")


def _fields(node: Any, path: str, name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping under a key ``name`` below ``node``, with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == name and isinstance(value, dict):
                yield f"{path}.{name}", value
            else:
                yield from _fields(value, f"{path}.{key}", name)


#: Resources counted in bytes: a fraction of one (``memory: 500m``) is rounded up.
_BYTES = ("memory", "ephemeral-storage", "hugepages-")


def fraction_warnings(doc: dict[str, Any]) -> list[Problem]:
    """Byte quantities with a fraction: the apiserver admits the Job with a warning (that
    only the operator's log would show) and Kubernetes rounds them up."""
    found = []
    for path, resources in _fields(doc.get("spec") or {}, "spec", "resources"):
        for part in ("requests", "limits"):
            for name, raw in (resources.get(part) or {}).items():
                amount = quantity_value(raw)
                if str(name).startswith(_BYTES) and amount is not None and amount % 1:
                    found.append(
                        Problem(
                            describe(doc),
                            f"{path}.{part}.{name}",
                            f"fractional byte value {raw!r}: Kubernetes rounds it up to whole "
                            "bytes (did you mean Mi or M rather than m?)",
                            "warning",
                        )
                    )
    return found


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
        own = schema_problems(doc) + metadata_problems(doc)
        if not any(p.severity == "error" for p in own):
            own += children_problems(doc)  # children render only from a valid spec
        problems += own + storage_warnings(doc) + fraction_warnings(doc)
    order = {"error": 0, "warning": 1}
    return sorted(problems, key=lambda p: order.get(p.severity, 2))


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


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def manifest_files(paths: Sequence[Path]) -> list[Path]:
    """``paths`` with each folder replaced by the manifests in it (sorted; not its
    subfolders, as ``kubectl apply -f DIR`` and an Argo CD directory source read it); a folder
    without any stays, to be reported."""
    out: list[Path] = []
    for path in paths:
        if str(path) != "-" and path.is_dir():
            found = sorted(
                p
                for p in path.iterdir()
                if p.suffix in MANIFEST_SUFFIXES and p.is_file() and not p.name.startswith(".")
            )
            out += found or [path]
        else:
            out.append(path)
    return out


def validate(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Manifest files (YAML, several documents allowed; - for stdin) or folders "
            "(their *.yaml, *.yml and *.json files, as kubectl apply -f DIR reads them)."
        ),
    ],
    server: Annotated[
        bool, typer.Option("--server", help="Also server-side dry-run against the cluster.")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Check manifests offline: schema, enums, ranges, cross-field rules, names, and the pod
    rules of the Jobs the operator would create from them (field-level messages). Other kinds
    (a Namespace beside a run) pass through with a note."""
    failed = False
    for path in manifest_files(files):
        if str(path) != "-" and path.is_dir():
            err_console.print(
                f"[red]✗[/] {path}: no *.yaml, *.yml or *.json files", highlight=False
            )
            failed = True
            continue
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
        errors = [
            p for p in problems if p.severity == "error" or (strict and p.severity == "warning")
        ]
        for problem in problems:
            colour = (
                "red" if problem in errors else "yellow" if problem.severity == "warning" else "dim"
            )
            err_console.print(f"{path}: {problem}", style=colour, markup=False, highlight=False)
        if errors or not docs:
            failed = True
            if not docs:
                err_console.print(f"[red]✗[/] {path}: no documents", highlight=False)
        else:
            listed = ", ".join(describe(d) for d in docs)
            console.print(f"[green]✓[/] {path}: {listed}", highlight=False)
    if failed:
        raise typer.Exit(1)
