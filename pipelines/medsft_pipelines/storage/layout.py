"""The names of a dataset's objects under its root (pure: the operator imports them to find a
curation job's manifest; :mod:`.shards`, which writes and reads them, loads pyarrow)."""

from __future__ import annotations

MANIFEST_KEY = "manifest.json"
"""Written last: the dataset exists for readers once this exists."""
