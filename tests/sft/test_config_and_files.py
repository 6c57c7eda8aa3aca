"""DeepSpeed config generation, model-folder checks, MFU arithmetic."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText

from medsft_pipelines.models.fetch import ModelFilesError
from medsft_pipelines.sft.deepspeed_config import deepspeed_config, uses_client_optimizer
from medsft_pipelines.sft.layout import final_model_uri
from medsft_pipelines.sft.model_files import check_model_dir
from medsft_pipelines.sft.telemetry import FlopsModel
from medsft_pipelines.specs.sft import SFTSpec, check_batch_divisible


def _spec(**deepspeed) -> SFTSpec:
    return SFTSpec.model_validate(
        {
            "model": {"uri": "s3://bucket/models/qwen"},
            "training": {"globalBatchSize": 64, "microBatchSize": 2},
            "deepspeed": deepspeed,
        }
    )


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_and_batch_sizes(stage: int) -> None:
    spec = _spec(zeroStage=stage)
    accum = check_batch_divisible(spec.training, world_size=8)
    config = deepspeed_config(spec, world_size=8, grad_accum_steps=accum, on_gpu=True)
    assert config["zero_optimization"]["stage"] == stage
    assert config["train_batch_size"] == 64 == 2 * accum * 8
    assert config["bf16"]["enabled"] is True
    assert ("stage3_gather_16bit_weights_on_model_save" in config["zero_optimization"]) == (
        stage == 3
    )
    # torch's AdamW is handed to DeepSpeed: nothing to JIT-compile.
    assert "optimizer" not in config and config["zero_allow_untested_optimizer"]


def test_cpu_runs_fp32_and_offload_uses_deepspeed_adam() -> None:
    spec = _spec(zeroStage=3, offloadOptimizer=True, offloadParams=True)
    config = deepspeed_config(spec, world_size=2, grad_accum_steps=16, on_gpu=False)
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert not uses_client_optimizer(spec)
    assert config["optimizer"]["type"] == "AdamW"


def test_non_dividing_batch_is_a_clear_error() -> None:
    spec = _spec()
    with pytest.raises(
        ValueError, match="globalBatchSize 64 is not divisible by microBatchSize 2 x world size 6"
    ):
        check_batch_divisible(spec.training, world_size=6)


def test_model_folder_missing_files_are_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    check_model_dir(tiny_model_dir)  # complete
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").unlink()
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelFilesError) as err:
        check_model_dir(broken)
    assert "model.safetensors" in str(err.value) and "tokenizer.json" in str(err.value)
    assert "config.json" not in str(err.value)
    with pytest.raises(ModelFilesError, match="does not exist"):
        check_model_dir(tmp_path / "nowhere")


def test_flops_model_counts_matmul_weights(tiny_model_dir: Path) -> None:
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    flops = FlopsModel.of(model)
    vision = sum(p.numel() for p in model.model.visual.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    assert flops.vision_params == vision
    assert flops.text_params == total - vision - embedding  # the lookup is not a matmul
    # 6 N T for text tokens and image patches, plus causal attention per sample.
    expected = 6 * (flops.text_params * 10 + vision * 4) + 6 * flops.layers * flops.hidden * 100
    assert flops.step(tokens=10, sum_sq_lengths=100, image_patches=4) == expected
    assert final_model_uri("s3://b/runs/r1/sft/") == "s3://b/runs/r1/sft/model"
