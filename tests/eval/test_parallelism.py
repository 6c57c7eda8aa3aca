"""The GPU layout of the eval engines: a pure decision, tested without GPUs."""

from __future__ import annotations

import pytest

from medsft_pipelines.eval.backends.parallelism import HeadCounts, head_counts, plan_layout

# Qwen2.5-VL-7B-Instruct's config.json (the parts that matter): 28 heads, 4 KV heads, 16
# vision heads.
QWEN25_VL_7B = {
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vision_config": {"num_heads": 16},
}
# Qwen2.5-VL-72B-Instruct: 64 heads, 8 KV heads, 16 vision heads.
QWEN25_VL_72B = {
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vision_config": {"num_heads": 16},
}


def test_head_counts_are_read_from_top_level_or_text_config() -> None:
    assert head_counts(QWEN25_VL_7B) == HeadCounts(28, 4, 16)
    nested = {"text_config": {"num_attention_heads": 32, "num_key_value_heads": 8}}
    assert head_counts(nested) == HeadCounts(32, 8, None)
    assert head_counts({"num_attention_heads": 12}) == HeadCounts(12, 12, None)


@pytest.mark.parametrize(
    ("config", "gpus", "tensor_parallel", "idle"),
    [
        (QWEN25_VL_7B, 1, 1, 0),
        (QWEN25_VL_7B, 2, 2, 0),
        (QWEN25_VL_7B, 4, 4, 0),
        (QWEN25_VL_7B, 8, 4, 4),  # 28 heads: 8 does not divide, 4 does; the rest is reported idle
        (QWEN25_VL_7B, 3, 2, 1),
        (QWEN25_VL_72B, 8, 8, 0),  # a model larger than one GPU uses all eight
        (QWEN25_VL_72B, 4, 4, 0),
    ],
)
def test_vllm_uses_tensor_parallelism_over_every_gpu_the_heads_allow(
    config: dict, gpus: int, tensor_parallel: int, idle: int
) -> None:
    layout = plan_layout("vllm", gpus, head_counts(config))
    assert (layout.tensor_parallel, layout.idle_gpus, layout.gpus) == (tensor_parallel, idle, gpus)
    assert layout.device_map is None


def test_kv_heads_fewer_than_the_tensor_parallel_size_are_replicated() -> None:
    # 2 KV heads on 4 GPUs: vLLM replicates each KV head on two ranks (4 % 2 == 0).
    assert plan_layout("vllm", 4, HeadCounts(32, 2, None)).tensor_parallel == 4
    # 6 KV heads on 4 GPUs: neither 6 % 4 nor 4 % 6 is 0, so 3 (24 % 3 == 6 % 3 == 0).
    assert plan_layout("vllm", 4, HeadCounts(24, 6, None)).tensor_parallel == 3


def test_vllm_without_head_counts_uses_all_gpus_and_refuses_cpu() -> None:
    assert plan_layout("vllm", 8).tensor_parallel == 8
    with pytest.raises(ValueError, match="at least one GPU"):
        plan_layout("vllm", 0)


@pytest.mark.parametrize(
    ("gpus", "device_map"), [(0, "cpu"), (1, "cuda"), (2, "auto"), (8, "auto")]
)
def test_transformers_spreads_layers_over_several_gpus(gpus: int, device_map: str) -> None:
    layout = plan_layout("transformers", gpus)
    assert (layout.device_map, layout.tensor_parallel, layout.idle_gpus) == (device_map, 1, 0)


def test_layout_is_described_for_the_report() -> None:
    assert plan_layout("vllm", 8, head_counts(QWEN25_VL_7B)).describe() == (
        "vllm, tensor parallel over 4 of 8 GPU(s), 4 idle"
    )
    assert plan_layout("transformers", 2).as_dict() == {
        "backend": "transformers",
        "gpus": 2,
        "tensor_parallel": 1,
        "device_map": "auto",
        "idle_gpus": 0,
        "description": "transformers, layers spread over 2 GPUs (device_map=auto)",
    }
    with pytest.raises(ValueError, match="unknown backend"):
        plan_layout("tgi", 1)
