"""Quarantine: every unusable row, image or response is recorded with its reason — never a
silent drop — and the error budget turns too much bad input into a clear job failure.

Row-level reasons (count against the budget): ``malformed_row``, ``missing_traces``, ``missing_image``,
``undecodable_image``, ``teacher_error``, ``teacher_empty`` and ``teacher_unparseable`` (not one
of a question's responses could be parsed). Trace-level entries (``unparseable_response``) are
recorded for inspection but a question with some usable responses is not bad input.

The quarantine file (``quarantine/<worker>.jsonl``) lives next to the dataset, with the same
access rules as the data; it is never logged.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from medsft_pipelines.storage import ObjectStore

from .errors import ErrorBudgetExceeded

ROW_REASONS = frozenset(
    {
        "malformed_row",
        "missing_traces",
        "missing_image",
        "undecodable_image",
        "teacher_error",
        "teacher_empty",
        "teacher_unparseable",
    }
)
MAX_TEXT = 4000  # characters of a response or raw value kept per entry


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return value[:MAX_TEXT] + f"… [{len(value) - MAX_TEXT} more characters]"
    return value


@dataclass
class Quarantine:
    """Collects quarantine entries and counts for one worker (or the merge)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    rows: Counter[str] = field(default_factory=Counter)
    """Row-level reasons -> count (what the error budget looks at)."""
    traces: Counter[str] = field(default_factory=Counter)
    """Trace-level reasons -> count."""

    def add(
        self,
        reason: str,
        *,
        source: str,
        row_index: int | None,
        sample_id: str | None = None,
        detail: str = "",
        raw: Any = None,
        response: str | None = None,
    ) -> None:
        """Record one bad row (a reason in :data:`ROW_REASONS`) or one bad response."""
        (self.rows if reason in ROW_REASONS else self.traces)[reason] += 1
        entry: dict[str, Any] = {"reason": reason, "source": source, "row": row_index}
        if sample_id:
            entry["id"] = sample_id
        if detail:
            entry["detail"] = detail
        if raw is not None:
            entry["raw"] = raw
        if response is not None:
            entry["response"] = _clip(response)
        self.entries.append(entry)

    def absorb(self, entries: list[dict[str, Any]]) -> None:
        """Take over entries recorded elsewhere (a slice's scan, maybe by another worker)."""
        for entry in entries:
            (self.rows if entry["reason"] in ROW_REASONS else self.traces)[entry["reason"]] += 1
            self.entries.append(entry)

    @property
    def bad_rows(self) -> int:
        """Rows that count against the error budget."""
        return sum(self.rows.values())

    def write(self, store: ObjectStore, key: str) -> None:
        """Write the entries as JSON lines (an empty file when there were none)."""
        text = "".join(json.dumps(e, sort_keys=True, default=str) + "\n" for e in self.entries)
        store.put_bytes(key, text.encode())


def check_error_budget(
    bad: Counter[str], rows_read: int, max_fraction: float, *, where: str, quarantine_uri: str
) -> None:
    """Raise :class:`ErrorBudgetExceeded` when ``sum(bad) / rows_read > max_fraction``."""
    total = sum(bad.values())
    if rows_read == 0 or total / rows_read <= max_fraction:
        return
    reasons = ", ".join(f"{reason}={n}" for reason, n in sorted(bad.items()))
    raise ErrorBudgetExceeded(
        f"{where}: {total} of {rows_read} input rows ({total / rows_read:.1%}) were quarantined, "
        f"more than the error budget of {max_fraction:.1%} (errorBudget.maxFraction). "
        f"Reasons: {reasons}. Inspect {quarantine_uri}, fix the input or the field mapping, "
        "or raise the budget."
    )
