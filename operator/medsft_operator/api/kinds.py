"""The four custom resources: CurationJob, SFTJob, EvalJob and MedSFTRun.

Each stage kind's spec is the pure-data spec of its stage (``medsft_pipelines.specs``)
plus :class:`StageRuntime` (image, resources, scheduling, retries, storage). Cross-field
rules are CEL ``x-kubernetes-validations`` checked by the apiserver and mirrored by
pydantic validators, so ``medsft validate`` rejects what ``kubectl apply`` rejects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import Field, model_validator

from medsft_operator.api.k8s import Image, Quantity, Resource, StageRuntime
from medsft_operator.api.status import (
    CurationJobStatus,
    EvalJobStatus,
    MedSFTRunStatus,
    SFTJobStatus,
)
from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import (
    K8sName,
    ObjectRef,
    OneOf,
    StorageSpec,
    cel,
    k8s_rules,
    one_of_rule,
    rules_of,
)
from medsft_pipelines.specs.curation import CurationSpec
from medsft_pipelines.specs.eval import BENCHMARK_NAMES, EvalSpec
from medsft_pipelines.specs.sft import SFTSpec, check_batch_divisible
from medsft_pipelines.specs.tracking import TrackingSpec

CATEGORY = "medsft"
SFTBackend = Literal["PyTorchJob", "TrainJob"]


def immutable(field_name: str, *, optional: bool = False) -> dict:
    """A CEL transition rule that rejects any change of ``field_name`` after creation."""
    if optional:
        rule = (
            f"has(self.{field_name}) == has(oldSelf.{field_name}) && "
            f"(!has(self.{field_name}) || self.{field_name} == oldSelf.{field_name})"
        )
    else:
        rule = f"self.{field_name} == oldSelf.{field_name}"
    return cel(
        rule,
        f"{field_name} is immutable: create a new resource (or edit the MedSFTRun, "
        "which starts a new generation)",
        field_path=f".{field_name}",
        reason="FieldValueForbidden",
    )


_STANDALONE = "for a standalone resource (only a MedSFTRun fills it in)"


def required(field_name: str, why: str) -> dict:
    """A CEL rule requiring an optional-in-general field in this context."""
    return cel(
        f"has(self.{field_name})",
        f"{field_name} is required {why}",
        field_path=f".{field_name}",
        reason="FieldValueRequired",
    )


class Standalone(Spec):
    """The spec of a standalone stage resource: the field ``standalone_requires`` names, which
    only a MedSFTRun may leave out (it fills it in), is required. The apiserver checks it with
    :func:`standalone_rule`, which the subclass puts in its ``model_config``."""

    standalone_requires: ClassVar[str]

    @model_validator(mode="after")
    def _standalone(self) -> Self:
        if getattr(self, self.standalone_requires) is None:
            raise ValueError(f"{self.standalone_requires} is required {_STANDALONE}")
        return self


def standalone_rule(field_name: str) -> dict:
    return required(field_name, _STANDALONE)


GPU = "nvidia.com/gpu"


def gpu_rules(count_field: str) -> list[dict]:
    """CEL rules: a stage's own ``nvidia.com/gpu`` request or limit, when set, equals its GPU
    count ``count_field`` (torchrun and vLLM start one process or shard per counted GPU: more
    processes than GPUs fail at start, fewer leave GPUs idle)."""
    return [
        cel(
            f"!has(self.resources) || !has(self.resources.{part}) || "
            f"!('{GPU}' in self.resources.{part}) || "
            f"string(self.resources.{part}['{GPU}']) == string(self.{count_field})",
            f"resources.{part}.{GPU} must equal {count_field} (or be left out: "
            f"{count_field} sets it)",
            field_path=f".resources.{part}",
        )
        for part in ("limits", "requests")
    ]


def check_gpus(runtime: StageRuntime, count: int, count_field: str) -> None:
    """The pydantic mirror of :func:`gpu_rules` (compared as the CEL rule compares)."""
    for part in ("limits", "requests"):
        value = getattr(runtime.resources, part).get(GPU)
        if value is not None and str(value) != str(count):
            raise ValueError(
                f"resources.{part}.{GPU} must equal {count_field} (or be left out: "
                f"{count_field} sets it); got {value!r} with {count_field} {count}"
            )


# --------------------------------------------------------------------------- stage specs


class CurationStageSpec(StageRuntime, CurationSpec):
    """A curation stage: the data recipe and how its workers run."""

    workers: Annotated[int, Field(ge=1, le=1024)] = 1
    """Parallel worker pods (an Indexed Job); each takes a deterministic slice of the input."""

    model_config = k8s_rules(*rules_of(CurationSpec))


class SFTStageSpec(StageRuntime, SFTSpec):
    """An SFT stage: the training recipe and the GPUs it runs on."""

    nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    """Nodes of the training job (PyTorchJob: 1 Master + nodes-1 Workers; TrainJob: numNodes)."""
    gpus_per_node: Annotated[int, Field(ge=1, le=16)] = 1
    """GPUs per node (torchrun's nproc-per-node)."""
    shm_size: Quantity = "16Gi"
    """Size of the memory-backed ``/dev/shm`` of each pod (NCCL and data loaders need it)."""
    backend: SFTBackend | None = None
    """What runs the training: ``PyTorchJob`` (Kubeflow training-operator v1) or
    ``TrainJob`` (Kubeflow Trainer v2, a JobSet); unset: the operator's default
    (Helm value ``sft.defaultBackend``, itself ``PyTorchJob`` unless changed)."""
    training_runtime: K8sName | None = None
    """ClusterTrainingRuntime a ``TrainJob`` references; unset: the one the chart installs
    (Helm value ``sft.trainingRuntime.name``)."""

    model_config = k8s_rules(
        *rules_of(SFTSpec),
        cel(
            "self.training.globalBatchSize % "
            "(self.training.microBatchSize * self.nodes * self.gpusPerNode) == 0",
            "training.globalBatchSize must be divisible by "
            "training.microBatchSize x nodes x gpusPerNode",
            field_path=".training.globalBatchSize",
        ),
        *gpu_rules("gpusPerNode"),
    )

    @model_validator(mode="after")
    def _gpus_agree(self) -> SFTStageSpec:
        check_gpus(self, self.gpus_per_node, "gpusPerNode")
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> SFTStageSpec:
        try:
            check_batch_divisible(self.training, self.nodes * self.gpus_per_node)
        except ValueError as exc:
            raise ValueError(f"training.globalBatchSize: {exc}") from None
        return self


class EvalStageSpec(StageRuntime, EvalSpec):
    """An evaluation stage: benchmarks, generation settings and the GPUs it runs on."""

    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs of the evaluation pod (0: CPU, transformers backend only)."""

    model_config = k8s_rules(
        *rules_of(EvalSpec),
        cel(
            "self.gpus > 0 || self.generation.backend != 'vllm'",
            "generation.backend vllm needs gpus > 0",
            field_path=".generation.backend",
        ),
        *gpu_rules("gpus"),
    )

    @model_validator(mode="after")
    def _gpus_agree(self) -> EvalStageSpec:
        check_gpus(self, self.gpus, "gpus")
        return self

    @model_validator(mode="after")
    def _vllm_needs_gpu(self) -> EvalStageSpec:
        if self.gpus == 0 and self.generation.backend == "vllm":
            raise ValueError("generation.backend vllm needs gpus > 0")
        return self


class CurationJobSpec(Standalone, CurationStageSpec):
    """Spec of a standalone CurationJob."""

    standalone_requires = "processor"
    model_config = k8s_rules(
        *rules_of(CurationStageSpec),
        standalone_rule(standalone_requires),
        *(
            immutable(name)
            for name in (
                *("sources", "verification", "format", "lengths", "dedup", "decontamination"),
                *("images", "sharding", "seed", "output", "workers"),
            )
        ),
        *(immutable(name, optional=True) for name in ("teachers", "tracesFrom", "processor")),
    )


class SFTJobSpec(Standalone, SFTStageSpec):
    """Spec of a standalone SFTJob."""

    standalone_requires = "dataset"
    model_config = k8s_rules(
        *rules_of(SFTStageSpec),
        standalone_rule(standalone_requires),
        *(immutable(name) for name in ("model", "training", "deepspeed", "nodes", "gpusPerNode")),
        *(immutable(name, optional=True) for name in ("dataset", "outputUri")),
    )


class EvalJobSpec(Standalone, EvalStageSpec):
    """Spec of a standalone EvalJob."""

    standalone_requires = "model"
    model_config = k8s_rules(
        *rules_of(EvalStageSpec),
        standalone_rule(standalone_requires),
        *(immutable(name) for name in ("benchmarks", "generation")),
        *(immutable(name, optional=True) for name in ("model", "baseline")),
    )


# ------------------------------------------------------------------------ MedSFTRun spec


def _one_of_ref_or_spec(what: str) -> dict:
    return one_of_rule(
        ("ref", "spec"),
        f"exactly one of ref (an existing {what}) or spec (an inline one) must be set",
    )


class CurationStage(OneOf):
    """The run's curation stage: inline, or an existing CurationJob."""

    ref: ObjectRef | None = None
    """Use the output of an existing CurationJob."""
    spec: CurationStageSpec | None = None
    """Curate with this recipe; a CurationJob is created per generation (reused while unchanged)."""

    one_of = ("ref", "spec")
    model_config = k8s_rules(_one_of_ref_or_spec("CurationJob"))


class SFTStage(OneOf):
    """The run's training stage: inline, or an existing SFTJob."""

    ref: ObjectRef | None = None
    """Use the model of an existing SFTJob."""
    spec: SFTStageSpec | None = None
    """Train with this recipe; an SFTJob is created per generation (reused while unchanged)."""

    one_of = ("ref", "spec")
    model_config = k8s_rules(_one_of_ref_or_spec("SFTJob"))


class EvalStage(OneOf):
    """The run's evaluation stage (always evaluates the run's own SFT model)."""

    ref: ObjectRef | None = None
    """Report the results of an existing EvalJob."""
    spec: EvalStageSpec | None = None
    """Evaluate with these settings; an EvalJob is created per generation."""

    one_of = ("ref", "spec")
    model_config = k8s_rules(_one_of_ref_or_spec("EvalJob"))


class RetrainingSpec(Spec):
    """When an edited spec starts a new generation (GitOps retraining)."""

    policy: Literal["OnSpecChange", "Manual"] = "OnSpecChange"
    """``OnSpecChange``: every spec change starts a new generation; ``Manual``: only a change of ``trigger`` does."""
    trigger: Annotated[str, Field(max_length=253)] | None = None
    """Any value; changing it starts a new generation (under either policy)."""
    history_limit: Annotated[int, Field(ge=1, le=1000)] = 10
    """Generations kept in ``status.history`` (children of older generations are deleted)."""


#: Scores every evaluation reports besides one accuracy per benchmark (``fold.scores_of``).
MEAN_METRICS = (
    "mean",
    "mean.in",
    "mean.out",
    "mean.text",
    "mean.multimodal",
    "mean.classification",
)


class PromotionThreshold(Spec):
    """A minimum score a generation must reach to be promoted."""

    metric: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[a-z0-9][-_.a-z0-9]*$")]
    """``mean``, ``mean.<in|out|text|multimodal|classification>`` or a benchmark's accuracy."""
    min: Annotated[float, Field(ge=0, le=1)]
    """Minimum accuracy (0..1)."""


class PromotionSpec(Spec):
    """The gate that marks a generation's model as promoted."""

    thresholds: Annotated[list[PromotionThreshold], Field(min_length=1, max_length=64)]
    """Every threshold must be met."""
    must_beat_baseline: bool = False
    """Also require ``mean`` to exceed the eval baseline's mean accuracy."""
    must_beat_promoted: bool = False
    """Also beat the promoted generation: the mean over the benchmarks both evaluated alike."""


class MedSFTRunSpec(Spec):
    """A whole recipe: curate, fine-tune, evaluate; retrain on every spec change."""

    storage: StorageSpec | None = None
    """Where every artifact of the run goes; unset: the operator's default storage."""
    image: Image | None = None
    """Image of every stage (a stage's own ``image`` wins); must carry vLLM for a vLLM eval."""
    curation: CurationStage | None = None
    """Curation stage; unset when ``sft.spec.dataset`` names an existing dataset."""
    sft: SFTStage
    """Training stage."""
    eval: EvalStage | None = None
    """Evaluation stage; its benchmarks are also protected by curation's decontamination."""
    retraining: RetrainingSpec = RetrainingSpec()
    """When spec changes start a new generation."""
    promotion: PromotionSpec | None = None
    """Gate marking a generation's model as promoted (needs the eval stage)."""
    artifact_policy: Literal["Retain", "Delete"] = "Retain"
    """What happens to the run's storage prefix when the MedSFTRun is deleted."""
    tracking: TrackingSpec | None = None
    """Experiment tracking: each generation becomes one MLflow run (its stages log into it);
    unset: none. Never starts a generation."""

    model_config = k8s_rules(
        cel(
            "!has(self.sft.spec) || has(self.curation) != has(self.sft.spec.dataset)",
            "the SFT stage needs exactly one dataset: a curation stage or sft.spec.dataset",
            field_path=".sft",
        ),
        cel(
            "!has(self.sft.ref) || !has(self.curation)",
            "curation must be unset when sft.ref uses an existing SFTJob",
            field_path=".curation",
        ),
        cel(
            "!has(self.eval) || !has(self.eval.spec) || !has(self.eval.spec.model)",
            "eval.spec.model must be unset: a MedSFTRun evaluates its own SFT model",
            field_path=".eval",
        ),
        cel(
            "!has(self.promotion) || has(self.eval)",
            "promotion needs an eval stage",
            field_path=".promotion",
        ),
        cel(
            "!has(self.promotion) || !has(self.eval) || !has(self.eval.spec) || "
            "self.promotion.thresholds.all(t, t.metric in "
            + str(list(MEAN_METRICS))
            + " || self.eval.spec.benchmarks.exists(b, b.name == t.metric))",
            "promotion.thresholds[].metric must be "
            + ", ".join(MEAN_METRICS)
            + " or the name of a benchmark of eval.spec.benchmarks",
            field_path=".promotion.thresholds",
        ),
        immutable("storage", optional=True),
    )

    @model_validator(mode="after")
    def _stages_fit(self) -> MedSFTRunSpec:
        sft = self.sft.spec
        if sft is not None and (self.curation is None) == (sft.dataset is None):
            raise ValueError(
                "the SFT stage needs exactly one dataset: a curation stage or sft.spec.dataset"
            )
        if self.sft.ref is not None and self.curation is not None:
            raise ValueError("curation must be unset when sft.ref uses an existing SFTJob")
        if self.eval is not None and self.eval.spec is not None and self.eval.spec.model:
            raise ValueError(
                "eval.spec.model must be unset: a MedSFTRun evaluates its own SFT model"
            )
        if self.promotion is not None and self.eval is None:
            raise ValueError("promotion needs an eval stage")
        if self.promotion is not None and self.eval is not None:
            scored = self._scored_metrics()
            for threshold in self.promotion.thresholds:
                if threshold.metric not in scored:
                    raise ValueError(
                        f"promotion.thresholds[].metric {threshold.metric!r} is never scored; "
                        f"known: {', '.join(scored)}"
                    )
        return self

    def _scored_metrics(self) -> list[str]:
        """The scores the eval stage reports: the means and one accuracy per benchmark (an
        existing EvalJob's benchmarks are unknown here: any registry name)."""
        assert self.eval is not None
        if self.eval.spec is not None:
            names = list(dict.fromkeys(b.name for b in self.eval.spec.benchmarks))
        else:
            names = list(BENCHMARK_NAMES)
        return [*MEAN_METRICS, *names]


# ----------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry of ``kubectl get``."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    description: str
    priority: int = 0  # 1: only with ``kubectl get -o wide``

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


PHASE = PrinterColumn("Phase", ".status.phase", "string", "Lifecycle phase")
PROGRESS = PrinterColumn("Progress", ".status.progress", "string", "Progress of the current work")
AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since creation")
MESSAGE = PrinterColumn("Message", ".status.message", "string", "Current state", priority=1)
TRACKING = PrinterColumn(
    "Tracking", ".status.trackingUrl", "string", "The current generation's MLflow run", priority=1
)


@dataclass(frozen=True)
class KindInfo:
    """What the CRD says about a kind besides its schema."""

    plural: str
    short_names: list[str]
    columns: list[PrinterColumn]
    max_name_length: int
    categories: list[str] = field(default_factory=lambda: [CATEGORY])


class CurationJob(Resource):
    """A curation run: builds an SFT dataset of verified reasoning traces from medical sources
    and writes sharded, checksummed Parquet plus a manifest and a report to object storage."""

    kind: Literal["CurationJob"] = "CurationJob"
    """``CurationJob``."""
    spec: CurationJobSpec
    """Desired curation."""
    status: CurationJobStatus | None = None
    """Observed state, written by the operator."""

    info: ClassVar[KindInfo] = KindInfo(
        plural="curationjobs",
        short_names=["cj"],
        max_name_length=56,
        columns=[
            PHASE,
            PROGRESS,
            PrinterColumn("Samples", ".status.keptSamples", "integer", "Samples kept"),
            PrinterColumn("Tokens", ".status.totalTokens", "integer", "Tokens", priority=1),
            MESSAGE,
            AGE,
        ],
    )


class SFTJob(Resource):
    """A supervised fine-tuning run of a vision-language model with DeepSpeed, as a
    multi-node PyTorchJob; checkpoints to storage and resumes after any failure."""

    kind: Literal["SFTJob"] = "SFTJob"
    """``SFTJob``."""
    spec: SFTJobSpec
    """Desired training."""
    status: SFTJobStatus | None = None
    """Observed state, written by the operator."""

    info: ClassVar[KindInfo] = KindInfo(
        plural="sftjobs",
        short_names=["sft"],
        max_name_length=56,
        columns=[
            PHASE,
            PROGRESS,
            PrinterColumn("Loss", ".status.loss", "number", "Latest training loss"),
            PrinterColumn("Restarts", ".status.restarts", "integer", "Job restarts"),
            PrinterColumn("Tokens/s", ".status.tokensPerSecond", "number", "Throughput", 1),
            MESSAGE,
            AGE,
        ],
    )


class EvalJob(Resource):
    """An evaluation of a model on medical benchmarks, in and out of distribution, with
    accuracy and reasoning-length statistics per benchmark."""

    kind: Literal["EvalJob"] = "EvalJob"
    """``EvalJob``."""
    spec: EvalJobSpec
    """Desired evaluation."""
    status: EvalJobStatus | None = None
    """Observed state, written by the operator."""

    info: ClassVar[KindInfo] = KindInfo(
        plural="evaljobs",
        short_names=["ev"],
        max_name_length=56,
        columns=[
            PHASE,
            PROGRESS,
            PrinterColumn("Accuracy", ".status.meanAccuracy", "number", "Mean accuracy"),
            MESSAGE,
            AGE,
        ],
    )


class MedSFTRun(Resource):
    """A whole training recipe (curation, SFT, evaluation) kept up to date from git: every
    spec change starts a new generation that reuses the stages whose inputs did not change."""

    kind: Literal["MedSFTRun"] = "MedSFTRun"
    """``MedSFTRun``."""
    spec: MedSFTRunSpec
    """Desired run."""
    status: MedSFTRunStatus | None = None
    """Observed state, written by the operator."""

    info: ClassVar[KindInfo] = KindInfo(
        plural="medsftruns",
        short_names=["msr"],
        max_name_length=40,
        columns=[
            PrinterColumn("Gen", ".status.currentGeneration", "integer", "Current generation"),
            PrinterColumn("Stage", ".status.stage", "string", "Stage of the current generation"),
            PHASE,
            PROGRESS,
            PrinterColumn("Score", ".status.score", "number", "Mean accuracy of the generation"),
            PrinterColumn(
                "Promoted", ".status.promotedGeneration", "integer", "Promoted generation"
            ),
            TRACKING,
            MESSAGE,
            AGE,
        ],
    )


KINDS: tuple[type[Resource], ...] = (CurationJob, SFTJob, EvalJob, MedSFTRun)
