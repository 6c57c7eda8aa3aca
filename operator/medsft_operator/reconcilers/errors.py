"""The error every reconciler turns into a Pending status: an input is missing or wrong.

A leaf module (it imports nothing of the operator's) because the storage layer
(:mod:`medsft_operator.artifacts`) raises it too, for a missing Secret or an unreadable
URI, and the reconcilers import that layer.
"""

from __future__ import annotations


class InputsError(Exception):
    """An input is missing or wrong (Secret, reference, dataset); the message is for users
    and never contains secret values."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
