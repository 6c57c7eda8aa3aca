"""``medsft plan``: which stages applying a MedSFTRun edit re-runs, before it is applied.

At the recipe's scale a re-run curation is the whole teacher bill and a re-run SFT the whole
training run, so an edit says what it costs first. Against the live resource (the stage
hashes annotated on the children of its latest generation, and the benchmarks its dataset
was decontaminated against), or offline against another file (``--against``, e.g. the
version in git: ``git show HEAD:run.yaml > /tmp/old.yaml``). The verdicts come from the
operator's own planner (:func:`medsft_operator.plan.stage_changes`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medsft_operator import names
from medsft_operator.api.kinds import MedSFTRun
from medsft_operator.cli.cluster import cluster_errors, default_namespace, get_resource, kube_client
from medsft_operator.cli.common import (
    ContextOption,
    KubeconfigOption,
    NamespaceOption,
    console,
    err_console,
    fail,
    load_documents,
)
from medsft_operator.cli.validation import validate_documents
from medsft_operator.layout import StageName
from medsft_operator.plan import (
    STAGE_KINDS,
    PreviousCuration,
    StageChange,
    compare_runs,
    plan_run,
    stage_changes,
)
from medsft_pipelines.specs.common import StorageSpec

#: Where the history record names each stage's child (``status.history[0]``).
HISTORY_FIELD: dict[StageName, str] = {
    "curation": "curationJob",
    "sft": "sftJob",
    "eval": "evalJob",
}
#: Stands in for the operator's default storage when neither side names one (both sides
#: are hashed with it, so it cancels out).
OFFLINE_STORAGE = StorageSpec(endpoint="operator-default-storage")


def live_changes(new: MedSFTRun, children: Mapping[StageName, dict[str, Any]]) -> list[StageChange]:
    """``new`` against the children of the live run's latest generation (by stage). Their
    spec carries the storage the operator resolved, so the hashes compare like the
    operator's even where the run leaves storage to the operator's default."""
    hashes = {
        stage: hash_
        for stage, child in children.items()
        if (hash_ := (child["metadata"].get("annotations") or {}).get(names.STAGE_HASH_FULL))
    }
    storage = next(
        (
            StorageSpec.model_validate(child["spec"]["storage"])
            for child in children.values()
            if (child.get("spec") or {}).get("storage")
        ),
        OFFLINE_STORAGE,
    )
    previous = None
    if "curation" in children:
        previous = PreviousCuration.of_child(children["curation"], hashes.get("curation"))
    plan = plan_run(new, default_storage=storage, previous=previous)
    return stage_changes(plan, hashes)


def _live_children(api: Any, namespace: str, name: str) -> dict[StageName, dict[str, Any]] | None:
    """The children of the live run's latest generation; None when the run does not exist."""
    from kubernetes.client import ApiException

    try:
        live = get_resource(api, "MedSFTRun", namespace, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    history = (live.get("status") or {}).get("history") or []
    found: dict[StageName, dict[str, Any]] = {}
    for stage, field in HISTORY_FIELD.items():
        child_name = history[0].get(field) if history else None
        if child_name:
            try:
                found[stage] = get_resource(api, STAGE_KINDS[stage], namespace, child_name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
    return found


def plan(
    file: Annotated[Path, typer.Argument(help="The edited manifest file (- for stdin).")],
    against: Annotated[
        Path | None,
        typer.Option(
            "--against",
            help="Compare with this file instead of the live resource.",
            show_default=False,
        ),
    ] = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    namespace: NamespaceOption = None,
) -> None:
    """Say which stages of each MedSFTRun applying FILE would re-run, and why."""
    docs = [d for d in load_documents(file) if d.get("kind") == "MedSFTRun"]
    problems = [p for p in validate_documents(docs) if p.severity == "error"]
    if problems:
        for problem in problems:
            err_console.print(str(problem), highlight=False)
        raise fail(f"{file} does not validate")
    if not docs:
        raise fail(f"{file} holds no MedSFTRun")
    old_runs: dict[str, MedSFTRun] = {}
    if against is not None:
        old_runs = {
            (d.get("metadata") or {}).get("name", ""): MedSFTRun.from_manifest(d)
            for d in load_documents(against)
            if d.get("kind") == "MedSFTRun"
        }
    api = None
    for doc in docs:
        new = MedSFTRun.from_manifest(doc)
        name = doc["metadata"]["name"]
        if against is not None:
            if name not in old_runs:
                raise fail(f"{against} holds no MedSFTRun {name!r}")
            changes = compare_runs(new, old_runs[name], default_storage=OFFLINE_STORAGE)
            where = str(against)
        else:
            api = api or kube_client(kubeconfig, context)
            ns = doc["metadata"].get("namespace") or namespace
            ns = ns or default_namespace(kubeconfig, context)
            with cluster_errors(f"reading MedSFTRun {ns}/{name}", api):
                children = _live_children(api, ns, name)
            if children is None:
                console.print(f"MedSFTRun {ns}/{name} does not exist yet: every stage runs")
                continue
            changes = live_changes(new, children)
            where = f"the live {ns}/{name}"
        table = Table(title=f"MedSFTRun {name} against {where}", title_justify="left")
        for column in ("stage", "verdict", "why"):
            table.add_column(column)
        for change in changes:
            verdict = "[bold]re-runs[/]" if change.reruns else "reused"
            table.add_row(change.stage, verdict, change.why)
        console.print(table)
