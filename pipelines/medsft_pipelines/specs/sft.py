"""SFTSpec: the model, the dataset and the training recipe.

Defaults follow the published recipe for Qwen2.5-VL-7B-Instruct: full fine-tune,
3 epochs, learning rate 5e-5 with a cosine schedule and warmup ratio 0.1, global batch 512.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import (
    ModelLocation,
    ObjectRef,
    OneOf,
    StorageUri,
    cel,
    k8s_rules,
    one_of_rule,
)


class BaseModelSpec(Spec):
    """The model to fine-tune, in Hugging Face format."""

    uri: ModelLocation
    """Location of the base model (``s3://``, ``file://`` or a local folder), e.g. a copy of
    ``Qwen/Qwen2.5-VL-7B-Instruct`` in the bucket. Nothing is downloaded from a hub at run time."""
    processor_uri: ModelLocation | None = None
    """Location of the processor/tokenizer if it is not stored with the model."""
    freeze_vision_tower: bool = False
    """Keep the vision encoder frozen (the paper fine-tunes the full model)."""


class DatasetSource(OneOf):
    """The training data: a CurationJob's output or an existing dataset manifest. Exactly one."""

    curation_job_ref: ObjectRef | None = None
    """A CurationJob in the same namespace; training starts once it has succeeded."""
    manifest_uri: StorageUri | None = None
    """URI of a dataset ``manifest.json`` written by a curation run."""

    one_of = ("curation_job_ref", "manifest_uri")
    model_config = k8s_rules(one_of_rule(one_of))


class TrainingSpec(Spec):
    """Optimisation hyper-parameters (defaults: the paper's recipe)."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 3
    """Passes over the dataset (paper: 3)."""
    max_steps: Annotated[int, Field(ge=1)] | None = None
    """Stop after this many optimiser steps (overrides epochs; for smoke runs)."""
    learning_rate: Annotated[float, Field(gt=0, le=1)] = 5e-5
    """Peak learning rate (paper: 5e-5)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup (paper: cosine)."""
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Fraction of the steps spent warming up linearly (paper: 0.1)."""
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    """AdamW weight decay."""
    max_grad_norm: Annotated[float, Field(ge=0)] = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    global_batch_size: Annotated[int, Field(ge=1, le=1_048_576)] = 512
    """Samples (or packed rows, see batchUnit) per optimiser step across all GPUs (paper:
    512 samples); must be divisible by microBatchSize x world size."""
    batch_unit: Literal["samples", "rows"] = "samples"
    """What globalBatchSize counts when packing is on: ``samples`` (the paper's 512 samples a
    step; each GPU packs its equal share into rows, so the micro-batches a step takes vary,
    every GPU running as many as the one that needs the most) or ``rows`` (packed rows of up
    to maxSeqLength tokens: microBatchSize x gradient-accumulation steps x world size). Without
    packing a row is one sample and both count the same."""
    micro_batch_size: Annotated[int, Field(ge=1, le=4096)] = 1
    """Sequences per GPU per forward pass (packed sequences when packing is on)."""
    max_seq_length: Annotated[int, Field(ge=16, le=1_048_576)] = 16384
    """Maximum tokens per (packed) sequence."""
    packing: bool = True
    """Pack several samples per sequence, with attention that never crosses sample boundaries."""
    length_grouping: bool = True
    """Batch samples of similar length together to reduce padding."""
    overlong: Literal["drop", "truncate"] = "drop"
    """What to do with a sample longer than maxSeqLength (counted either way)."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory."""
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Training precision (bf16 on GPU; the CPU path always uses fp32)."""
    seed: Annotated[int, Field(ge=0)] = 42
    """Seed of initialisation-independent randomness: data order, dropout."""
    log_every_steps: Annotated[int, Field(ge=1)] = 1
    """Write a metrics line every N steps."""


class DeepSpeedSpec(Spec):
    """DeepSpeed ZeRO settings; the DeepSpeed config file is generated from these."""

    zero_stage: Literal[2, 3] = 3
    """ZeRO stage: 2 shards optimizer state and gradients, 3 also shards parameters."""
    offload_optimizer: bool = False
    """Offload optimizer state to CPU memory."""
    offload_params: bool = False
    """Offload parameters to CPU memory (ZeRO-3 only)."""

    model_config = k8s_rules(
        cel(
            "!self.offloadParams || self.zeroStage == 3",
            "offloadParams requires zeroStage 3",
            field_path=".offloadParams",
        )
    )

    @model_validator(mode="after")
    def _offload_needs_zero3(self) -> DeepSpeedSpec:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offloadParams requires zeroStage 3")
        return self


class CheckpointingSpec(Spec):
    """Checkpoints to storage, used to resume after any failure."""

    every_steps: Annotated[int, Field(ge=1)] = 500
    """Save a checkpoint every N optimiser steps (and always at the end)."""
    keep_last: Annotated[int, Field(ge=1, le=1000)] = 3
    """Keep only the newest N checkpoints (never deleting the one being resumed from)."""
    resume: bool = True
    """Resume automatically from the latest complete checkpoint."""


class SFTSpec(Spec):
    """What to train and how: the data part of an SFTJob."""

    model: BaseModelSpec
    """The base model."""
    dataset: DatasetSource | None = None
    """Training data. Required for a standalone SFTJob; in a MedSFTRun it is the curation stage's output."""
    training: TrainingSpec = TrainingSpec()
    """Optimisation hyper-parameters."""
    deepspeed: DeepSpeedSpec = DeepSpeedSpec()
    """DeepSpeed ZeRO settings."""
    checkpointing: CheckpointingSpec = CheckpointingSpec()
    """Checkpoint cadence and retention."""
    output_uri: StorageUri | None = None
    """Where checkpoints and the final model go; unset: ``<storage root>/<namespace>/<run>/g<generation>/sft``."""


def check_batch_divisible(training: TrainingSpec, world_size: int) -> int:
    """Gradient-accumulation steps for ``world_size`` GPUs, or a ValueError saying why not."""
    per_step = training.micro_batch_size * world_size
    if training.global_batch_size % per_step:
        raise ValueError(
            f"globalBatchSize {training.global_batch_size} is not divisible by "
            f"microBatchSize {training.micro_batch_size} x world size {world_size}"
        )
    return training.global_batch_size // per_step
