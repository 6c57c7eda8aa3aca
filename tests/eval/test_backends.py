"""The transformers engine on the tiny model: batching, left padding, forced think exit."""

from __future__ import annotations

import io

import pytest
from eval.eval_fixtures import VQA_RAD
from PIL import Image

from medsft_pipelines.eval import load_benchmark
from medsft_pipelines.eval.backends import Request, Sampling, generate
from medsft_pipelines.eval.backends.base import find_subsequence
from medsft_pipelines.eval.prompting import TEMPLATES, build_messages, generation_prefix

THINKING = TEMPLATES["thinking"]


def vqa_requests(engine, n: int, *, with_images: bool = True) -> list[Request]:
    bench = load_benchmark("vqa-rad", str(VQA_RAD), max_items=n)
    requests = []
    for item in bench.items:
        images = (
            tuple(
                Image.open(io.BytesIO(bench.image_bytes(ref))).convert("RGB") for ref in item.images
            )
            if with_images
            else ()
        )
        prompt = engine.render(build_messages(item, THINKING, "cot", len(images)))
        requests.append(Request(item.id, prompt + generation_prefix(THINKING, "cot"), images))
    return requests


@pytest.mark.parametrize("with_images", [False, True], ids=["text", "image"])
def test_batched_equals_one_at_a_time_under_greedy(tiny_engine, with_images: bool) -> None:
    # Left padding must not change what a row generates: greedy decoding of a batch of
    # different-length prompts equals decoding each prompt alone, forced exits included.
    requests = vqa_requests(tiny_engine, 3, with_images=with_images)
    assert len({len(r.prompt) for r in requests}) > 1, "prompts of different lengths needed"
    sampling = Sampling(temperature=0.0, max_new_tokens=6, forced_exit_tokens=4, think_opened=True)
    batched = generate(tiny_engine, requests, sampling)
    tiny_engine.batch_size, saved = 1, tiny_engine.batch_size
    try:
        single = generate(tiny_engine, requests, sampling)
    finally:
        tiny_engine.batch_size = saved
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.response_tokens for g in batched] == [g.response_tokens for g in single]


def test_forced_exit_appends_end_of_think_and_lets_the_model_answer(tiny_engine) -> None:
    requests = vqa_requests(tiny_engine, 4)
    sampling = Sampling(
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=8,
        forced_exit_tokens=5,
        think_opened=True,
        seed=3,
    )
    generations = generate(tiny_engine, requests, sampling)
    think_end = tiny_engine.encode("</think>")
    forced = [g for g in generations if g.forced_exit]
    assert forced, "a random model never closes its reasoning in 8 tokens"
    for g in generations:
        if g.forced_exit:
            # reasoning = the whole first pass (cut at the budget or ended without closing)
            before, marker, _ = g.text.partition("\n</think>\n\n")
            assert marker and "</think>" not in before
            assert 1 <= g.think_tokens <= 8 and 0 <= g.answer_tokens <= 5
        else:
            # the model closed the block itself: reasoning runs through its </think>
            assert find_subsequence(tiny_engine.encode(g.text), think_end) >= 0
            assert g.response_tokens <= 8
    assert any(g.think_tokens == 8 for g in forced), "cut at the budget, then forced out"
    # Same seed, same results: sampling is reproducible.
    again = generate(tiny_engine, requests, sampling)
    assert [g.text for g in again] == [g.text for g in generations]


def test_without_forced_exit_the_reasoning_stays_open(tiny_engine) -> None:
    requests = vqa_requests(tiny_engine, 2, with_images=False)
    sampling = Sampling(temperature=0.0, max_new_tokens=6, forced_exit=False, think_opened=True)
    for g in generate(tiny_engine, requests, sampling):
        assert not g.forced_exit
        if "</think>" not in g.text:
            assert g.answer_tokens == 0 and 1 <= g.think_tokens <= 6


def test_seeds_give_different_samples(tiny_engine) -> None:
    requests = vqa_requests(tiny_engine, 2, with_images=False)
    texts = {
        tuple(
            g.text
            for g in generate(
                tiny_engine, requests, Sampling(max_new_tokens=8, seed=s, think_opened=True)
            )
        )
        for s in range(3)
    }
    assert len(texts) == 3


def test_the_checkpoints_generation_config_is_not_inherited(tiny_model, tmp_path) -> None:
    # Qwen's checkpoints ship a generation_config.json with a repetition penalty and top-k; the
    # protocol is the spec's settings only, on either backend. The same weights with a
    # penalising generation_config must generate exactly what they generate without one.
    import json
    import shutil

    from medsft_pipelines.eval.backends import open_engine

    penalised = tmp_path / "penalised"
    shutil.copytree(tiny_model, penalised)
    config = json.loads((penalised / "generation_config.json").read_text())
    config.update(repetition_penalty=50.0, no_repeat_ngram_size=1, top_k=1, temperature=1.7)
    (penalised / "generation_config.json").write_text(json.dumps(config))
    texts = []
    for path in (tiny_model, penalised):
        engine = open_engine(
            "transformers", str(path), batch_size=2, max_pixels=65536, max_images=1
        )
        requests = vqa_requests(engine, 2, with_images=False)
        sampling = Sampling(temperature=0.0, max_new_tokens=24, forced_exit=False)
        texts.append([g.text for g in generate(engine, requests, sampling)])
    # The premise: the greedy output repeats tokens, which the penalty would have prevented.
    plain = texts[0]
    assert any(len(set(engine.encode(t))) < len(engine.encode(t)) for t in plain)
    assert texts[1] == plain
    assert engine.model.generation_config.repetition_penalty in (None, 1.0)


@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_both_backends_get_exactly_the_protocol(temperature: float) -> None:
    # The settings each engine hands its library, from one protocol (vLLM itself is only in
    # the GPU image; its keyword arguments are built without it).
    from medsft_pipelines.eval.backends.base import sampling_protocol
    from medsft_pipelines.eval.backends.hf import generation_config
    from medsft_pipelines.eval.backends.vllm import sampling_options

    sampling = Sampling(temperature=temperature, top_p=0.95, max_new_tokens=64, seed=3)
    protocol = sampling_protocol(sampling)
    hf = generation_config(sampling, 64, {7}, 0)
    vllm = sampling_options(sampling, 64, 3)
    assert hf.repetition_penalty == vllm["repetition_penalty"] == 1.0
    assert vllm["presence_penalty"] == vllm["frequency_penalty"] == vllm["min_p"] == 0.0
    assert hf.max_new_tokens == vllm["max_tokens"] == 64
    assert vllm["temperature"] == protocol["temperature"] == temperature
    if temperature > 0:
        assert hf.do_sample and hf.temperature == temperature and hf.top_p == 0.95
        assert hf.top_k == 0 and vllm["top_p"] == 0.95  # no top-k on either
    else:
        assert not hf.do_sample and vllm["top_p"] == protocol["top_p"] == 1.0
