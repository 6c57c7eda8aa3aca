"""Think tags found in decoded text, on a Qwen2-style byte-level BPE that merges ``>\\n\\n``.

Qwen2.5(-VL)'s tokenizer does not make ``<think>``/``</think>`` special tokens, and its
pre-tokenizer keeps a run of punctuation together with the newlines after it, so the trained
format ``"\\n</think>\\n\\n"`` encodes as ``</ think >\\n\\n``: the ids of ``"</think>"`` on its own
(``</ think >``) never occur in what the model writes. The tokenizer here is trained in the test
with the ``tokenizers`` library and Qwen2's own pre-tokenizer (its split regex, then byte-level
without the GPT-2 regex), so it merges the same way. The Qwen2 vocabulary itself does not ship
in any installed package, and a random model cannot be made to write the trained format, so the
engine *replays scripted token ids* (the one stand-in: what a GPU-sized fine-tune would write);
tokenisation, decoding, the forced exit and the token counts are the real code.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from medsft_pipelines.answers import grade_response
from medsft_pipelines.eval.backends import RawOutput, Request, Sampling, generate
from medsft_pipelines.eval.backends.base import TokenizerCodec, find_subsequence

# Qwen2's pre-tokenizer split (tokenizer.json of Qwen2 / Qwen2.5 / Qwen2.5-VL).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
REASONING = "The lesion enhances on the arterial phase and washes out, so the likely cause is B."
ANSWER = "The answer is B."


def _corpus() -> list[str]:
    words = ["cardiac", "renal", "hepatic", "the", "answer", "option", "because", "lesion"]
    lines = []
    for i in range(400):
        body = " ".join(words[(i + k) % len(words)] for k in range(6))
        lines.append(f"<think>\n{body}.\n</think>\n\nThe answer is {'ABCD'[i % 4]}.")
    return lines


@pytest.fixture(scope="module")
def qwen2_style_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


class ScriptedEngine(TokenizerCodec):
    """Replays fixed token ids per request; after a forced exit, writes ``ANSWER``."""

    batch_size = 2

    def __init__(self, tokenizer: PreTrainedTokenizerFast, scripts: dict[str, list[int]]):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.continuations: list[list[int]] = []

    def render(self, messages: list[dict]) -> str:
        return messages[-1]["content"]

    def generate_ids(
        self,
        requests: Sequence[Request],
        continuations: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling,
        seed: int,
    ) -> list[RawOutput]:
        outs = []
        for request, extra in zip(requests, continuations, strict=True):
            if extra:
                self.continuations.append(list(extra))
                ids = self.encode(ANSWER)
            else:
                ids = self.scripts[request.key]
            outs.append(RawOutput(ids[:max_new_tokens], len(ids) <= max_new_tokens))
        return outs


def test_the_tokenizer_merges_the_tags_like_qwen2(qwen2_style_tokenizer) -> None:
    # The premise: the tag's own ids do not occur in the trained format's ids.
    tok = qwen2_style_tokenizer
    closed = tok.encode(f"\n</think>\n\n{ANSWER}", add_special_tokens=False)
    opened = tok.encode(f"<think>\n{REASONING}", add_special_tokens=False)
    assert find_subsequence(closed, tok.encode("</think>", add_special_tokens=False)) < 0
    assert find_subsequence(opened, tok.encode("<think>", add_special_tokens=False)) < 0
    assert ">ĊĊ" in tok.convert_ids_to_tokens(closed)  # byte-level spelling of ">\n\n"


@pytest.mark.parametrize("think_opened", [False, True], ids=["model-opens", "prompt-opens"])
def test_truncated_reasoning_gets_its_forced_exit(qwen2_style_tokenizer, think_opened) -> None:
    tok = qwen2_style_tokenizer
    reasoning = ("" if think_opened else "<think>\n") + REASONING
    ids = tok.encode(reasoning, add_special_tokens=False)
    engine = ScriptedEngine(tok, {"q1": ids})
    budget = len(ids) - 3  # cut before the reasoning ends
    sampling = Sampling(max_new_tokens=budget, forced_exit_tokens=16, think_opened=think_opened)
    (g,) = generate(engine, [Request("q1", "prompt")], sampling)
    assert g.forced_exit and g.finished
    assert g.think_tokens == budget
    assert g.answer_tokens == len(tok.encode(ANSWER, add_special_tokens=False))
    # The model was fed its reasoning and the marker in the trained tokenisation.
    marker = tok.encode("\n</think>\n\n", add_special_tokens=False)
    assert engine.continuations == [ids[:budget] + marker]
    grade = grade_response(
        g.text, "B", "choice", ["x", "y", "z", "w"], opened_in_prompt=think_opened
    )
    assert grade.correct


@pytest.mark.parametrize("think_opened", [False, True], ids=["model-opens", "prompt-opens"])
def test_think_and_answer_tokens_of_a_closed_block(qwen2_style_tokenizer, think_opened) -> None:
    tok = qwen2_style_tokenizer
    think_part = ("" if think_opened else "<think>\n") + REASONING + "\n</think>\n\n"
    think_ids = tok.encode(think_part, add_special_tokens=False)
    answer_ids = tok.encode(ANSWER, add_special_tokens=False)
    engine = ScriptedEngine(tok, {"q1": think_ids + answer_ids})
    sampling = Sampling(max_new_tokens=200, think_opened=think_opened)
    (g,) = generate(engine, [Request("q1", "prompt")], sampling)
    # Closed by the model: no forced exit (a second </think> would be appended otherwise).
    assert not g.forced_exit and engine.continuations == []
    assert g.think_tokens == len(think_ids)
    assert g.answer_tokens == len(answer_ids)
    assert g.text.count("</think>") == 1


def test_no_reasoning_no_think_tokens(qwen2_style_tokenizer) -> None:
    tok = qwen2_style_tokenizer
    ids = tok.encode(ANSWER, add_special_tokens=False)
    engine = ScriptedEngine(tok, {"q1": ids})
    (g,) = generate(engine, [Request("q1", "prompt")], Sampling(max_new_tokens=50))
    assert (g.think_tokens, g.answer_tokens, g.forced_exit) == (0, len(ids), False)
