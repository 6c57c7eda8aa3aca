"""What every ``medsft`` command shares: the consoles, failing with one clear line, reading
manifest files, the medsft kinds by name and alias, and the cluster options."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from medsft_operator.api import kubeyaml
from medsft_operator.api.k8s import Resource
from medsft_operator.api.kinds import KINDS

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


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def resolve_kind(kind: str) -> str:
    try:
        return KIND_ALIASES[kind.lower()]
    except KeyError:
        choices = ", ".join(sorted({*KIND_BY_NAME, "run", "curation", "eval", "sft"}))
        raise typer.BadParameter(f"unknown kind {kind!r}; use one of {choices}") from None


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
