"""Lengths: token counts with the target model's processor, image tokens included.

``n_tokens`` is the length of the whole rendered conversation as the trainer will see it (chat
template, special tokens, and every image expanded to its vision tokens); ``trace_tokens`` is
the length of the assistant turn (reasoning + final answer): the response length the recipe
wants spread out, and what length buckets are defined on.

The chat template is rendered once per question: the prompt part (system + user turn) is the
same for all its traces, and the part after the assistant content is found by rendering one
full conversation, so each trace costs one tokenizer call, not a template render.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medsft_pipelines.specs.curation import LengthBucket


def template_messages(messages: Sequence[dict[str, str]], n_images: int) -> list[dict[str, Any]]:
    """Messages in the processor's chat-template form: images lead the user turn."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "user" and n_images:
            content = [{"type": "image"} for _ in range(n_images)]
            content.append({"type": "text", "text": m["content"]})
            out.append({"role": "user", "content": content})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


@dataclass(frozen=True)
class QuestionTokens:
    """One question's rendering, shared by its traces."""

    prefix: str
    """Everything before the assistant content."""
    suffix: str
    """Everything after the assistant content (end-of-turn tokens)."""
    image_extra: int
    """Vision tokens added by the images beyond the one placeholder each has in the text."""


class TokenCounter:
    """Counts tokens of rendered samples with a Hugging Face processor (or a bare tokenizer)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._template_owner = processor if hasattr(processor, "apply_chat_template") else None

    def image_tokens(self, sizes: Sequence[tuple[int, int]]) -> list[int]:
        """Vision tokens of each image of size (width, height) after the processor's resize."""
        if not sizes:
            return []
        mm = self.processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in sizes])
        return list(mm.num_image_tokens)

    def _render(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        owner = self._template_owner or self.tokenizer
        return owner.apply_chat_template(messages, tokenize=False, **kwargs)

    def question(
        self, messages: Sequence[dict[str, str]], image_sizes: Sequence[tuple[int, int]]
    ) -> QuestionTokens:
        """Render the prompt of a question (``messages`` ends with an assistant turn)."""
        conv = template_messages(messages, len(image_sizes))
        prompt = self._render(conv[:-1], add_generation_prompt=True)
        full = self._render(conv)
        content = conv[-1]["content"]
        at = full.find(content, len(prompt))
        if not full.startswith(prompt) or at != len(prompt):
            raise ValueError("the chat template does not render the assistant turn as a suffix")
        extra = sum(n - 1 for n in self.image_tokens(image_sizes))
        return QuestionTokens(prompt, full[at + len(content) :], extra)

    def count(
        self, questions: Sequence[QuestionTokens], responses: Sequence[str]
    ) -> list[tuple[int, int]]:
        """(n_tokens, trace_tokens) of each (question, assistant content) pair."""
        texts = [q.prefix + r + q.suffix for q, r in zip(questions, responses, strict=True)]
        full = self._lengths(texts)
        traces = self._lengths(list(responses))
        return [(n + q.image_extra, t) for q, n, t in zip(questions, full, traces, strict=True)]

    def _lengths(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        backend = getattr(self.tokenizer, "_tokenizer", None)
        if backend is not None:  # a fast tokenizer: encode the batch in Rust, skip the wrapper
            return [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]


def bucket_of(trace_tokens: int, buckets: Sequence[LengthBucket]) -> int | None:
    """Index of the first bucket (ordered by ``maxTokens``) a response length falls in."""
    for i, bucket in enumerate(sorted(buckets, key=lambda b: b.max_tokens)):
        if trace_tokens <= bucket.max_tokens:
            return i
    return None
