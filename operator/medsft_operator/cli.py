"""The ``medsft`` command line: validate, render, run, status, report, crds, rbac, operator.

Every command is a thin shell around a pure function of this module (tested on its own):
:func:`validate_documents` checks manifests the way the apiserver would and more,
:func:`status_row` turns a resource into a table row, :func:`report_location` finds a stage's
report. Nothing here imports torch: the CLI ships in the slim operator image.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from medsft_operator.api import kubeyaml
from medsft_operator.api.k8s import (
    API_VERSION,
    GROUP,
    LABEL_VALUE_PATTERN,
    QUALIFIED_NAME_PATTERN,
    QUANTITY_PATTERN,
    QUEUE_NAME_PATTERN,
    VERSION,
    Resource,
)
from medsft_operator.api.kinds import KINDS
from medsft_pipelines.specs.common import IDENT_PATTERN, K8S_NAME_PATTERN, URI_PATTERN

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from medsft_pipelines.storage import ObjectStore, StorageSettings

app = typer.Typer(
    name="medsft",
    help="Curate, fine-tune and evaluate multimodal medical reasoning models, "
    "on Kubernetes or on one machine.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)
# soft_wrap: long messages stay on one line (greppable, copy-pastable) when piped.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

KIND_BY_NAME: dict[str, type[Resource]] = {k.model_fields["kind"].default: k for k in KINDS}
PLURAL_BY_KIND: dict[str, str] = {name: k.info.plural for name, k in KIND_BY_NAME.items()}  # type: ignore[attr-defined]
# What `medsft status --kind` and `medsft report --kind` accept for each kind.
KIND_ALIASES: dict[str, str] = {
    alias: name
    for name, k in KIND_BY_NAME.items()
    for alias in (name.lower(), k.info.plural, *k.info.short_names)  # type: ignore[attr-defined]
} | {"run": "MedSFTRun", "runs": "MedSFTRun", "curation": "CurationJob", "eval": "EvalJob"}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ------------------------------------------------------------------------------ manifests


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file (``-``: stdin), skipping empty ones, with every scalar
    read as kubectl reads it (see :mod:`medsft_operator.api.kubeyaml`)."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    docs = [doc for doc in kubeyaml.load_all(text) if doc is not None]
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise ValueError(f"document {index + 1} is a {type(doc).__name__}, not a mapping")
    return docs


def describe(doc: dict[str, Any]) -> str:
    """``MedSFTRun/quickstart`` — how a document is named in messages."""
    name = (doc.get("metadata") or {}).get("name") or "<unnamed>"
    return f"{doc.get('kind') or '<no kind>'}/{name}"


# ------------------------------------------------------------------------------ validation


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


# ------------------------------------------------------------------------------ status


@dataclass
class StatusRow:
    """One line of ``medsft status``."""

    kind: str
    namespace: str
    name: str
    generation: str
    stage: str
    phase: str
    progress: str
    result: str
    age: str
    message: str


def age(created: str | None, now: datetime) -> str:
    """``42s``, ``7m``, ``3h``, ``12d`` since an RFC 3339 timestamp (as kubectl prints ages)."""
    if not created:
        return "?"
    seconds = int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _number(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else ""


def result_summary(kind: str, status: dict[str, Any]) -> str:
    """The one number that says how a resource did: score, accuracy, loss, kept samples."""
    if kind == "MedSFTRun":
        score = _number(status.get("score"), ".3f")
        promoted = status.get("promotedGeneration")
        return " ".join(
            part
            for part in (
                f"score {score}" if score else "",
                f"promoted g{promoted}" if promoted else "",
            )
            if part
        )
    if kind == "EvalJob":
        accuracy = _number(status.get("meanAccuracy"), ".3f")
        return f"accuracy {accuracy}" if accuracy else ""
    if kind == "SFTJob":
        loss = _number(status.get("loss"), ".4f")
        return f"loss {loss}" if loss else ""
    kept = status.get("keptSamples")
    return f"{kept} samples" if isinstance(kept, int) else ""


def status_row(obj: dict[str, Any], now: datetime) -> StatusRow:
    """A resource as ``medsft status`` shows it."""
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    kind = str(obj.get("kind"))
    generation = status.get("currentGeneration")
    return StatusRow(
        kind=kind,
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        generation=str(generation) if generation is not None else "",
        stage=str(status.get("stage") or ""),
        phase=str(status.get("phase") or "Pending"),
        progress=str(status.get("progress") or ""),
        result=result_summary(kind, status),
        age=age(metadata.get("creationTimestamp"), now),
        message=str(status.get("message") or ""),
    )


PHASE_STYLE = {
    "Succeeded": "green",
    "Failed": "bold red",
    "Running": "cyan",
    "Pending": "yellow",
    "Queued": "magenta",
}


def status_table(rows: Sequence[StatusRow], *, show_namespace: bool) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False)
    columns = ["KIND", *(["NAMESPACE"] if show_namespace else []), "NAME", "GEN", "STAGE"]
    for column in [*columns, "PHASE", "PROGRESS", "RESULT", "AGE", "MESSAGE"]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.kind,
            *([row.namespace] if show_namespace else []),
            row.name,
            row.generation,
            row.stage,
            f"[{PHASE_STYLE.get(row.phase, '')}]{row.phase}[/]"
            if row.phase in PHASE_STYLE
            else row.phase,
            row.progress,
            row.result,
            row.age,
            row.message,
        )
    return table


# ------------------------------------------------------------------------------ reports


@dataclass
class ReportLookup:
    """Where a resource's report is: a URI, a stage resource to look at next, or why none."""

    uri: str | None = None
    next_kind: str | None = None
    next_name: str | None = None
    missing: str | None = None


def report_location(
    kind: str, obj: dict[str, Any], *, generation: int | None = None, stage: str = "eval"
) -> ReportLookup:
    """Find a report: stage resources carry ``status.reportUri``; a MedSFTRun points to the
    stage resource of a generation (``status.history``)."""
    status = obj.get("status") or {}
    name = (obj.get("metadata") or {}).get("name")
    if kind in ("EvalJob", "CurationJob"):
        if status.get("reportUri"):
            return ReportLookup(uri=str(status["reportUri"]))
        phase = status.get("phase") or "Pending"
        return ReportLookup(missing=f"{kind}/{name} has no report yet (phase {phase})")
    if kind == "SFTJob":
        return ReportLookup(missing="an SFTJob has no report: see its status (medsft status)")
    wanted = generation or status.get("currentGeneration")
    record = next((h for h in status.get("history") or [] if h.get("generation") == wanted), None)
    if record is None:
        return ReportLookup(missing=f"MedSFTRun/{name} has no generation {wanted} in its history")
    child_kind, key = ("EvalJob", "evalJob") if stage == "eval" else ("CurationJob", "curationJob")
    if not record.get(key):
        return ReportLookup(missing=f"generation {wanted} of MedSFTRun/{name} has no {child_kind}")
    return ReportLookup(next_kind=child_kind, next_name=str(record[key]))


REPORT_SUFFIXES = (".md", ".json", ".png", ".svg", ".csv")


def report_files(store: ObjectStore) -> list[str]:
    """The report's files in its folder: Markdown, JSON and plots (not the raw generations)."""
    keys = store.list("", recursive=False) + store.list("plots/", recursive=False)
    return [k for k in keys if not k.endswith("/") and k.endswith(REPORT_SUFFIXES)]


def split_uri(uri: str) -> tuple[str, str]:
    """``(folder URI, file name)`` of an object URI."""
    folder, _, name = uri.rstrip("/").rpartition("/")
    return folder, name


def open_report_store(folder_uri: str, settings: StorageSettings | None) -> ObjectStore:
    from medsft_pipelines.storage import open_store

    if folder_uri.startswith("file://") and not folder_uri.startswith("file:///"):
        # The embedded default's relative file://.medsft/... URIs: relative to the cwd.
        folder_uri = str(Path(folder_uri.removeprefix("file://")).resolve())
    return open_store(folder_uri, settings)


# ------------------------------------------------------------------------------ cluster access


def kube_client(kubeconfig: Path | None, context: str | None) -> ApiClient:
    """A client from the kubeconfig (``$KUBECONFIG``/``~/.kube/config``), else in-cluster."""
    from kubernetes import config

    try:
        return config.new_client_from_config(
            config_file=str(kubeconfig) if kubeconfig else None, context=context
        )
    except (config.ConfigException, OSError) as exc:
        if kubeconfig or context:
            raise _fail(
                f"cannot use kubeconfig {kubeconfig or ''} {context or ''}: {exc}"
            ) from None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        raise _fail(
            "no cluster configured: pass --kubeconfig, set KUBECONFIG or create ~/.kube/config"
        ) from None
    from kubernetes.client import ApiClient

    return ApiClient()


def default_namespace(kubeconfig: Path | None, context: str | None) -> str:
    """The namespace of the kubeconfig's current context, else ``default``."""
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(
            config_file=str(kubeconfig) if kubeconfig else None
        )
    except (config.ConfigException, FileNotFoundError, TypeError):
        return "default"
    if context:
        contexts, _ = config.list_kube_config_contexts(
            config_file=str(kubeconfig) if kubeconfig else None
        )
        active = next((c for c in contexts if c["name"] == context), active)
    return str((active or {}).get("context", {}).get("namespace") or "default")


def list_resources(
    api: ApiClient, kinds: Iterable[str], namespace: str | None
) -> list[dict[str, Any]]:
    """Every object of ``kinds`` in ``namespace`` (``None``: all namespaces)."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    objects: list[dict[str, Any]] = []
    for kind in kinds:
        plural = PLURAL_BY_KIND[kind]
        if namespace is None:
            listing = custom.list_cluster_custom_object(GROUP, VERSION, plural)
        else:
            listing = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        assert isinstance(listing, dict)
        objects += [{**item, "kind": kind} for item in listing.get("items", [])]
    return objects


def get_resource(api: ApiClient, kind: str, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL_BY_KIND[kind], name
    )
    assert isinstance(obj, dict)
    return {**obj, "kind": kind}


def secret_credentials(api: ApiClient, namespace: str, ref: dict[str, Any]) -> tuple[str, str]:
    """The access and secret key of a StorageSpec ``credentialsSecret`` (never printed)."""
    import base64

    from kubernetes import client

    secret = client.CoreV1Api(api).read_namespaced_secret(ref["name"], namespace)
    data = secret.data or {}

    def value(key: str) -> str:
        if key not in data:
            raise KeyError(f"Secret {ref['name']} has no key {key!r}")
        return base64.b64decode(data[key]).decode()

    return value(ref.get("accessKeyKey", "accessKey")), value(ref.get("secretKeyKey", "secretKey"))


@contextmanager
def cluster_errors(what: str, api: ApiClient) -> Iterator[None]:
    """Turn API and connection failures into one clear line (no traceback, no secrets)."""
    from kubernetes.client import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        raise _fail(f"{what}: {exc.status} {exc.reason}") from None
    except HTTPError as exc:
        host = api.configuration.host
        raise _fail(f"{what}: cannot reach the cluster at {host} ({type(exc).__name__})") from None


def resolve_kind(kind: str) -> str:
    try:
        return KIND_ALIASES[kind.lower()]
    except KeyError:
        choices = ", ".join(sorted({*KIND_BY_NAME, "run", "curation", "eval", "sft"}))
        raise typer.BadParameter(f"unknown kind {kind!r}; use one of {choices}") from None


# ------------------------------------------------------------------------------ commands

KubeconfigOption = Annotated[
    Path | None,
    typer.Option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file.", show_default=False),
]
ContextOption = Annotated[str | None, typer.Option("--context", help="Kubeconfig context.")]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace", "-n", help="Namespace (default: the context's).", show_default=False
    ),
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@app.command()
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


@app.command()
def render(
    file: Annotated[Path, typer.Argument(help="Manifest file (- for stdin).")],
    namespace: Annotated[
        str,
        typer.Option("--namespace", "-n", help="Namespace of resources whose manifest names none."),
    ] = "default",
    generation: Annotated[
        int, typer.Option(help="Generation number of a MedSFTRun's children.")
    ] = 1,
) -> None:
    """Print the child manifests the operator would create for each resource (YAML)."""
    import medsft_operator.render as rendering

    docs = load_documents(file)
    problems = [p for p in validate_documents(docs) if p.severity == "error"]
    if problems:
        for problem in problems:
            err_console.print(str(problem), highlight=False)
        raise _fail(f"{file} does not validate; nothing rendered")
    children: list[dict[str, Any]] = []
    for doc in docs:
        doc = {
            **doc,
            "metadata": {
                **doc.get("metadata", {}),
                "namespace": doc.get("metadata", {}).get("namespace") or namespace,
            },
        }
        children += rendering.children_of(doc, generation=generation)
    for child in children:
        # The apiserver assigns uids; a placeholder one would make `kubectl apply` refuse
        # the output. (Owner references keep it: they only show the structure.)
        child["metadata"].pop("uid", None)
    sys.stdout.write(yaml.safe_dump_all(children, sort_keys=False, width=100))


@app.command()
def run(
    file: Annotated[
        Path, typer.Argument(help="A MedSFTRun manifest, e.g. examples/quickstart.yaml.")
    ],
    local: Annotated[
        bool, typer.Option("--local", help="Run every stage as local processes on this machine.")
    ] = False,
    workdir: Annotated[Path, typer.Option(help="Where job configs and stage logs go.")] = Path(
        ".medsft/runs"
    ),
    nproc: Annotated[
        int | None, typer.Option(help="Training processes (torchrun ranks); default: up to 2.")
    ] = None,
) -> None:
    """Run a MedSFTRun on this machine (the embedded default: local processes, file:// storage)."""
    if not local:
        raise _fail(
            f"on a cluster, apply the resource instead: kubectl apply -f {file} "
            "(or pass --local to run it here)",
            2,
        )
    from medsft_operator.local import comparison_table, run_local

    try:
        problems = [p for p in validate_documents(load_documents(file)) if p.severity == "error"]
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise _fail(f"{file}: {exc}") from None
    if problems:
        for problem in problems:
            err_console.print(str(problem), style="red", markup=False, highlight=False)
        raise _fail(f"{file} does not validate; nothing was run")
    try:
        result = run_local(file, workdir=workdir, nproc=nproc, console=err_console)
    except (RuntimeError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None
    if result.results:
        console.print(comparison_table(result.results))
        console.print()
    table = Table(title=f"medsft run --local {result.name}", box=None, header_style="bold")
    for column in ("WHAT", "WHERE"):
        table.add_column(column, overflow="fold")
    for what, where in result.artifacts().items():
        table.add_row(what, where)
    console.print(table)


@app.command()
def status(
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", "-k", help="Only these kinds (run, cj, sft, ev...); default: all."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Every namespace.")
    ] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """A table of medsft resources in the cluster: phase, stage, progress, score."""
    if output not in ("table", "json"):
        raise typer.BadParameter("use table or json", param_hint="--output")
    kinds = [resolve_kind(k) for k in kind] if kind else list(KIND_BY_NAME)
    api = kube_client(kubeconfig, context)
    ns = None if all_namespaces else namespace or default_namespace(kubeconfig, context)
    with cluster_errors("listing medsft resources", api):
        objects = list_resources(api, dict.fromkeys(kinds), ns)
    now = datetime.now(UTC)
    rows = sorted(
        (status_row(o, now) for o in objects), key=lambda r: (r.namespace, r.kind, r.name)
    )
    if output == "json":
        sys.stdout.write(json.dumps([r.__dict__ for r in rows], indent=2) + "\n")
        return
    if not rows:
        where = "any namespace" if ns is None else f"namespace {ns}"
        console.print(f"No medsft resources in {where}.")
        return
    console.print(status_table(rows, show_namespace=ns is None))


@app.command()
def report(
    name: Annotated[
        str | None, typer.Argument(help="Resource name (a MedSFTRun by default; see --kind).")
    ] = None,
    kind: Annotated[str, typer.Option("--kind", "-k", help="run, eval or curation.")] = "run",
    stage: Annotated[str, typer.Option(help="For a MedSFTRun: eval or curation.")] = "eval",
    generation: Annotated[
        int | None, typer.Option(help="For a MedSFTRun: which generation (default: current).")
    ] = None,
    uri: Annotated[
        str | None,
        typer.Option(help="Read the report at this URI instead (s3://... or file://...)."),
    ] = None,
    download: Annotated[
        Path | None, typer.Option(help="Also save the report's files (Markdown, JSON, plots) here.")
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="S3 endpoint host:port (default: the resource's spec.storage, else $MEDSFT_S3_ENDPOINT)."
        ),
    ] = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Fetch a stage's report from storage and show it (Markdown in the terminal)."""
    from medsft_pipelines.storage import StorageError, StorageSettings

    settings = StorageSettings.from_env()
    if uri is None:
        if name is None:
            raise typer.BadParameter("give a resource NAME or --uri")
        api = kube_client(kubeconfig, context)
        ns = namespace or default_namespace(kubeconfig, context)
        uri, storage = _report_uri_from_cluster(
            api, resolve_kind(kind), ns, name, stage, generation
        )
        settings = _settings_for(api, ns, storage, settings)
    if endpoint:
        settings = settings.model_copy(update={"endpoint": endpoint})
        settings = StorageSettings.model_validate(settings.model_dump())
    folder, file_name = split_uri(uri)
    try:
        store = open_report_store(folder, settings)
        files = report_files(store)
        markdown = next((f for f in files if f.endswith(".md")), None)
        if markdown:
            console.print(Markdown(store.get_bytes(markdown).decode("utf-8")))
        else:
            console.print_json(store.get_bytes(file_name).decode("utf-8"))
        if download:
            for key in files:
                store.download_file(key, download / key)
            console.print(f"Saved {len(files)} files to {download}", highlight=False)
    except StorageError as exc:
        raise _fail(f"reading the report at {uri}: {exc}") from None
    plots = [store.uri_of(f) for f in files if f.endswith((".png", ".svg"))]
    console.print(f"\nReport: {uri}" + "".join(f"\nPlot:   {p}" for p in plots), highlight=False)


def _report_uri_from_cluster(
    api: ApiClient, kind: str, namespace: str, name: str, stage: str, generation: int | None
) -> tuple[str, dict[str, Any] | None]:
    """The report URI of a resource and the storage spec to read it with."""
    with cluster_errors(f"reading {kind}/{name} in {namespace}", api):
        obj = get_resource(api, kind, namespace, name)
        storage = (obj.get("spec") or {}).get("storage")
        found = report_location(kind, obj, generation=generation, stage=stage)
        if found.next_kind and found.next_name:
            child = get_resource(api, found.next_kind, namespace, found.next_name)
            storage = (child.get("spec") or {}).get("storage") or storage
            found = report_location(found.next_kind, child)
    if found.uri is None:
        raise _fail(found.missing or f"{kind}/{name} has no report")
    return found.uri, storage


def _settings_for(
    api: ApiClient, namespace: str, storage: dict[str, Any] | None, settings: StorageSettings
) -> StorageSettings:
    """Endpoint and credentials of a resource's own storage, unless the environment has them."""
    from pydantic import SecretStr

    if not storage:
        return settings
    update: dict[str, Any] = {}
    if storage.get("endpoint") and not settings.endpoint:
        update |= {"endpoint": storage["endpoint"], "secure": storage.get("secure", True)}
    ref = storage.get("credentialsSecret")
    if ref and settings.access_key is None:
        access, secret = secret_credentials(api, namespace, ref)
        update |= {"access_key": SecretStr(access), "secret_key": SecretStr(secret)}
    return settings.model_copy(update=update)


@app.command()
def crds(
    write: Annotated[
        list[Path] | None,
        typer.Option(
            "--write", "-w", help="Write one YAML file per kind into this folder (repeatable)."
        ),
    ] = None,
) -> None:
    """Print the CustomResourceDefinitions generated from the models, or write them to folders."""
    from medsft_operator.api.crdgen import crd_manifests, render_crd, write_crds

    if not write:
        sys.stdout.write("---\n".join(render_crd(crd) for crd in crd_manifests()))
        return
    for folder in write:
        for path in write_crds(folder):
            console.print(str(path), highlight=False)


@app.command()
def rbac(
    write: Annotated[
        Path | None,
        typer.Option(
            "--write", "-w", help="Write the rules to this file (the chart's files/rbac.yaml)."
        ),
    ] = None,
) -> None:
    """Print the exact Kubernetes permissions the operator needs (what the Helm chart grants)."""
    import medsft_operator.rbac as rules

    text = rbac_document(
        rules.cluster_rules(),
        rules.namespaced_rules(),
        rules.leader_election_rules(LEASE_NAME_PLACEHOLDER),
    )
    if write:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(text, encoding="utf-8")
        console.print(str(write), highlight=False)
    else:
        sys.stdout.write(text)


#: Stands for the Lease's name in the chart's files/rbac.yaml; the chart puts its own there.
LEASE_NAME_PLACEHOLDER = "LEASE-NAME"


def rbac_document(
    cluster_rules: list[dict[str, Any]],
    namespaced_rules: list[dict[str, Any]],
    leader_election_rules: list[dict[str, Any]],
) -> str:
    """The YAML the Helm chart reads the operator's RBAC rules from."""
    header = (
        "# Generated from medsft_operator/rbac.py by `medsft rbac --write`; do not edit.\n"
        "# clusterRules: always cluster-wide. namespacedRules: cluster-wide when the operator\n"
        "# watches every namespace, else in a Role per watched namespace.\n"
        "# leaderElectionRules: a Role in the operator's own namespace; the chart replaces\n"
        f"# {LEASE_NAME_PLACEHOLDER} with the name of its Lease.\n"
    )
    body = {
        "clusterRules": cluster_rules,
        "namespacedRules": namespaced_rules,
        "leaderElectionRules": leader_election_rules,
    }
    return header + yaml.safe_dump(body, sort_keys=False, width=100)


@app.command()
def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch only this namespace (repeatable)."),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace.")
    ] = False,
    http_port: Annotated[
        int | None, typer.Option(help="Port of /healthz and /metrics.", show_default="8080")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="A separate port for /metrics.", show_default=False)
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error.", show_default="info")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="json or plain.", show_default="json")
    ] = None,
    standalone: Annotated[
        bool, typer.Option("--standalone", help="No leader election (run one replica only).")
    ] = False,
) -> None:
    """Run the operator (what the Helm chart's Deployment runs).

    Settings come from MEDSFT_* environment variables (see the chart); flags override them.
    """
    import medsft_operator.main as entry

    if namespace and all_namespaces:
        raise typer.BadParameter("give --namespace or --all-namespaces, not both")
    if log_format is not None and log_format not in ("json", "plain", "text"):
        raise typer.BadParameter("use json or plain", param_hint="--log-format")
    if log_level is not None and log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("use debug, info, warning or error", param_hint="--log-level")
    raise typer.Exit(
        entry.run_operator(
            namespaces=[] if all_namespaces else namespace or None,
            liveness_port=http_port,
            metrics_port=metrics_port,
            log_level=log_level,
            log_format=log_format,
            standalone=True if standalone else None,
        )
    )


if __name__ == "__main__":
    app()
