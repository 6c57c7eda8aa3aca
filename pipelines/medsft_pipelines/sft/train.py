"""medsft-train: full fine-tuning of a Qwen-VL model on curated shards, with DeepSpeed.

Launched by torchrun on every node (the PyTorchJob's pods, or ``medsft run --local``)::

    torchrun --nproc_per_node=8 --nnodes=$N ... $(which medsft-train) --config job.yaml

The file reads top to bottom: setup (distributed, storage, model, data) -> optimiser ->
resume -> the loop (one optimiser step = grad-accumulation micro-batches on every rank) ->
checkpoints -> Hugging Face export and the end-of-run report. The plumbing it calls lives
beside it: :mod:`.distributed` (the process group, its reductions, batch fingerprints) and
:mod:`.steps` (the step plan every rank agrees on, and the walk over epochs).
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForImageTextToText, get_scheduler

from medsft_pipelines.models import load_processor, save_processor
from medsft_pipelines.models.fetch import download_model, is_remote, local_path
from medsft_pipelines.sft.attention import VARLEN, choose_attention, flattens_packed_rows
from medsft_pipelines.sft.checkpointing import Checkpoints, Topology, TrainState
from medsft_pipelines.sft.data import (
    BatchPlan,
    Collated,
    ExampleEncoder,
    MicroBatch,
    MicroBatchStream,
    collate,
    shifted_targets,
)
from medsft_pipelines.sft.deepspeed_config import deepspeed_config, uses_client_optimizer
from medsft_pipelines.sft.distributed import (
    all_reduce_max,
    all_reduce_sum,
    batch_fingerprint,
    gather_objects,
    init_distributed,
)
from medsft_pipelines.sft.layout import FINAL_MODEL, LOSS_CURVE, PROGRESS_STAGE, SUMMARY
from medsft_pipelines.sft.lean_deepspeed import deepspeed
from medsft_pipelines.sft.lengths import SampleLengths
from medsft_pipelines.sft.model_files import check_model_dir, upload_export
from medsft_pipelines.sft.steps import StepPlan, optimizer_steps, plan_steps
from medsft_pipelines.sft.telemetry import FlopsModel, peak_flops, plot_loss_curve
from medsft_pipelines.specs.jobconfig import SFTJobConfig, load_job_config
from medsft_pipelines.specs.sft import SFTSpec, check_batch_divisible
from medsft_pipelines.storage import ObjectStore, StorageError, StorageSettings, open_store
from medsft_pipelines.storage.progress import ProgressReporter, read_metrics
from medsft_pipelines.storage.shards import DatasetReader
from medsft_pipelines.termination import reports_failure
from medsft_pipelines.tracking import open_tracker

log = logging.getLogger("medsft.sft")

WORK_DIR_ENV = "MEDSFT_WORK_DIR"
"""Node-local scratch (checkpoints before upload, the downloaded model); a volume in pods."""
CACHE_ENV = "MEDSFT_CACHE"
ATTEMPT_ENV = "MEDSFT_ATTEMPT"
"""The operator's attempt number of this training job (0 first), reported in the summary."""
SAMPLE_IDS_ENV = "MEDSFT_METRICS_SAMPLE_IDS"
"""Set to 1 to add each logged step's sample ids (rank by rank) to its metrics record: an
audit of what the model saw (ids only, never content; a big dataset makes big metrics)."""


# == setup ======================================================================================


def node_work_dir(config: SFTJobConfig) -> Path:
    """Scratch folder of this job on this node, distinct per output location."""
    root = os.environ.get(WORK_DIR_ENV)
    if root:
        return Path(root)
    digest = hashlib.sha256(config.output_uri.encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "medsft-sft" / f"{config.run.name}-{digest}"


def fetch_model(uri: str, topo: Topology, settings: StorageSettings) -> Path:
    """A local folder holding the model at ``uri`` (downloaded once per node)."""
    if not is_remote(uri):
        return local_path(uri)
    cache = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "medsft")) / "models"
    path: list[Path | None] = [None]
    if topo.local_rank == 0:
        path = [download_model(uri, cache, settings)]
    dist.barrier()  # rank-local: the other ranks of this node wait for the download
    if topo.local_rank != 0:
        path = [download_model(uri, cache, settings)]  # cached by now: returns at once
    assert path[0] is not None
    return path[0]


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in backward (non-reentrant: works with ZeRO-3 and frozen parts)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer transformers name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_model(
    model_dir: Path, spec: SFTSpec, device: torch.device, ds_config: dict[str, Any]
) -> torch.nn.Module:
    """The model in training dtype, with gradient checkpointing and frozen parts applied.

    Under ZeRO-3 the weights are loaded straight into their shards (``deepspeed.zero.Init``
    through transformers' ``HfDeepSpeedConfig``), so no rank ever holds the full model.
    """
    zero3 = None
    if ds_config["zero_optimization"]["stage"] == 3:
        from transformers.integrations import HfDeepSpeedConfig

        zero3 = HfDeepSpeedConfig(ds_config)  # must stay alive during from_pretrained
    on_gpu = device.type == "cuda"
    dtype = torch.float32
    if on_gpu:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.training.precision, dtype)
    attn = choose_attention(device, dtype, spec.training.packing)
    log.info(
        "attention kernel: %s (%s)", attn,
        "varlen_attn on packed-sample offsets, no mask" if attn == VARLEN
        else "SDPA, block-diagonal mask for packed rows" if spec.training.packing
        else "SDPA, padding mask",
    )  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=attn
    )
    del zero3
    model.config.use_cache = False
    if spec.training.gradient_checkpointing:
        enable_checkpointing(model)
    if spec.model.freeze_vision_tower:
        for param in model.model.visual.parameters():
            param.requires_grad_(False)
    return model


# == data =======================================================================================


def dataset_store(config: SFTJobConfig, settings: StorageSettings) -> ObjectStore:
    """The dataset root: the folder of the manifest URI."""
    manifest_uri = config.dataset_manifest_uri.rstrip("/")
    root = manifest_uri.rsplit("/", 1)[0] if manifest_uri.endswith(".json") else manifest_uri
    return open_store(root, settings)


# == optimisation ===============================================================================


def build_engine(
    model: torch.nn.Module, spec: SFTSpec, ds_config: dict[str, Any], total_steps: int
) -> Any:
    """The DeepSpeed engine with AdamW and the warmup + decay schedule of the spec."""
    t = spec.training
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if uses_client_optimizer(spec):
        optimizer = torch.optim.AdamW(
            params,
            lr=t.learning_rate,
            weight_decay=t.weight_decay,
            fused=torch.cuda.is_available(),
        )

    def schedule(opt: torch.optim.Optimizer) -> Any:
        return get_scheduler(
            {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[
                t.scheduler
            ],
            opt,
            num_warmup_steps=math.ceil(t.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        model_parameters=params,
        lr_scheduler=schedule,
        config=ds_config,
    )
    return engine


def train_step(
    engine: Any,
    batches: list[Collated | None],
    filler: Collated,
    world_size: int,
    device: torch.device,
) -> dict[str, float]:
    """One optimiser step over this rank's micro-batches; returns the global step metrics.

    The loss is the mean over every assistant token of the step, across micro-batches and
    ranks (token-weighted, so packing and batch composition do not change it). DeepSpeed
    averages gradients over ranks, hence the ``world_size`` factor. A None micro-batch (the
    rank's data of the epoch ran out, see :func:`.steps.optimizer_steps`) runs ``filler`` with a
    zero weight: the same modules in the same order as the other ranks, no gradient.
    """
    real = [c for c in batches if c is not None]
    local = [
        sum(c.target_tokens for c in real),
        sum(c.real_tokens for c in real),
        sum(c.padded_tokens for c in real),
        sum(len(c.sample_ids) for c in real),
        sum(c.rows for c in real),
    ]
    targets, tokens, padded, samples, rows = all_reduce_sum(local, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        # The step ends with the last micro-batch, however many this step has (it varies
        # with batchUnit: samples); DeepSpeed's own count assumes a fixed number.
        engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
        weight = world_size / max(targets, 1) if batch is not None else 0.0
        batch = batch if batch is not None else filler
        keep, labels = shifted_targets(batch.labels)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.inputs.items()}
        out = engine(**inputs, logits_to_keep=keep.to(device), use_cache=False)
        ce = F.cross_entropy(out.logits.float(), labels.to(device), reduction="sum")
        engine.backward(ce * weight, scale_wrt_gas=False)
        engine.step()
        if weight:
            loss_sum += ce.detach().double()
    dist.all_reduce(loss_sum)
    grad_norm = engine.get_global_grad_norm()
    return {
        "loss": loss_sum.item() / max(targets, 1),
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "target_tokens": targets,
        "tokens": tokens,
        "padded_tokens": padded,
        "samples": samples,
        "rows": rows,
    }


# == the job ====================================================================================


@dataclass
class Job:
    """What the loop needs, built by :func:`setup`."""

    config: SFTJobConfig
    topo: Topology
    device: torch.device
    engine: Any
    processor: Any
    stream: MicroBatchStream
    encoder: ExampleEncoder
    plan: BatchPlan
    grad_accum: int
    output: ObjectStore
    telemetry: ObjectStore
    checkpoints: Checkpoints
    model_dir: Path
    flops: FlopsModel
    rope_index: Any
    """The model's 3-D rope position function, used to build packed position ids."""
    steps_in_epoch: StepPlan
    """The agreed step plan (see :func:`.steps.plan_steps`)."""


def setup(config: SFTJobConfig) -> tuple[Job, TrainState]:
    """Everything before the first step: process group, storage, model, data, optimiser, resume."""
    topo, device = init_distributed()
    spec, t = config.spec, config.spec.training
    # Fail before any heavy work when the batch configuration cannot be honoured.
    grad_accum = check_batch_divisible(t, topo.world_size)
    settings = StorageSettings.for_spec(config.storage)
    output = open_store(config.output_uri, settings)
    telemetry = open_store(config.effective_progress_uri(), settings)
    work = node_work_dir(config)

    model_dir = fetch_model(config.model_uri, topo, settings)
    check_model_dir(model_dir)
    processor_dir = model_dir
    if spec.model.processor_uri:
        processor_dir = fetch_model(spec.model.processor_uri, topo, settings)
    processor = load_processor(processor_dir)
    reader = DatasetReader(dataset_store(config, settings))

    encoder = ExampleEncoder(processor, t.max_seq_length, t.overlong)
    # batchUnit: samples with packing: a step is globalBatchSize samples, each rank packing
    # its equal share into rows; the packing window is that share, one window a step.
    # Without packing a row is a sample, and the units agree.
    per_step = t.batch_unit == "samples" and t.packing
    plan = BatchPlan(
        micro_batch_size=t.micro_batch_size,
        max_seq_length=t.max_seq_length,
        packing=t.packing,
        length_grouping=t.length_grouping,
        overlong=t.overlong,
        **({"chunk_samples": t.global_batch_size // topo.world_size} if per_step else {}),
    )
    started = time.perf_counter()
    lengths = SampleLengths.measure(reader, encoder, topo.rank, topo.world_size, gather_objects)

    def source(epoch: int, start: int) -> Iterator[dict[str, Any]]:
        return reader.iter_samples(t.seed, epoch, topo.rank, topo.world_size, start)

    def rank_lengths(epoch: int) -> list[int]:
        return lengths.lookup(*reader.sample_order(t.seed, epoch, topo.rank, topo.world_size))

    stream = MicroBatchStream(source, encoder, plan, t.seed, rank_lengths)
    steps_in_epoch = plan_steps(
        stream, grad_accum, lambda v: all_reduce_max(v, device), per_window=per_step
    )
    if t.max_steps is not None:
        total_steps = t.max_steps
    else:
        total_steps = sum(steps_in_epoch(epoch) for epoch in range(t.epochs))
    log.info(
        "step plan: %d optimiser steps (%s) in %.1f s",
        total_steps,
        "maxSteps" if t.max_steps is not None else
        f"{t.epochs} epochs of {[steps_in_epoch(e) for e in range(t.epochs)]} steps",
        time.perf_counter() - started,
    )  # fmt: skip

    ds_config = deepspeed_config(
        spec, world_size=topo.world_size, grad_accum_steps=grad_accum, on_gpu=device.type == "cuda"
    )
    model = load_model(model_dir, spec, device, ds_config)
    engine = build_engine(model, spec, ds_config, total_steps)
    flops = FlopsModel.of(model)

    checkpoints = Checkpoints(output, work / "checkpoints", topo, spec.checkpointing.keep_last)
    state = TrainState(total_steps=total_steps)
    if spec.checkpointing.resume and (step := checkpoints.latest()) is not None:
        state = checkpoints.load(engine, step)
        encoder.stats = state.stats.copy()
        log.info("resumed from checkpoint step %d (%s)", step, state.position)
    job = Job(
        config=config,
        topo=topo,
        device=device,
        engine=engine,
        processor=processor,
        stream=stream,
        encoder=encoder,
        plan=plan,
        grad_accum=grad_accum,
        output=output,
        telemetry=telemetry,
        checkpoints=checkpoints,
        model_dir=model_dir,
        flops=flops,
        rope_index=engine.module.model.get_rope_index,
        steps_in_epoch=steps_in_epoch,
    )
    return job, state


def make_collator(job: Job) -> Callable[[MicroBatch], Collated | None]:
    """Micro-batch -> model inputs (None for one whose every sample the encoder dropped)."""
    pad_id = job.processor.tokenizer.pad_token_id
    filler = job.encoder.vision_filler()
    flatten = job.plan.packing and flattens_packed_rows(attention_kernel(job.engine.module))

    def make(batch: MicroBatch) -> Collated | None:
        if not batch.rows:
            return None
        return collate(
            batch.rows, pad_id, job.rope_index, job.plan.packing, filler, job.encoder.pixels,
            flatten=flatten,
        )  # fmt: skip

    return make


def attention_kernel(model: torch.nn.Module) -> str:
    """The ``attn_implementation`` the model runs (see :mod:`.attention`)."""
    return str(getattr(model.config, "_attn_implementation", ""))


def idle_batch(job: Job) -> Collated:
    """What a rank without a micro-batch runs (at zero weight): the vision filler with one
    target token, so the forward and backward touch the same modules as everyone else's."""
    filler = job.encoder.vision_filler()
    filler.labels = filler.labels.clone()
    filler.labels[-1] = filler.input_ids[-1]
    pad_id = job.processor.tokenizer.pad_token_id
    return collate(
        [[filler]], pad_id, job.rope_index, job.plan.packing, None, job.encoder.pixels,
        flatten=job.plan.packing and flattens_packed_rows(attention_kernel(job.engine.module)),
    )  # fmt: skip


def run(config: SFTJobConfig) -> dict[str, Any]:
    """Train according to ``config``; returns the run summary (rank 0's view)."""
    job, state = setup(config)
    t, topo = config.spec.training, job.topo
    is_main = topo.rank == 0
    # Rank 0 alone reports, to storage and (spec.tracking) to MLflow, never waiting for it.
    progress = (
        ProgressReporter(
            job.telemetry,
            PROGRESS_STAGE,
            tracker=open_tracker(
                config.tracking, config.run, PROGRESS_STAGE, config.spec.to_wire()
            ),
        )
        if is_main
        else None
    )
    if progress:
        # An attempt that dies (a lost peer, a failed collective) keeps the metrics it logged
        # since the last throttled flush; the next attempt's records follow them.
        atexit.register(progress.flush)
    peak = peak_flops(job.device)
    make = make_collator(job)
    bar = tqdm(
        total=state.total_steps, initial=state.step, desc="sft", disable=not is_main,
        dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
    )  # fmt: skip
    every = config.spec.checkpointing.every_steps
    last_saved = state.resumed_from

    def counts() -> dict[str, int]:
        return dict(job.encoder.stats.__dict__)

    steps = optimizer_steps(
        job.stream, make, state.position,
        None if t.max_steps is not None else t.epochs, job.steps_in_epoch.epoch,
    )  # fmt: skip
    idle = idle_batch(job)
    record_ids = os.environ.get(SAMPLE_IDS_ENV) == "1"

    # == the loop ===============================================================================
    for position, items in steps if state.step < state.total_steps else ():
        batches = [item[1] if item is not None else None for item in items]
        lr = job.engine.get_lr()[0]
        started = time.perf_counter()
        metrics = train_step(job.engine, batches, idle, topo.world_size, job.device)
        elapsed = time.perf_counter() - started
        state.step += 1
        state.position = position
        real = [(mb, c) for mb, c in (i for i in items if i is not None)]
        if real:
            state.stats = real[-1][0].resume_stats

        if state.step % t.log_every_steps == 0 or state.step == state.total_steps:
            fingerprint, ids = batch_fingerprint([i for _, c in real if c for i in c.sample_ids])
            examples = [ex for mb, _ in real for row in mb.rows for ex in row]
            sum_sq, patches = all_reduce_sum(
                [
                    float(sum(ex.length**2 for ex in examples)),
                    float(
                        sum(
                            int(c.inputs["image_grid_thw"].prod(-1).sum())
                            for _, c in real
                            if c is not None and "image_grid_thw" in c.inputs
                        )
                    ),
                ],
                job.device,
            )
            flops = job.flops.step(metrics["tokens"], sum_sq, patches)
            record = {
                **metrics,
                "epoch": state.position.epoch,
                "lr": lr,
                "step_time_s": elapsed,
                "tokens_per_s": metrics["tokens"] / elapsed,
                "tokens_per_s_per_gpu": metrics["tokens"] / elapsed / topo.world_size,
                "padding_fraction": 1 - metrics["tokens"] / metrics["padded_tokens"],
                "mfu": flops / elapsed / (peak * topo.world_size) if peak else None,
                "batch_fingerprint": fingerprint,
            }
            if record_ids:
                record["sample_ids"] = ids
            if progress:
                progress.log_metrics(record, step=state.step)
                progress.update(
                    step=state.step, total=state.total_steps, counts=counts(),
                    epoch=state.position.epoch, loss=metrics["loss"],
                )  # fmt: skip
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}")
        bar.update(1)

        # == checkpoint =========================================================================
        if state.step % every == 0 and state.step < state.total_steps:
            if progress:
                progress.flush()  # the metrics of every step a resume will not redo are stored
            job.checkpoints.save(job.engine, state, metadata={"epoch": state.position.epoch})
            last_saved = state.step
        if state.step == state.total_steps:
            break

    steps.close()
    bar.close()
    if state.step != state.total_steps:
        raise AssertionError(
            f"the data ended after {state.step} of {state.total_steps} planned steps"
        )
    if last_saved != state.step:
        job.checkpoints.save(
            job.engine, state, metadata={"epoch": state.position.epoch, "final": True}
        )
    job.checkpoints.close()

    # == export =================================================================================
    summary = export(job, state, counts())
    if progress:
        progress.update(
            step=state.step, total=state.total_steps, counts=counts(), force=True, phase="done"
        )
        progress.flush()
        plot = plot_loss_curve(read_metrics(job.telemetry), node_work_dir(config) / LOSS_CURVE)
        job.output.upload_file(plot, LOSS_CURVE)
        job.output.put_json(SUMMARY, summary)
        if progress.tracker is not None:
            progress.tracker.log_artifact(plot)
            # The model by reference: its URI in storage, never the weights.
            progress.tracker.set_tags({"medsft.sft.modelUri": job.output.uri_of(FINAL_MODEL)})
            progress.close_tracker()
    dist.barrier()
    return summary


def export(job: Job, state: TrainState, counts: dict[str, int]) -> dict[str, Any]:
    """Save the trained model in Hugging Face format (safetensors + processor) to storage."""
    engine = job.engine
    if engine.zero_optimization_stage() == 3:
        state_dict = engine._zero3_consolidated_16bit_state_dict()  # collective: every rank
    else:
        state_dict = engine.module.state_dict() if job.topo.rank == 0 else None
    summary = {
        "steps": state.step,
        "total_steps_planned": state.total_steps,
        "epochs_completed": state.position.epoch
        + (state.position.step >= job.steps_in_epoch(state.position.epoch)),
        "final_lr": engine.get_lr()[0],
        "steps_per_epoch": (
            [job.steps_in_epoch(e) for e in range(job.config.spec.training.epochs)]
            if job.config.spec.training.max_steps is None
            else None
        ),
        "resumed_from": state.resumed_from,
        "attempt": int(os.environ.get(ATTEMPT_ENV, "0")),
        "counts": counts,
        "model_uri": job.config.model_uri,
        "dataset_manifest_uri": job.config.dataset_manifest_uri,
        "spec_hash": job.config.run.spec_hash,
        "attention_kernel": attention_kernel(engine.module),
    }
    if job.topo.rank == 0:
        local = node_work_dir(job.config) / "export"
        engine.module.save_pretrained(local, state_dict=state_dict, safe_serialization=True)
        save_processor(job.processor, local)
        upload_export(local, job.output.child(FINAL_MODEL), summary)
        log.info("exported the final model to %s", job.output.uri_of(FINAL_MODEL))
    dist.barrier()
    return summary


# == entry point ================================================================================


def main(argv: list[str] | None = None) -> int:
    """``medsft-train --config <job config>``."""
    parser = argparse.ArgumentParser(prog="medsft-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path, help="SFTJobConfig YAML/JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_job_config(args.config)
    if not isinstance(config, SFTJobConfig):
        parser.error(f"{args.config} is a {config.kind}, not an SFTJobConfig")
    try:
        with reports_failure():  # the pod's status keeps why (see medsft_pipelines.termination)
            summary = run(config)
    except (ValueError, StorageError) as exc:
        # Bad input (batch configuration, model files, dataset checksums...): one clear line.
        log.error("medsft-train failed: %s: %s", type(exc).__name__, exc)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
