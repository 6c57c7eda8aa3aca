"""The vLLM engine gives the same kind of results as the transformers engine (GPU only)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def vllm_engine(request):
    pytest.importorskip(
        "vllm", reason="vLLM is only in the eval image (trainer-image/Dockerfile.eval)"
    )
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from medsft_pipelines.eval.backends import open_engine

    tiny_model = request.getfixturevalue("tiny_model")  # built only where vLLM can run
    return open_engine("vllm", str(tiny_model), batch_size=8, max_pixels=65536, max_images=2)


def test_vllm_engine_generates_with_forced_exit(vllm_engine) -> None:
    from medsft_pipelines.eval.backends import Request, Sampling, generate

    prompt = vllm_engine.render(
        [{"role": "user", "content": [{"type": "text", "text": "Is it benign?"}]}]
    )
    requests = [Request(f"q{i}", prompt + "<think>\n") for i in range(4)]
    generations = generate(
        vllm_engine, requests, Sampling(max_new_tokens=8, forced_exit_tokens=4, think_opened=True)
    )
    assert len(generations) == 4
    assert any(g.forced_exit for g in generations)
    for g in generations:
        assert g.think_tokens <= 8 and g.answer_tokens <= 8 + 4


def test_vllm_engine_spreads_over_every_visible_gpu(vllm_engine) -> None:
    import torch

    layout = vllm_engine.layout
    assert layout.gpus == torch.cuda.device_count()
    assert layout.tensor_parallel + layout.idle_gpus == layout.gpus
    parallel = vllm_engine.llm.llm_engine.vllm_config.parallel_config
    assert parallel.tensor_parallel_size == layout.tensor_parallel
