"""``python -m medsft_operator``: run the operator — the same command, with the same flags,
as ``medsft operator`` (:mod:`medsft_operator.cli.operator`)."""

import typer

from medsft_operator.cli.operator import operator

app = typer.Typer(add_completion=False)
app.command()(operator)
app(prog_name="python -m medsft_operator")
