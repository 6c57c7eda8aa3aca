"""The ``medsft`` command line: validate, render, plan, run, status, report, crds, rbac, operator.

One module per command group, each command a thin shell around pure functions tested on
their own: :mod:`.validation` (``validate``), :mod:`.manifests` (``render``, ``crds``,
``rbac``), :mod:`.plan` (``plan``), :mod:`.local_run` (``run --local``), :mod:`.status`,
:mod:`.report` and :mod:`.operator`; what they share is in :mod:`.common` (consoles, kinds, manifest files,
options) and :mod:`.cluster` (reading the cluster). Nothing here imports torch: the CLI ships
in the slim operator image.
"""

from __future__ import annotations

import typer

from medsft_operator.cli import local_run, manifests, plan, report, status, validation
from medsft_operator.cli import operator as operator_command
from medsft_operator.cli.common import load_documents
from medsft_operator.cli.manifests import LEASE_NAME_PLACEHOLDER, rbac_document
from medsft_operator.cli.report import report_location
from medsft_operator.cli.status import age, status_row
from medsft_operator.cli.validation import field_path, validate_documents

app = typer.Typer(
    name="medsft",
    help="Curate, fine-tune and evaluate multimodal medical reasoning models, "
    "on Kubernetes or on one machine.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals may hold credentials
)
# In the order `medsft --help` lists them.
for command in (
    validation.validate,
    manifests.render,
    plan.plan,
    local_run.run,
    status.status,
    report.report,
    manifests.crds,
    manifests.rbac,
    operator_command.operator,
):
    app.command()(command)

__all__ = [
    "LEASE_NAME_PLACEHOLDER",
    "age",
    "app",
    "field_path",
    "load_documents",
    "rbac_document",
    "report_location",
    "status_row",
    "validate_documents",
]
