"""``medsft run --local``: a MedSFTRun's stages as processes on this machine (the embedded
default)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from medsft_operator.cli.common import console, err_console, fail, load_documents
from medsft_operator.cli.validation import validate_documents


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
        raise fail(
            f"on a cluster, apply the resource instead: kubectl apply -f {file} "
            "(or pass --local to run it here)",
            2,
        )
    from medsft_operator.local_runner import comparison_table, run_local

    try:
        problems = [p for p in validate_documents(load_documents(file)) if p.severity == "error"]
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise fail(f"{file}: {exc}") from None
    if problems:
        for problem in problems:
            err_console.print(str(problem), style="red", markup=False, highlight=False)
        raise fail(f"{file} does not validate; nothing was run")
    try:
        result = run_local(file, workdir=workdir, nproc=nproc, console=err_console)
    except (RuntimeError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    if result.results:
        console.print(comparison_table(result.results))
        console.print()
    table = Table(title=f"medsft run --local {result.name}", box=None, header_style="bold")
    for column in ("WHAT", "WHERE"):
        table.add_column(column, overflow="fold")
    for what, where in result.artifacts().items():
        table.add_row(what, where)
    console.print(table)
