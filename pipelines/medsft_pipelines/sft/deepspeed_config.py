"""The DeepSpeed config, generated from the SFT spec (no hand-written JSON to drift)."""

from __future__ import annotations

from typing import Any

from medsft_pipelines.specs.sft import SFTSpec


def uses_client_optimizer(spec: SFTSpec) -> bool:
    """Whether the recipe passes its own ``torch.optim.AdamW`` to DeepSpeed.

    DeepSpeed's own optimizers are C++/CUDA extensions JIT-compiled on first use (about a
    minute each on a fresh machine). torch's AdamW (fused on GPU) is as fast on GPU and
    needs no build; only optimizer offload requires DeepSpeed's CPU Adam.
    """
    return not spec.deepspeed.offload_optimizer


def deepspeed_config(
    spec: SFTSpec,
    *,
    world_size: int,
    grad_accum_steps: int,
    on_gpu: bool,
) -> dict[str, Any]:
    """DeepSpeed config for ``spec``: ZeRO-2/3, precision, offload, batch sizes, clipping.

    Precision: bf16/fp16 as configured on GPU; always fp32 on CPU (CPU kernels for bf16
    training are slow and DeepSpeed's CPU path is tested in fp32).
    """
    t, ds = spec.training, spec.deepspeed
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        "overlap_comm": on_gpu,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 5e8 if on_gpu else 5e7,
        "allgather_bucket_size": 5e8 if on_gpu else 5e7,
    }
    if ds.zero_stage == 3:
        zero.update(
            stage3_prefetch_bucket_size=5e8 if on_gpu else 5e7,
            stage3_param_persistence_threshold=1e5,
            # The final Hugging Face export gathers the full weights on rank 0.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": t.micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": on_gpu and t.precision == "bf16"},
        "fp16": {"enabled": on_gpu and t.precision == "fp16", "loss_scale": 0},
        # The recipe logs its own metrics; DeepSpeed's periodic prints would only add noise.
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    if uses_client_optimizer(spec):
        config["zero_allow_untested_optimizer"] = True
    else:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": t.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
            },
        }
    return config
