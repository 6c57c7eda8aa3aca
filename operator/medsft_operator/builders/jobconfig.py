"""Job configs: the one file each stage's pod (or local process) reads.

The control plane resolves everything here — references to URIs, defaults, storage — so
the data plane needs no Kubernetes access. ``medsft run --local`` builds the same configs
with :func:`local_job_configs`.
"""

from __future__ import annotations

from typing import Literal

from medsft_operator import layout
from medsft_operator.api.kinds import CurationStageSpec, EvalStageSpec, MedSFTRun, SFTStageSpec
from medsft_operator.plan import plan_run, project
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.curation import CurationSpec
from medsft_pipelines.specs.eval import EvalSpec, ModelSource
from medsft_pipelines.specs.jobconfig import (
    CurationJobConfig,
    EvalJobConfig,
    RunInfo,
    SFTJobConfig,
)
from medsft_pipelines.specs.sft import DatasetSource, SFTSpec
from medsft_pipelines.specs.tracking import MLflowSpec

JobConfig = CurationJobConfig | SFTJobConfig | EvalJobConfig


def mlflow_of(spec: CurationStageSpec | SFTStageSpec | EvalStageSpec) -> MLflowSpec | None:
    """The MLflow server a stage's pods send to (``spec.tracking.mlflow``), if any."""
    return spec.tracking.mlflow if spec.tracking is not None else None


def build_curation_config(
    spec: CurationStageSpec,
    *,
    run: RunInfo,
    storage: StorageSpec,
    output_uri: str,
    step: Literal["work", "merge", "all"] = "all",
) -> CurationJobConfig:
    """Config of the curation workers (``work``), the merge step, or both in one process."""
    data = project(spec, CurationSpec)
    data = data.model_copy(update={"output": data.output.model_copy(update={"uri": output_uri})})
    scope = data.teachers.cache.scope if data.teachers is not None else "Run"
    return CurationJobConfig(
        run=run,
        tracking=mlflow_of(spec),
        storage=storage,
        output_uri=output_uri,
        spec=data,
        workers=spec.workers,
        step=step,
        teacher_cache_uri=layout.teacher_cache_uri(storage, run.namespace, run.name, scope),
    )


def build_sft_config(
    spec: SFTStageSpec,
    *,
    run: RunInfo,
    storage: StorageSpec,
    output_uri: str,
    dataset_manifest_uri: str,
) -> SFTJobConfig:
    """Config of every rank of the training job, with the dataset resolved to its manifest."""
    data = project(spec, SFTSpec).model_copy(
        update={
            "dataset": DatasetSource(manifest_uri=dataset_manifest_uri),
            "output_uri": output_uri,
        }
    )
    return SFTJobConfig(
        run=run,
        tracking=mlflow_of(spec),
        storage=storage,
        output_uri=output_uri,
        spec=data,
        model_uri=spec.model.uri,
        dataset_manifest_uri=dataset_manifest_uri,
        nodes=spec.nodes,
        gpus_per_node=spec.gpus_per_node,
    )


def build_eval_config(
    spec: EvalStageSpec,
    *,
    run: RunInfo,
    storage: StorageSpec,
    output_uri: str,
    model_uri: str,
    baseline_uri: str | None = None,
) -> EvalJobConfig:
    """Config of an evaluation, with the model (and baseline) resolved to locations."""
    data = project(spec, EvalSpec)
    updates: dict[str, object] = {"model": ModelSource(uri=model_uri)}
    if data.baseline is not None and baseline_uri is not None:
        updates["baseline"] = data.baseline.model_copy(
            update={"uri": baseline_uri, "sft_job_ref": None}
        )
    return EvalJobConfig(
        run=run,
        tracking=mlflow_of(spec),
        storage=storage,
        output_uri=output_uri,
        spec=data.model_copy(update=updates),
        model_uri=model_uri,
        baseline_uri=baseline_uri,
    )


def build_job_config(
    spec: CurationStageSpec | SFTStageSpec | EvalStageSpec,
    *,
    run: RunInfo,
    storage: StorageSpec,
    output_uri: str,
    dataset_manifest_uri: str | None = None,
    model_uri: str | None = None,
    baseline_uri: str | None = None,
    step: Literal["work", "merge", "all"] = "all",
) -> JobConfig:
    """The job config of any stage spec (dispatch on its type)."""
    if isinstance(spec, CurationStageSpec):
        return build_curation_config(
            spec, run=run, storage=storage, output_uri=output_uri, step=step
        )
    if isinstance(spec, SFTStageSpec):
        if dataset_manifest_uri is None:
            raise ValueError("an SFT job config needs dataset_manifest_uri")
        return build_sft_config(
            spec,
            run=run,
            storage=storage,
            output_uri=output_uri,
            dataset_manifest_uri=dataset_manifest_uri,
        )
    if model_uri is None:
        raise ValueError("an eval job config needs model_uri")
    return build_eval_config(
        spec,
        run=run,
        storage=storage,
        output_uri=output_uri,
        model_uri=model_uri,
        baseline_uri=baseline_uri,
    )


def local_job_configs(
    run: MedSFTRun,
    storage: StorageSpec,
    *,
    namespace: str = "default",
    generation: int = 1,
) -> list[JobConfig]:
    """The configs ``medsft run --local`` executes in order: curation (``step: all``), SFT on
    its manifest, eval of SFT's final model — on ``storage`` (``file://`` without an endpoint).

    Stages given as ``ref`` (existing cluster resources) cannot run locally: ValueError.
    """
    name = run.metadata.name or "run"
    # Locally the storage may be a folder: plan against an S3-shaped stand-in, then use
    # ``storage`` itself for every URI (hashes only need the stage specs to be effective).
    plan = plan_run(run, default_storage=storage if storage.endpoint else _stand_in(storage))
    configs: list[JobConfig] = []
    manifest: str | None = (
        run.spec.sft.spec.dataset.manifest_uri
        if (run.spec.sft.spec and run.spec.sft.spec.dataset)
        else None
    )
    model: str | None = None
    for stage in plan.stages:
        if stage.spec is None:
            raise ValueError(
                f"the {stage.stage} stage refers to {stage.ref!r}: not runnable locally"
            )
        spec = stage.spec
        if spec.tracking is None and run.spec.tracking is not None:
            spec = spec.model_copy(update={"tracking": run.spec.tracking})
        info = RunInfo(name=name, namespace=namespace, generation=generation, spec_hash=stage.hash)
        output = _output(spec, storage, namespace, name, generation, stage.stage)
        if isinstance(spec, CurationStageSpec):
            configs.append(
                build_curation_config(spec, run=info, storage=storage, output_uri=output)
            )
            manifest = layout.manifest_uri(output)
        elif isinstance(spec, SFTStageSpec):
            assert manifest is not None
            configs.append(
                build_sft_config(
                    spec,
                    run=info,
                    storage=storage,
                    output_uri=output,
                    dataset_manifest_uri=manifest,
                )
            )
            model = layout.model_uri(output)
        else:
            assert model is not None
            baseline = spec.baseline.uri if spec.baseline else None
            configs.append(
                build_eval_config(
                    spec,
                    run=info,
                    storage=storage,
                    output_uri=output,
                    model_uri=model,
                    baseline_uri=baseline,
                )
            )
    return configs


def _stand_in(storage: StorageSpec) -> StorageSpec:
    return storage.model_copy(update={"endpoint": "local"})


def _output(
    spec: CurationStageSpec | SFTStageSpec | EvalStageSpec,
    storage: StorageSpec,
    namespace: str,
    run: str,
    generation: int,
    stage: layout.StageName,
) -> str:
    """The stage's output URI: the spec's own, else the run layout's default."""
    if isinstance(spec, CurationStageSpec) and spec.output.uri:
        return spec.output.uri
    if isinstance(spec, SFTStageSpec) and spec.output_uri:
        return spec.output_uri
    return layout.stage_output(storage, namespace, run, generation, stage)
