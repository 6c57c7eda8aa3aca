"""``medsft report``: find a stage's report (:func:`report_location`, a pure function tested
on its own) and show it from storage, with the resource's own storage credentials."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markdown import Markdown

from medsft_operator.cli.cluster import (
    cluster_errors,
    default_namespace,
    get_resource,
    kube_client,
    secret_credentials,
)
from medsft_operator.cli.common import (
    ContextOption,
    KubeconfigOption,
    NamespaceOption,
    console,
    fail,
    resolve_kind,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from medsft_pipelines.storage import ObjectStore, StorageSettings


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
        raise fail(f"reading the report at {uri}: {exc}") from None
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
        raise fail(found.missing or f"{kind}/{name} has no report")
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
