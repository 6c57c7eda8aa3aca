"""``python -m medsft_operator.cli``: the same as the ``medsft`` command."""

from medsft_operator.cli import app

app()
