"""``medsft status``: medsft resources in the cluster as one table (:func:`status_row`, a
pure function tested on its own)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from medsft_operator.cli.cluster import (
    cluster_errors,
    default_namespace,
    kube_client,
    list_resources,
)
from medsft_operator.cli.common import (
    KIND_BY_NAME,
    ContextOption,
    KubeconfigOption,
    NamespaceOption,
    console,
    resolve_kind,
)


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
    tracking: str = ""
    """The MLflow run of the resource (a MedSFTRun's: its current generation's)."""


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
        tracking=str(status.get("trackingUrl") or ""),
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
    tracked = any(row.tracking for row in rows)  # the column only where a run is tracked
    for column in [
        *columns, "PHASE", "PROGRESS", "RESULT", "AGE", "MESSAGE", *(["TRACKING"] if tracked else []),
    ]:  # fmt: skip
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
            *([row.tracking] if tracked else []),
        )
    return table


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
        # ``tracking`` only where a resource is tracked: the other rows read as before.
        shown = [{k: v for k, v in r.__dict__.items() if v or k != "tracking"} for r in rows]
        sys.stdout.write(json.dumps(shown, indent=2) + "\n")
        return
    if not rows:
        where = "any namespace" if ns is None else f"namespace {ns}"
        console.print(f"No medsft resources in {where}.")
        return
    console.print(status_table(rows, show_namespace=ns is None))
