"""Errors of the curation pipeline."""

from __future__ import annotations


class CurationError(RuntimeError):
    """A curation job cannot go on; the message says why and what to do."""


class ErrorBudgetExceeded(CurationError):
    """More input was quarantined than the spec's error budget allows."""


class BadInput(ValueError):
    """One row, image or response cannot be used; ``reason`` is its quarantine reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
