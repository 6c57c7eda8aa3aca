"""What a MedSFTRun's generation consists of: the effective spec and content hash of each stage.

Pure functions of the run's spec and the operator's defaults. A stage's hash covers only
what changes its *result* — the pure-data part of its spec (``CurationSpec``, ``SFTSpec``,
``EvalSpec``), its storage and the hashes of its inputs — and none of how its pods run
(image, resources, scheduling, retries, worker/node counts; see ``StageRuntime``). A new
generation reuses every stage whose hash it already has a child for.

Two effective-spec rules a user should know:

* curation's ``processor`` defaults to the SFT base model (tokens are counted with the
  processor of the model that trains on them);
* curation decontaminates against its own ``decontamination.benchmarks`` *and* every eval
  benchmark, by identity (name, split, uri, format) and whole (not ``maxItems``). Editing
  eval settings, or dropping or adding a benchmark that curation already protects, re-runs
  only eval; adding a benchmark curation did not protect re-runs curation too, because the
  old dataset was never checked against it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, TypeVar

from medsft_operator.api.hashing import canonical_json, spec_hash
from medsft_operator.api.kinds import (
    CurationStageSpec,
    EvalStageSpec,
    MedSFTRun,
    SFTStageSpec,
)
from medsft_operator.layout import StageName
from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import ObjectRef, StorageSpec
from medsft_pipelines.specs.curation import CurationSpec, ProcessorSpec
from medsft_pipelines.specs.eval import BenchmarkSpec, EvalSpec
from medsft_pipelines.specs.sft import SFTSpec

STAGES: tuple[StageName, ...] = ("curation", "sft", "eval")
STAGE_KINDS: dict[StageName, str] = {"curation": "CurationJob", "sft": "SFTJob", "eval": "EvalJob"}

S = TypeVar("S", bound=Spec)


class PlanError(ValueError):
    """The run cannot be planned (e.g. no storage configured); the message is for users."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class StagePlan:
    """One stage of a generation: an existing resource (``ref``) or an inline spec."""

    stage: StageName
    hash: str
    ref: str | None = None
    spec: CurationStageSpec | SFTStageSpec | EvalStageSpec | None = None

    @property
    def kind(self) -> str:
        return STAGE_KINDS[self.stage]


@dataclass(frozen=True)
class RunPlan:
    """The stages of a run, in order, with the storage they write to."""

    storage: StorageSpec
    image: str | None
    key: str
    """Generation key: a new generation starts when it changes."""
    stages: tuple[StagePlan, ...]

    def get(self, stage: StageName) -> StagePlan | None:
        return next((s for s in self.stages if s.stage == stage), None)


def project(model: Spec, target: type[S]) -> S:
    """The part of ``model`` that ``target`` (a base class of its type) describes."""
    return target.model_validate(model.model_dump(include=set(target.model_fields)))


def storage_key(storage: StorageSpec) -> str:
    """What identifies where a stage's results live (not how to authenticate there)."""
    return canonical_json(
        StorageSpec(endpoint=storage.endpoint, bucket=storage.bucket, prefix=storage.prefix)
    )


def resolve_storage(*candidates: StorageSpec | None) -> StorageSpec:
    """The first storage set (stage, run, operator default); PlanError when none reaches a
    store the cluster can see (a ``file://`` root exists only inside one pod)."""
    storage = next((s for s in candidates if s is not None), None)
    if storage is None or not storage.endpoint:
        raise PlanError(
            "StorageNotConfigured",
            "no object storage endpoint: set spec.storage.endpoint or install the operator "
            "with a default storage endpoint",
        )
    return storage


def benchmark_identity(benchmark: BenchmarkSpec) -> BenchmarkSpec:
    """The benchmark as decontamination sees it: which data, not how much of it is scored."""
    return BenchmarkSpec(
        name=benchmark.name, uri=benchmark.uri, format=benchmark.format, split=benchmark.split
    )


def protected_benchmarks(
    explicit: list[BenchmarkSpec], evaluated: list[BenchmarkSpec]
) -> list[BenchmarkSpec]:
    """Curation's explicit benchmarks plus the eval stage's, once each, in a stable order."""
    unique: dict[tuple[str, str], BenchmarkSpec] = {}
    for benchmark in [*explicit, *evaluated]:
        unique.setdefault((benchmark.name, benchmark.split), benchmark_identity(benchmark))
    return [unique[key] for key in sorted(unique)]


def _ref_hash(kind: str, name: str) -> str:
    return hashlib.sha256(f"ref\0{kind}\0{name}".encode()).hexdigest()


def _stage_plan(
    stage: StageName,
    ref: ObjectRef | None,
    spec: CurationStageSpec | SFTStageSpec | EvalStageSpec | None,
    pipeline_spec: type[Spec],
    run_storage: StorageSpec,
    *inputs: str,
) -> StagePlan:
    """A stage of the plan: an existing resource (hashed by kind and name), or an inline spec
    hashed as its pods read it, with its storage and ``inputs`` (the upstream hashes)."""
    if ref is not None:
        return StagePlan(stage, _ref_hash(STAGE_KINDS[stage], ref.name), ref=ref.name)
    assert spec is not None
    storage = resolve_storage(spec.storage, run_storage)
    own_hash = spec_hash(project(spec, pipeline_spec), storage_key(storage), *inputs)
    return StagePlan(stage, own_hash, spec=spec)


def plan_run(
    run: MedSFTRun,
    *,
    default_storage: StorageSpec | None = None,
) -> RunPlan:
    """Effective stage specs and hashes of ``run``'s next generation."""
    spec = run.spec
    storage = resolve_storage(spec.storage, default_storage)
    stages: list[StagePlan] = []
    sft_stage = spec.sft.spec

    eval_benchmarks = spec.eval.spec.benchmarks if spec.eval and spec.eval.spec else []

    curation_hash = ""
    if spec.curation is not None:
        curation = spec.curation.spec
        if curation is not None:
            updates: dict[str, object] = {}
            if curation.processor is None and sft_stage is not None:
                updates["processor"] = ProcessorSpec(
                    model=sft_stage.model.processor_uri or sft_stage.model.uri
                )
            updates["decontamination"] = curation.decontamination.model_copy(
                update={
                    "benchmarks": protected_benchmarks(
                        curation.decontamination.benchmarks, eval_benchmarks
                    )
                }
            )
            curation = _with(curation, **updates)
        stages.append(_stage_plan("curation", spec.curation.ref, curation, CurationSpec, storage))
        curation_hash = stages[-1].hash

    sft_inputs = [curation_hash] if curation_hash else []
    stages.append(_stage_plan("sft", spec.sft.ref, sft_stage, SFTSpec, storage, *sft_inputs))
    sft_hash = stages[-1].hash

    if spec.eval is not None:
        stages.append(
            _stage_plan("eval", spec.eval.ref, spec.eval.spec, EvalSpec, storage, sft_hash)
        )

    return RunPlan(
        storage=storage,
        image=spec.image,
        key=generation_key(run, [s.hash for s in stages]),
        stages=tuple(stages),
    )


def generation_key(run: MedSFTRun, stage_hashes: list[str]) -> str:
    """``OnSpecChange``: changes with any stage hash or the trigger; ``Manual``: with the
    trigger only. Fields that change no stage (promotion, history limit, artifact policy)
    never start a generation."""
    retraining = run.spec.retraining
    parts: list[str] = [retraining.policy, retraining.trigger or ""]
    if retraining.policy == "OnSpecChange":
        parts += stage_hashes
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _with(model: S, **updates: object) -> S:
    """A validated copy of ``model`` with ``updates`` (python field names)."""
    data = model.model_dump()
    data.update({k: v.model_dump() if isinstance(v, Spec) else v for k, v in updates.items()})
    return type(model).model_validate(data)


StageKindName = Literal["CurationJob", "SFTJob", "EvalJob"]
