"""The engine interface and the backend-independent generation loop (with forced think exit)."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class Request:
    """One prompt to complete."""

    key: str
    """Caller's identifier, returned with the generation."""
    prompt: str
    """The full prompt text (chat template applied, generation prefix included)."""
    images: tuple[Image, ...] = field(default=(), repr=False)
    """Images, in the order of the prompt's image placeholders."""


@dataclass(frozen=True)
class Sampling:
    """Decoding settings for one run."""

    temperature: float = 0.6
    """0 means greedy decoding."""
    top_p: float = 0.95
    """Nucleus mass."""
    max_new_tokens: int = 8192
    """Token budget of the response (the reasoning included)."""
    seed: int = 0
    """Seed of this pass over the items."""
    forced_exit: bool = True
    """Append the end-of-think token to an unclosed reasoning block and let the model answer."""
    forced_exit_tokens: int = 64
    """Token budget of the answer after a forced exit."""
    think_opened: bool = False
    """The prompt already opened the reasoning block."""
    think_start: str = "<think>"
    """Token opening the reasoning."""
    think_end: str = "</think>"
    """Token closing the reasoning."""


def sampling_protocol(sampling: Sampling) -> dict[str, Any]:
    """Every decoding setting an engine applies, and nothing else: the one protocol of both
    backends, recorded in the report.

    Nothing comes from the checkpoint's ``generation_config.json`` (Qwen's carries a repetition
    penalty of 1.05, top-k 1 or 20, its own temperature): a model must score the same on either
    backend and as the paper's protocol says. Greedy (temperature 0) ignores top-p.
    """
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
        "top_k": None,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_new_tokens": sampling.max_new_tokens,
        "forced_exit_tokens": sampling.forced_exit_tokens if sampling.forced_exit else 0,
        "seed": sampling.seed,
        "from_checkpoint": None,
    }


@dataclass(frozen=True)
class RawOutput:
    """What an engine returns for one prompt."""

    ids: list[int]
    """New token ids, without the end-of-sequence token and padding."""
    finished: bool
    """True when the model stopped by itself (end of sequence), False when cut by the budget."""


@dataclass(frozen=True)
class Generation:
    """One finished response, with the token counts the length analysis needs."""

    key: str
    """The request's key."""
    text: str
    """The response as the model wrote it; on a forced exit, the end-of-think token and the
    answer written after it are included."""
    think_tokens: int
    """Tokens of reasoning (through the end-of-think token the model wrote); 0 without reasoning."""
    answer_tokens: int
    """Tokens after the reasoning."""
    forced_exit: bool
    """Whether the end-of-think token had to be appended."""
    finished: bool
    """Whether the model ended its response itself (after a forced exit: its answer)."""

    @property
    def response_tokens(self) -> int:
        """Tokens the model generated in total."""
        return self.think_tokens + self.answer_tokens


class TokenizerCodec:
    """:meth:`Engine.encode` and :meth:`Engine.decode` through the engine's Hugging Face
    tokenizer (``self.tokenizer``), the same for every backend."""

    tokenizer: Any

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


class Engine(Protocol):
    """A loaded model that completes batches of prompts."""

    batch_size: int
    """How many prompts one call takes (larger lists are split by :func:`generate`)."""

    def render(self, messages: list[dict]) -> str:
        """The prompt text of chat ``messages`` (the model's chat template, generation prompt on)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens dropped, reasoning delimiters kept)."""
        ...

    def generate_ids(
        self,
        requests: Sequence[Request],
        continuations: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling,
        seed: int,
    ) -> list[RawOutput]:
        """Complete each prompt followed by its continuation token ids (empty: none)."""
        ...


def find_subsequence(ids: Sequence[int], sub: Sequence[int]) -> int:
    """Index of the first occurrence of ``sub`` in ``ids``, or -1."""
    n = len(sub)
    if n == 0:
        return -1
    for i in range(len(ids) - n + 1):
        if list(ids[i : i + n]) == list(sub):
            return i
    return -1


def tokens_through(engine: Engine, ids: Sequence[int], tag: str) -> int:
    """How many of ``ids`` it takes for their decoded text to contain ``tag``; -1 if it never does.

    Tags are looked for in decoded text, never as token sequences: in a byte-level BPE where
    the tags are not special tokens (Qwen2.5), ``"</think>"`` alone encodes as ``</ think >``
    but the trained ``"\n</think>\n\n"`` as ``</ think >\n\n``, so no token sequence of the
    tag appears in what the model writes. Containment grows with the prefix, so a binary search
    over prefix lengths finds the token that completes the tag in O(log n) decodes.
    """
    if tag not in engine.decode(ids):
        return -1
    low, high = 1, len(ids)
    while low < high:
        mid = (low + high) // 2
        if tag in engine.decode(ids[:mid]):
            high = mid
        else:
            low = mid + 1
    return low


def batch_seed(seed: int, keys: Sequence[str]) -> int:
    """Seed of one batch: stable across runs, different between batches and seeds."""
    return zlib.crc32(f"{seed}|{keys[0]}|{len(keys)}".encode()) & 0x7FFFFFFF


def generate(
    engine: Engine,
    requests: Sequence[Request],
    sampling: Sampling,
    on_progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Complete every request in batches of ``engine.batch_size``, in the given order.

    A response whose reasoning block is still open (the prompt or the model opened it and
    no end-of-think token followed) gets a *forced exit*: the end-of-think token is appended
    and the model writes its answer with ``forced_exit_tokens`` more tokens.
    ``on_progress(n)`` is called after each batch with the number of requests finished in it.
    """
    exit_marker = f"\n{sampling.think_end}\n\n"
    # The marker as the model saw it in training: encoded on its own, then appended to the
    # reasoning's ids (the reasoning is not re-tokenised).
    exit_suffix = engine.encode(exit_marker)
    results: list[Generation] = []
    for start in range(0, len(requests), engine.batch_size):
        batch = list(requests[start : start + engine.batch_size])
        seed = batch_seed(sampling.seed, [r.key for r in batch])
        first = engine.generate_ids(
            batch, [[] for _ in batch], sampling.max_new_tokens, sampling, seed
        )
        texts = [engine.decode(out.ids) for out in first]
        open_think = [
            sampling.think_end not in text
            and (sampling.think_opened or sampling.think_start in text)
            for text in texts
        ]
        forced = [i for i, is_open in enumerate(open_think) if is_open and sampling.forced_exit]
        second: dict[int, RawOutput] = {}
        if forced:
            outs = engine.generate_ids(
                [batch[i] for i in forced],
                [first[i].ids + exit_suffix for i in forced],
                sampling.forced_exit_tokens,
                sampling,
                seed + 1,
            )
            second = dict(zip(forced, outs, strict=True))
        for i, request in enumerate(batch):
            results.append(
                _assemble(
                    request.key, first[i], texts[i], second.get(i), open_think[i], sampling, engine
                )
            )
        if on_progress:
            on_progress(len(batch))
    return results


def _assemble(
    key: str,
    first: RawOutput,
    text: str,
    after_exit: RawOutput | None,
    think_open: bool,
    sampling: Sampling,
    engine: Engine,
) -> Generation:
    if after_exit is not None:
        exit_marker = f"\n{sampling.think_end}\n\n"
        text = text + exit_marker + engine.decode(after_exit.ids)
        return Generation(key, text, len(first.ids), len(after_exit.ids), True, after_exit.finished)
    end = tokens_through(engine, first.ids, sampling.think_end) if not think_open else -1
    # Closed by the model: reasoning runs through the token that completes the end-of-think
    # tag (with Qwen2.5's BPE that token also carries the blank line after it). Still open (no
    # forced exit configured): all of it is reasoning. Never opened: no reasoning at all.
    think = end if end >= 0 else (len(first.ids) if think_open else 0)
    return Generation(key, text, think, len(first.ids) - think, False, first.finished)
