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
  benchmark, by identity (name, split, uri: which data; not ``format``, which decontamination
  never reads) and whole (not ``maxItems``). Data decontaminated against a set of benchmarks
  is clean for any subset of it, so the planner is given the set the run's current dataset
  was checked against (:class:`PreviousCuration`, read from the last generation's
  CurationJob): when every benchmark now required is in it, and keeping it leaves the
  curation hash as it was, that set is kept. Editing eval settings, or dropping or adding a
  benchmark that curation already protects, therefore re-runs only eval; adding a benchmark
  the data was not checked against re-runs curation (and SFT), because the old dataset was
  never checked against it. When curation re-runs anyway, it protects exactly what is
  required now.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

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
    """The benchmark as decontamination reads it: which data (name, split, uri). Not how much
    of it is scored (``maxItems``), its role (``distribution``) nor its ``format``: the
    decontamination loader reads none of them, so they must not reach curation's hash."""
    return BenchmarkSpec(name=benchmark.name, uri=benchmark.uri, split=benchmark.split)


def _identity_key(benchmark: BenchmarkSpec) -> tuple[str, str, str]:
    return (benchmark.name, benchmark.split, benchmark.uri or "")


def protected_benchmarks(
    explicit: list[BenchmarkSpec], evaluated: list[BenchmarkSpec]
) -> list[BenchmarkSpec]:
    """Curation's explicit benchmarks plus the eval stage's, once each, in a stable order."""
    unique: dict[tuple[str, str], BenchmarkSpec] = {}
    for benchmark in [*explicit, *evaluated]:
        unique.setdefault((benchmark.name, benchmark.split), benchmark_identity(benchmark))
    return [unique[key] for key in sorted(unique)]


@dataclass(frozen=True)
class PreviousCuration:
    """The curation stage a run's latest generation used: the hash it was made for and the
    benchmarks its data was decontaminated against."""

    hash: str
    benchmarks: tuple[BenchmarkSpec, ...]

    @classmethod
    def of_child(cls, child: dict[str, Any], stage_hash: str | None) -> PreviousCuration | None:
        """From a CurationJob manifest (its spec holds the effective benchmark list) and the
        stage hash it was created for; None when either is missing or unreadable."""
        spec = child.get("spec") or {}
        listed = (spec.get("decontamination") or {}).get("benchmarks")
        if not stage_hash or not isinstance(listed, list):
            return None
        try:
            benchmarks = tuple(benchmark_identity(BenchmarkSpec.model_validate(b)) for b in listed)
        except ValueError:
            return None
        return cls(stage_hash, benchmarks)


def _kept_decontamination(
    required: list[BenchmarkSpec], previous: PreviousCuration | None
) -> list[BenchmarkSpec] | None:
    """The previous dataset's benchmark set when it covers every ``required`` one (a subset
    of what the data was checked against needs no new check); else None."""
    if previous is None:
        return None
    covered = {_identity_key(b) for b in previous.benchmarks}
    if not all(_identity_key(b) in covered for b in required):
        return None
    unique = {_identity_key(b): b for b in previous.benchmarks}
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
    previous: PreviousCuration | None = None,
) -> RunPlan:
    """Effective stage specs and hashes of ``run``'s next generation; ``previous``: the
    curation stage of the run's latest generation (see the module docstring)."""
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
            required = protected_benchmarks(curation.decontamination.benchmarks, eval_benchmarks)
            base = curation
            curation = _with(base, **updates, decontamination=_benchmarks(base, required))
            kept = _kept_decontamination(required, previous)
            if kept is not None and kept != required:
                unchanged = _with(base, **updates, decontamination=_benchmarks(base, kept))
                plan = _stage_plan("curation", None, unchanged, CurationSpec, storage)
                if previous is not None and plan.hash == previous.hash:
                    curation = unchanged  # the dataset in use stays valid: nothing re-runs
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


def _benchmarks(curation: CurationStageSpec, benchmarks: list[BenchmarkSpec]) -> object:
    return curation.decontamination.model_copy(update={"benchmarks": benchmarks})


def _with(model: S, **updates: object) -> S:
    """A validated copy of ``model`` with ``updates`` (python field names)."""
    data = model.model_dump()
    data.update({k: v.model_dump() if isinstance(v, Spec) else v for k, v in updates.items()})
    return type(model).model_validate(data)


StageKindName = Literal["CurationJob", "SFTJob", "EvalJob"]


# ------------------------------------------------------------------ what an edit re-runs


@dataclass(frozen=True)
class StageChange:
    """Whether applying an edit re-runs a stage, and why (``medsft plan``)."""

    stage: StageName
    reruns: bool
    why: str


def stage_changes(new: RunPlan, current: dict[StageName, str]) -> list[StageChange]:
    """Each stage of ``new`` against the stage hashes of the generation in use (``current``;
    a stage absent from it has never run): reused, or re-run because of its own spec or of an
    upstream stage that re-runs."""
    changes: list[StageChange] = []
    rerun_upstream: StageName | None = None
    for stage in new.stages:
        old = current.get(stage.stage)
        if old == stage.hash:
            changes.append(StageChange(stage.stage, False, "unchanged: reused"))
            continue
        if old is None:
            why = "not run yet"
        elif rerun_upstream is not None:
            why = f"{rerun_upstream} re-runs (or its spec changed too)"
        else:
            why = "its spec changed"
        changes.append(StageChange(stage.stage, True, why))
        rerun_upstream = rerun_upstream or stage.stage
    return changes


def compare_runs(
    new: MedSFTRun, old: MedSFTRun, *, default_storage: StorageSpec | None = None
) -> list[StageChange]:
    """What applying ``new`` over ``old`` re-runs, as if ``old``'s generation had run: its
    curation's benchmark set is what the data was decontaminated against."""
    before = plan_run(old, default_storage=default_storage)
    curation = before.get("curation")
    previous = None
    if curation is not None and isinstance(curation.spec, CurationStageSpec):
        benchmarks = tuple(curation.spec.decontamination.benchmarks)
        previous = PreviousCuration(curation.hash, benchmarks)
    after = plan_run(new, default_storage=default_storage, previous=previous)
    return stage_changes(after, {s.stage: s.hash for s in before.stages})
