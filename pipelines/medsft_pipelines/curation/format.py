"""Formatting: one template renders every training sample as chat messages.

* system: ``format.systemPrompt``
* user: the images (in the row's ``images`` column, in order, placed before the text by the
  trainer's chat template) and the text: context, question, options one per line
* assistant: ``<think>\\n{trace}\\n</think>\\n\\n`` + ``format.answerTemplate`` with ``{answer}``
  replaced by the verified answer (the option letter for multiple choice)

The same question rendering is what the teacher sees, so a trace reasons about exactly the
text the student is trained on.
"""

from __future__ import annotations

from medsft_pipelines.answers import OPTION_LETTERS, split_think_answer
from medsft_pipelines.specs.curation import FormatSpec

from .sample import Sample


def render_question(sample: Sample) -> str:
    """The user-turn text: context, question and options labelled ``A.``, ``B.`` ... (the
    labels the teacher answers with, the verifier and the eval harness read)."""
    parts = []
    if sample.context:
        parts.append(sample.context)
    parts.append(sample.question)
    if sample.options:
        lines = [f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(sample.options)]
        parts.append("Options:\n" + "\n".join(lines))
    return "\n\n".join(parts)


def reasoning_of(response: str) -> str:
    """The reasoning part of a teacher response: the think block, or (for a teacher that does
    not use think tags, such as GPT-4o) the whole chain-of-thought text."""
    split = split_think_answer(response)
    return split.think if split.think else split.answer


def render_messages(sample: Sample, reasoning: str, spec: FormatSpec) -> list[dict[str, str]]:
    """System, user and assistant messages of one training sample."""
    answer = spec.answer_template.replace("{answer}", sample.answer)
    assistant = f"{spec.think_start}\n{reasoning.strip()}\n{spec.think_end}\n\n{answer}"
    messages = []
    if spec.system_prompt:
        messages.append({"role": "system", "content": spec.system_prompt})
    messages.append({"role": "user", "content": render_question(sample)})
    messages.append({"role": "assistant", "content": assistant})
    return messages
