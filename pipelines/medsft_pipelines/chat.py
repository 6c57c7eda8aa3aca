"""Where a row's images go in its chat: one rule for the lengths curation records and the
sequences SFT trains on (``curation.lengths`` and ``sft.data`` both render with
:func:`template_messages`), so a counted length is the trained length. Pure: no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def template_messages(messages: Sequence[Mapping[str, Any]], n_images: int) -> list[dict[str, Any]]:
    """Messages in the chat template's part form (Qwen style: ``{"type": "text"|"image"}``)
    with the row's ``n_images`` images placed: where a message's part list puts them, else
    before the text of the first user turn (where Qwen-VL puts them by default).

    ValueError when the messages place another number of images than the row has.
    """
    out: list[dict[str, Any]] = []
    placed = 0
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
            if message["role"] == "user" and placed == 0 and n_images:
                parts = [{"type": "image"}] * n_images + parts
                placed = n_images
        else:
            parts = [dict(p) for p in content]
            placed += sum(1 for p in parts if p.get("type") == "image")
        out.append({"role": message["role"], "content": parts})
    if placed != n_images:
        raise ValueError(f"row has {n_images} images but its messages place {placed}")
    return out
