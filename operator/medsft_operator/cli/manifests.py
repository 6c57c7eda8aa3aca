"""``medsft render``, ``crds`` and ``rbac``: what the operator would create, and the
generated files the chart ships (CRDs, RBAC rules)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from medsft_operator.cli.common import (
    KIND_BY_NAME,
    console,
    err_console,
    fail,
    load_documents,
)
from medsft_operator.cli.validation import validate_documents


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
        raise fail(f"{file} does not validate; nothing rendered")
    children: list[dict[str, Any]] = []
    for doc in docs:
        if doc.get("kind") not in KIND_BY_NAME:
            continue  # a Namespace beside the run (validate passed it through): no children
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
