"""Status models of the four kinds (written by the operator through the status subresource)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from medsft_operator.api.k8s import Phase, StatusBase
from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import Distribution

Count = Annotated[int, Field(ge=0)]
Uri = Annotated[str, Field(max_length=2048)]
Name = Annotated[str, Field(max_length=253)]


class CurationJobStatus(StatusBase):
    """Progress and results of a curation run."""

    workers_succeeded: Count | None = None
    """Workers that finished their slice."""
    workers_failed: Count | None = None
    """Worker pod failures so far."""
    input_rows: Count | None = None
    """Rows read from all sources."""
    questions: Count | None = None
    """Unique questions in the final dataset."""
    traces_generated: Count | None = None
    """Teacher traces generated (or imported)."""
    traces_accepted: Count | None = None
    """Traces whose final answer was verified correct."""
    kept_samples: Count | None = None
    """Samples in the final dataset."""
    images: Count | None = None
    """Unique images in the final dataset."""
    total_tokens: Count | None = None
    """Tokens of the final dataset (prompt, images and response)."""
    response_tokens: Count | None = None
    """Response (trace + answer) tokens of the final dataset."""
    teacher_attempts: Count | None = None
    """HTTP attempts sent to the teachers (retries and timed-out attempts included)."""
    teacher_cache_hits: Count | None = None
    """Questions answered from the teacher response cache, without a request."""
    teacher_cache_misses: Count | None = None
    """Questions that needed at least one teacher request."""
    removed: Annotated[
        dict[Annotated[str, Field(max_length=128)], Count], Field(max_length=64)
    ] = {}
    """Samples removed, by reason (duplicate, contaminated:<benchmark>, overlong, quarantined, ...)."""
    shards: Count | None = None
    """Parquet shards written."""
    manifest_uri: Uri | None = None
    """URI of the dataset manifest (present once the dataset is complete)."""
    report_uri: Uri | None = None
    """URI of the curation report (JSON; Markdown and plots next to it)."""
    job_name: Name | None = None
    """Name of the batch Job running the workers."""


class SFTJobStatus(StatusBase):
    """Progress and results of a training run."""

    step: Count | None = None
    """Optimiser steps done."""
    total_steps: Count | None = None
    """Optimiser steps planned."""
    epoch: Annotated[float, Field(ge=0)] | None = None
    """Epochs done (fractional)."""
    loss: float | None = None
    """Latest training loss."""
    learning_rate: float | None = None
    """Latest learning rate."""
    tokens_per_second: Annotated[float, Field(ge=0)] | None = None
    """Recent training throughput across all GPUs."""
    latest_checkpoint_uri: Uri | None = None
    """Newest complete checkpoint (resume point)."""
    model_uri: Uri | None = None
    """Final exported model (Hugging Face format), once training succeeded."""
    restarts: Count | None = None
    """Times the training job was restarted (each resumes from the latest checkpoint)."""
    pytorch_job_name: Name | None = None
    """Name of the PyTorchJob doing the training (backend ``PyTorchJob``)."""
    train_job_name: Name | None = None
    """Name of the TrainJob doing the training (backend ``TrainJob``)."""


class BenchmarkResult(Spec):
    """Score of one benchmark."""

    name: Annotated[str, Field(max_length=63)]
    """Benchmark name."""
    distribution: Distribution | None = None
    """In- or out-of-distribution."""
    accuracy: Annotated[float, Field(ge=0, le=1)]
    """Accuracy, mean over seeds."""
    accuracy_std: Annotated[float, Field(ge=0)] | None = None
    """Standard deviation of the accuracy over seeds."""
    items: Count | None = None
    """Items evaluated."""
    mean_response_tokens: Annotated[float, Field(ge=0)] | None = None
    """Mean response length in tokens (the paper's Fig. 8 view)."""
    baseline_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    """The baseline model's accuracy, when a baseline is configured."""


class EvalJobStatus(StatusBase):
    """Progress and results of an evaluation."""

    results: Annotated[list[BenchmarkResult], Field(max_length=64)] = []
    """Per-benchmark scores."""
    mean_accuracy: Annotated[float, Field(ge=0, le=1)] | None = None
    """Mean accuracy over all benchmarks."""
    mean_accuracy_in: Annotated[float, Field(ge=0, le=1)] | None = None
    """Mean accuracy over in-distribution benchmarks."""
    mean_accuracy_out: Annotated[float, Field(ge=0, le=1)] | None = None
    """Mean accuracy over out-of-distribution benchmarks."""
    mean_accuracy_text: Annotated[float, Field(ge=0, le=1)] | None = None
    """Mean accuracy over the text benchmarks (the paper's first group)."""
    mean_accuracy_multimodal: Annotated[float, Field(ge=0, le=1)] | None = None
    """Mean accuracy over the multimodal reasoning benchmarks (the paper's second group)."""
    mean_accuracy_classification: Annotated[float, Field(ge=0, le=1)] | None = None
    """Mean accuracy over the image classification benchmarks (the paper's third group)."""
    report_uri: Uri | None = None
    """URI of the evaluation report (JSON; Markdown and plots next to it)."""
    job_name: Name | None = None
    """Name of the batch Job running the evaluation."""


Stage = Literal["Curation", "SFT", "Eval", "Done"]


class GenerationRecord(Spec):
    """One generation of a MedSFTRun: the children it used and the scores it got."""

    generation: Annotated[int, Field(ge=1)]
    """Generation number (1, 2, ...)."""
    spec_hash: Annotated[str, Field(max_length=128)] | None = None
    """Hash of the run spec this generation was started from."""
    phase: Phase | None = None
    """Outcome of the generation."""
    curation_job: Name | None = None
    """CurationJob used (possibly reused from an earlier generation)."""
    sft_job: Name | None = None
    """SFTJob used (possibly reused from an earlier generation)."""
    eval_job: Name | None = None
    """EvalJob used."""
    model_uri: Uri | None = None
    """Model this generation produced."""
    scores: Annotated[
        dict[Annotated[str, Field(max_length=128)], float], Field(max_length=128)
    ] = {}
    """Accuracy per benchmark, plus ``mean``, ``mean.in`` and ``mean.out``."""
    eval_settings: Annotated[
        dict[Annotated[str, Field(max_length=128)], Annotated[str, Field(max_length=64)]],
        Field(max_length=64),
    ] = {}
    """Per benchmark, a key of how it was evaluated; the gate compares only equal keys."""
    promoted: bool | None = None
    """Whether the generation passed the promotion thresholds."""
    tracking_run_id: Annotated[str, Field(max_length=64)] | None = None
    """The generation's MLflow run (``spec.tracking``)."""
    start_time: datetime | None = None
    """When the generation started."""
    completion_time: datetime | None = None
    """When it finished."""


class MedSFTRunStatus(StatusBase):
    """Where a run stands, and what earlier generations scored."""

    current_generation: Annotated[int, Field(ge=0)] | None = None
    """Generation being worked on (or the last one finished)."""
    stage: Stage | None = None
    """Stage of the current generation."""
    score: float | None = None
    """Key score of the current generation (mean accuracy over its benchmarks)."""
    promoted_generation: Annotated[int, Field(ge=1)] | None = None
    """The newest generation that passed the promotion thresholds."""
    promoted_model_uri: Uri | None = None
    """Model of the promoted generation."""
    history: Annotated[list[GenerationRecord], Field(max_length=1000)] = []
    """Generations, newest first, up to ``retraining.historyLimit``."""
