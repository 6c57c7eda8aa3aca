"""Everything one stage resource creates, composed from the pieces in :mod:`.children`.

The reconcilers and ``medsft render`` call the same functions: given a stage resource's
manifest, its parsed spec and what was resolved about its inputs, they return the
ConfigMap and the workload(s), so what ``render`` prints is what the operator creates.
"""

from __future__ import annotations

from dataclasses import dataclass

from medsft_operator import layout, names
from medsft_operator.api.kinds import CurationStageSpec, EvalStageSpec, SFTBackend, SFTStageSpec
from medsft_operator.builders import children
from medsft_operator.builders.jobconfig import (
    build_curation_config,
    build_eval_config,
    build_sft_config,
)
from medsft_operator.builders.pods import Manifest, PodSettings
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.jobconfig import RunInfo


@dataclass(frozen=True)
class StageInputs:
    """What a stage's children are built from, besides its spec."""

    storage: StorageSpec
    image: str
    run: RunInfo
    output_uri: str
    pull_policy: str | None = None
    service_account: str | None = None
    propagate: tuple[str, ...] = ()
    """Annotation prefixes copied from the stage resource onto its workloads."""


def stage_inputs(
    manifest: Manifest,
    stage: layout.StageName,
    *,
    storage: StorageSpec,
    image: str,
    spec_hash: str,
    output_uri: str | None = None,
    pull_policy: str | None = None,
    service_account: str | None = None,
    propagate: tuple[str, ...] = (),
) -> StageInputs:
    """Inputs of a stage resource: its run and generation (from a run's labels, else
    itself and 1), its output (the spec's, else the run layout's), the run's hash of
    the stage when a run made it (else ``spec_hash``)."""
    run, generation = names.run_and_generation(manifest)
    namespace = manifest["metadata"]["namespace"]
    annotations = manifest["metadata"].get("annotations") or {}
    return StageInputs(
        storage=storage,
        image=image,
        run=RunInfo(
            name=run,
            namespace=namespace,
            generation=generation,
            spec_hash=annotations.get(names.STAGE_HASH_FULL) or spec_hash,
        ),
        output_uri=output_uri or layout.stage_output(storage, namespace, run, generation, stage),
        pull_policy=pull_policy,
        service_account=service_account,
        propagate=propagate,
    )


def _settings(
    owner: children.Owner,
    inputs: StageInputs,
    spec: CurationStageSpec | SFTStageSpec | EvalStageSpec,
) -> PodSettings:
    return PodSettings(
        tracking=spec.tracking.mlflow if spec.tracking else None,
        image=inputs.image,
        storage=inputs.storage,
        config_map=names.config_map_name(owner.name),
        labels=owner.labels(),
        pull_policy=inputs.pull_policy,
        service_account=inputs.service_account,
        annotations=names.propagated_annotations(owner.manifest, inputs.propagate),
    )


@dataclass(frozen=True)
class CurationChildren:
    config_map: Manifest
    work_job: Manifest
    merge_job: Manifest


def curation_children(
    manifest: Manifest, spec: CurationStageSpec, inputs: StageInputs
) -> CurationChildren:
    owner = children.Owner(manifest, "curation")
    work, merge = (
        build_curation_config(
            spec, run=inputs.run, storage=inputs.storage, output_uri=inputs.output_uri, step=step
        )
        for step in ("work", "merge")
    )
    settings = _settings(owner, inputs, spec)
    return CurationChildren(
        config_map=children.curation_config_map(owner, work, merge),
        work_job=children.curation_work_job(owner, spec, settings),
        merge_job=children.curation_merge_job(owner, spec, settings),
    )


def sft_children(
    manifest: Manifest,
    spec: SFTStageSpec,
    inputs: StageInputs,
    *,
    dataset_manifest_uri: str,
    attempt: int = 0,
    backend: SFTBackend = "PyTorchJob",
    training_runtime: str = "medsft-torch",
) -> tuple[Manifest, Manifest]:
    """The ConfigMap and the training job of ``attempt``: a PyTorchJob, or a TrainJob
    referencing the ClusterTrainingRuntime ``training_runtime``."""
    owner = children.Owner(manifest, "sft")
    config = build_sft_config(
        spec,
        run=inputs.run,
        storage=inputs.storage,
        output_uri=inputs.output_uri,
        dataset_manifest_uri=dataset_manifest_uri,
    )
    settings = _settings(owner, inputs, spec)
    if backend == "TrainJob":
        job = children.train_job(
            owner,
            spec,
            settings,
            attempt=attempt,
            runtime=spec.training_runtime or training_runtime,
        )
    else:
        job = children.pytorch_job(owner, spec, settings, attempt=attempt)
    return children.sft_config_map(owner, spec, config), job


def eval_children(
    manifest: Manifest,
    spec: EvalStageSpec,
    inputs: StageInputs,
    *,
    model_uri: str,
    baseline_uri: str | None = None,
) -> tuple[Manifest, Manifest]:
    """The ConfigMap and the batch Job of an evaluation."""
    owner = children.Owner(manifest, "eval")
    config = build_eval_config(
        spec,
        run=inputs.run,
        storage=inputs.storage,
        output_uri=inputs.output_uri,
        model_uri=model_uri,
        baseline_uri=baseline_uri,
    )
    return children.eval_config_map(owner, config), children.eval_job(
        owner, spec, _settings(owner, inputs, spec)
    )
