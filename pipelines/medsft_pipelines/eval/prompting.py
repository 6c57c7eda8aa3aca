"""Prompts: per-model templates, chain-of-thought or direct answers, and where thinking starts.

A template decides the system prompt, how the answer is asked for, and whether the chat
template itself opens the reasoning block (Qwen3-style "thinking" models whose generation
starts inside ``<think>``). The user turn always has the same shape: the images, the
context, the question, the lettered options, then the instruction. Everything here is pure:
the backends apply the model's own chat template to the messages built here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from medsft_pipelines.answers import THINK_END, THINK_START, AnswerKind
from medsft_pipelines.specs.curation import DEFAULT_SYSTEM_PROMPT
from medsft_pipelines.specs.eval import GenerationSpec

from .backends.base import Sampling
from .items import BenchItem

Mode = Literal["cot", "direct"]


@dataclass(frozen=True)
class PromptTemplate:
    """How one model family is prompted."""

    name: str
    """Registry name (``GenerationSpec.promptTemplate``)."""
    system_prompt: str | None
    """System message; None: the chat template's default."""
    cot_instruction: str
    """Appended to the user turn in ``cot`` mode; ``{answer_format}`` is filled in."""
    direct_instruction: str
    """Appended to the user turn in ``direct`` mode."""
    opens_think: bool = False
    """The generation starts inside the reasoning block: the prompt ends with ``<think>``."""
    think_start: str = THINK_START
    """Token opening the reasoning."""
    think_end: str = THINK_END
    """Token closing the reasoning; appended on a forced exit."""


_STEP_BY_STEP = (
    "Think step by step, then give the final answer on the last line as '{answer_format}'."
)
_DIRECT = "Do not explain. Reply only with '{answer_format}'."

TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        # A model fine-tuned by medsft: the curation recipe's system prompt asks for <think>.
        PromptTemplate(
            name="medsft",
            system_prompt=DEFAULT_SYSTEM_PROMPT,
            cot_instruction="Give the final answer as '{answer_format}'.",
            direct_instruction=_DIRECT,
        ),
        # Qwen2.5-VL instruct models: no native reasoning block, plain CoT prompting.
        PromptTemplate(
            name="qwen2_5_vl",
            system_prompt=None,
            cot_instruction=_STEP_BY_STEP,
            direct_instruction=_DIRECT,
        ),
        # Thinking models whose chat template starts the reasoning block (Qwen3 thinking).
        PromptTemplate(
            name="thinking",
            system_prompt=None,
            cot_instruction="Give the final answer as '{answer_format}'.",
            direct_instruction=_DIRECT,
            opens_think=True,
        ),
    )
}


def template_for(
    name: str | None, model_type: str | None = None, fine_tuned: bool = False
) -> PromptTemplate:
    """The template named ``name``, else the one for a medsft fine-tune or the model type."""
    if name:
        try:
            return TEMPLATES[name]
        except KeyError:
            raise KeyError(
                f"unknown prompt template {name!r}; known: {', '.join(TEMPLATES)}"
            ) from None
    if fine_tuned:
        return TEMPLATES["medsft"]
    if model_type and "qwen3" in model_type:
        return TEMPLATES["thinking"]
    return TEMPLATES["qwen2_5_vl"]


def answer_format(item: BenchItem) -> str:
    """How the final answer line must look for this item."""
    if item.kind is AnswerKind.CHOICE:
        return "Answer: <option letter>"
    if item.kind is AnswerKind.NUMERIC:
        return "Answer: <number>"
    return "Answer: <short answer>"


def user_text(item: BenchItem, template: PromptTemplate, mode: Mode) -> str:
    """The text part of the user turn."""
    parts = []
    if item.context:
        parts.append(f"Context:\n{item.context}")
    parts.append(f"Question: {item.question}")
    if item.options:
        parts.append("Options:\n" + "\n".join(f"{k}. {v}" for k, v in item.options.items()))
    instruction = template.cot_instruction if mode == "cot" else template.direct_instruction
    parts.append(instruction.format(answer_format=answer_format(item)))
    return "\n\n".join(parts)


def build_messages(
    item: BenchItem, template: PromptTemplate, mode: Mode, n_images: int
) -> list[dict[str, Any]]:
    """Chat messages for ``item``: image placeholders first (as Qwen-VL expects), then text."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": user_text(item, template, mode)})
    messages: list[dict[str, Any]] = []
    if template.system_prompt:
        messages.append(
            {"role": "system", "content": [{"type": "text", "text": template.system_prompt}]}
        )
    messages.append({"role": "user", "content": content})
    return messages


def generation_prefix(template: PromptTemplate, mode: Mode) -> str:
    """Text appended after the chat template's generation prompt.

    Thinking templates open the reasoning block in ``cot`` mode, and close it at once in
    ``direct`` mode (so the model answers without reasoning, as Qwen3 does with thinking off).
    """
    if not template.opens_think:
        return ""
    if mode == "cot":
        return f"{template.think_start}\n"
    return f"{template.think_start}\n\n{template.think_end}\n\n"


def sampling_of(gen: GenerationSpec, template: PromptTemplate | None, seed: int) -> Sampling:
    """The decoding settings of one pass: the spec's and nothing else (the protocol both
    backends apply, see :func:`~.backends.base.sampling_protocol`); ``template`` decides
    where the reasoning starts and ends (None: the defaults, for the report)."""
    template = template or TEMPLATES["medsft"]
    return Sampling(
        temperature=gen.temperature,
        top_p=gen.top_p,
        max_new_tokens=gen.max_new_tokens,
        seed=seed,
        forced_exit=gen.forced_think_exit,
        forced_exit_tokens=gen.forced_exit_tokens,
        think_opened=template.opens_think and gen.mode == "cot",
        think_start=template.think_start,
        think_end=template.think_end,
    )
