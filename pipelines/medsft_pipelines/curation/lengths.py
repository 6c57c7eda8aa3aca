"""Lengths: token counts with the target model's processor, image tokens included.

``n_tokens`` is the length of the whole rendered conversation as the trainer will see it (chat
template, special tokens, and every image expanded to its vision tokens); ``trace_tokens`` is
the length of the assistant turn (reasoning + final answer): the response length the recipe
wants spread out, and what length buckets are defined on.

Images are placed in the chat by :func:`medsft_pipelines.chat.template_messages`, the rule
the SFT encoder renders with: a counted length is the length trained on.

The chat template is rendered once per question, with a sentinel as the assistant content:
the text before it (system + user turn) is the same for all the question's traces and the text
after it closes the turn, so each trace costs one tokenizer call, not a template render.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsft_pipelines.chat import template_messages
from medsft_pipelines.specs.curation import LengthBucket
from medsft_pipelines.specs.jobconfig import CurationJobConfig
from medsft_pipelines.storage import StorageSettings

from .errors import CurationError

_SENTINEL = "\ue000medsft-assistant-content\ue000"  # private-use characters: never in data


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
        self._image_tokens: dict[tuple[int, int], int] = {}
        self.additive: bool | None = None
        """Whether the prompt and the response can be tokenised apart (decided on first use)."""

    def image_tokens(self, sizes: Sequence[tuple[int, int]]) -> list[int]:
        """Vision tokens of each image of size (width, height) after the processor's resize."""
        missing = [s for s in dict.fromkeys(sizes) if s not in self._image_tokens]
        if missing:
            mm = self.processor._get_num_multimodal_tokens(image_sizes=[(h, w) for w, h in missing])
            self._image_tokens.update(zip(missing, mm.num_image_tokens, strict=True))
        return [self._image_tokens[s] for s in sizes]

    def _render(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        owner = self._template_owner or self.tokenizer
        return owner.apply_chat_template(messages, tokenize=False, **kwargs)

    def question(
        self, messages: Sequence[dict[str, str]], image_sizes: Sequence[tuple[int, int]]
    ) -> QuestionTokens:
        """Render the prompt of a question (``messages`` ends with an assistant turn)."""
        conv = template_messages(messages, len(image_sizes))
        # One render with a sentinel as the assistant content: what precedes it is the prompt,
        # what follows it closes the turn.
        conv[-1] = {"role": "assistant", "content": _SENTINEL}
        full = self._render(conv)
        if full.count(_SENTINEL) != 1:
            raise ValueError("the chat template does not render the assistant content verbatim")
        prefix, suffix = full.split(_SENTINEL)
        extra = sum(n - 1 for n in self.image_tokens(image_sizes))
        return QuestionTokens(prefix, suffix, extra)

    def count(
        self, questions: Sequence[QuestionTokens], responses: Sequence[str]
    ) -> list[tuple[int, int]]:
        """(n_tokens, trace_tokens) of each (question, assistant content) pair."""
        traces = self._lengths(list(responses))
        if self.additive is None and questions:
            self.additive = self._splits_cleanly(questions, responses, traces)
        if self.additive:
            # prompt + response + end-of-turn tokenise independently (the boundaries are a
            # newline and special tokens): one tokenizer pass per response, not two.
            unique = {id(q): q for q in questions}
            prefixes = dict(
                zip(unique, self._lengths([q.prefix for q in unique.values()]), strict=True)
            )
            suffixes = dict(
                zip(unique, self._lengths([q.suffix for q in unique.values()]), strict=True)
            )
            full = [
                prefixes[id(q)] + t + suffixes[id(q)]
                for q, t in zip(questions, traces, strict=True)
            ]
        else:
            full = self._lengths(
                [q.prefix + r + q.suffix for q, r in zip(questions, responses, strict=True)]
            )
        return [(n + q.image_extra, t) for q, n, t in zip(questions, full, traces, strict=True)]

    def _splits_cleanly(
        self, questions: Sequence[QuestionTokens], responses: Sequence[str], traces: list[int]
    ) -> bool:
        """Whether tokenising prompt, response and end of turn apart gives the same count as
        the whole text, checked on the first batch (every row has the same boundaries: the
        end of the generation prompt, the think tag, the end-of-turn token)."""
        full = self._lengths(
            [q.prefix + r + q.suffix for q, r in zip(questions, responses, strict=True)]
        )
        parts = [
            a + t + b
            for a, t, b in zip(
                self._lengths([q.prefix for q in questions]),
                traces,
                self._lengths([q.suffix for q in questions]),
                strict=True,
            )
        ]
        return full == parts

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


def load_token_counter(
    config: CurationJobConfig, settings: StorageSettings, scratch: Path
) -> TokenCounter:
    """The :class:`TokenCounter` of the spec's processor (downloaded once if remote)."""
    from medsft_pipelines.models import load_processor
    from medsft_pipelines.models.fetch import model_folder

    if config.spec.processor is None:
        raise CurationError(
            "spec.processor is required: token lengths are measured with the target model's "
            "processor (in a MedSFTRun it defaults to the SFT base model)"
        )
    location = config.spec.processor.model
    folder = model_folder(location, settings, scratch / "models")
    if not (folder / "config.json").exists():
        raise CurationError(f"processor model {location} has no config.json")
    return TokenCounter(load_processor(folder))
