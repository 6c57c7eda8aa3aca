"""``medsft status`` shows a tracked run's MLflow run (status.trackingUrl), and only adds the
column when some resource is tracked."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from medsft_operator.cli.status import status_row, status_table

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
URL = "http://mlflow.example.org/#/experiments/1/runs/" + "b" * 32


def _render(rows) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=400, force_terminal=False).print(
        status_table(rows, show_namespace=False)
    )
    return buffer.getvalue()


def test_status_shows_the_tracking_url_of_a_tracked_run():
    tracked = {"kind": "MedSFTRun", "metadata": {"name": "r"}, "status": {"trackingUrl": URL}}
    plain = {"kind": "SFTJob", "metadata": {"name": "s"}, "status": {}}
    assert status_row(tracked, NOW).tracking == URL
    shown = _render([status_row(tracked, NOW), status_row(plain, NOW)])
    assert "TRACKING" in shown and URL in shown
    assert "TRACKING" not in _render([status_row(plain, NOW)])
