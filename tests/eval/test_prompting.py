"""Prompt templates: user turn layout, CoT vs direct, where the reasoning block starts."""

from __future__ import annotations

import pytest

from medsft_pipelines.answers import AnswerKind, split_think_answer
from medsft_pipelines.eval.items import BenchItem
from medsft_pipelines.eval.prompting import (
    TEMPLATES,
    build_messages,
    generation_prefix,
    template_for,
    user_text,
)
from medsft_pipelines.specs.curation import DEFAULT_SYSTEM_PROMPT

ITEM = BenchItem(
    id="1",
    question="Is the lesion malignant?",
    answer="B",
    kind=AnswerKind.CHOICE,
    options={"A": "yes", "B": "no", "C": "maybe"},
    images=("a.png", "b.png"),
    context="An abstract.",
)
OPEN = BenchItem(id="2", question="Which organ?", answer="liver", kind=AnswerKind.OPEN)


def test_user_text_layout() -> None:
    text = user_text(ITEM, TEMPLATES["qwen2_5_vl"], "cot")
    assert (
        text.index("Context:\nAn abstract.")
        < text.index("Question: Is the lesion")
        < text.index("Options:")
    )
    assert "A. yes\nB. no\nC. maybe" in text
    assert text.endswith(
        "Think step by step, then give the final answer on the last line as 'Answer: <option letter>'."
    )
    direct = user_text(OPEN, TEMPLATES["qwen2_5_vl"], "direct")
    assert "Options" not in direct and direct.endswith("Reply only with 'Answer: <short answer>'.")


def test_messages_put_images_first_and_the_system_prompt() -> None:
    messages = build_messages(ITEM, TEMPLATES["medsft"], "cot", n_images=2)
    assert messages[0] == {
        "role": "system",
        "content": [{"type": "text", "text": DEFAULT_SYSTEM_PROMPT}],
    }
    content = messages[1]["content"]
    assert [part["type"] for part in content] == ["image", "image", "text"]
    assert (
        len(build_messages(ITEM, TEMPLATES["qwen2_5_vl"], "cot", n_images=0)) == 1
    )  # default system


def test_thinking_template_opens_or_skips_the_reasoning_block() -> None:
    thinking = TEMPLATES["thinking"]
    assert generation_prefix(thinking, "cot") == "<think>\n"
    direct = generation_prefix(thinking, "direct")
    # Direct mode closes the block at once: what the model writes next is the answer part.
    assert split_think_answer(direct + "Answer: B").answer == "Answer: B"
    assert generation_prefix(TEMPLATES["qwen2_5_vl"], "cot") == ""


def test_template_choice() -> None:
    assert template_for("thinking").name == "thinking"
    assert template_for(None, "qwen2_5_vl", fine_tuned=True).name == "medsft"
    assert template_for(None, "qwen3_vl").name == "thinking"
    assert template_for(None, "qwen2_5_vl").name == "qwen2_5_vl"
    with pytest.raises(KeyError, match="known: medsft"):
        template_for("nope")


def test_rendered_prompt_with_the_model_chat_template(tiny_engine) -> None:
    prompt = tiny_engine.render(build_messages(ITEM, TEMPLATES["medsft"], "cot", n_images=2))
    assert prompt.count("<|image_pad|>") == 2
    assert prompt.startswith("<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT)
    assert prompt.endswith("<|im_start|>assistant\n")
