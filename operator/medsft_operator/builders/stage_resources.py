"""The stage resources (CurationJob, SFTJob, EvalJob) a MedSFTRun creates per generation."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from medsft_operator import layout, names
from medsft_operator.api.k8s import API_VERSION
from medsft_operator.api.kinds import (
    CurationJobSpec,
    CurationStageSpec,
    EvalJobSpec,
    EvalStageSpec,
    SFTJobSpec,
    SFTStageSpec,
)
from medsft_operator.plan import PlanError, RunPlan, StagePlan, resolve_storage
from medsft_pipelines.specs.common import ObjectRef
from medsft_pipelines.specs.eval import ModelSource
from medsft_pipelines.specs.sft import DatasetSource
from medsft_pipelines.specs.tracking import MLflowSpec, TrackingSpec

Manifest = dict[str, Any]


def stage_resource(
    run: Manifest,
    plan: RunPlan,
    stage: StagePlan,
    *,
    name: str,
    generation: int,
    upstream: dict[layout.StageName, str],
    annotations: dict[str, str] | None = None,
    tracking_run_id: str | None = None,
) -> Manifest:
    """The manifest of ``stage`` for ``generation`` of ``run``, named ``name``, reading from
    the upstream stage resources named in ``upstream`` (``{"curation": ..., "sft": ...}``),
    carrying ``annotations`` (those the operator propagates from the run)."""
    if stage.spec is None:
        raise ValueError(
            f"stage {stage.stage} refers to an existing {stage.kind}: nothing to build"
        )
    meta = run["metadata"]
    run_name, namespace = meta["name"], meta["namespace"]
    storage = resolve_storage(stage.spec.storage, plan.storage)
    updates: dict[str, Any] = {"storage": storage}
    tracking = run_tracking(run)
    if stage.spec.tracking is None and tracking is not None:
        # The stage logs into the generation's MLflow run (opened by the run reconciler;
        # without one, the stage's pods open a run of their own).
        updates["tracking"] = TrackingSpec(
            mlflow=tracking.model_copy(update={"run_id": tracking_run_id})
        )
    image = stage.spec.image or plan.image
    if image:
        updates["image"] = image
    spec: CurationJobSpec | SFTJobSpec | EvalJobSpec
    try:
        if isinstance(stage.spec, CurationStageSpec):
            if not stage.spec.output.uri:
                output = layout.stage_output(storage, namespace, run_name, generation, "curation")
                updates["output"] = stage.spec.output.model_copy(update={"uri": output})
            spec = CurationJobSpec.model_validate(_merged(stage.spec, updates))
        elif isinstance(stage.spec, SFTStageSpec):
            if stage.spec.dataset is None:
                updates["dataset"] = DatasetSource(
                    curation_job_ref=ObjectRef(name=upstream["curation"])
                )
            if not stage.spec.output_uri:
                updates["output_uri"] = layout.stage_output(
                    storage, namespace, run_name, generation, "sft"
                )
            spec = SFTJobSpec.model_validate(_merged(stage.spec, updates))
        else:
            assert isinstance(stage.spec, EvalStageSpec)
            updates["model"] = ModelSource(sft_job_ref=ObjectRef(name=upstream["sft"]))
            spec = EvalJobSpec.model_validate(_merged(stage.spec, updates))
    except ValidationError as exc:
        raise PlanError(
            "InvalidStageSpec", f"the {stage.stage} stage is not valid: {exc}"
        ) from None
    return {
        "apiVersion": API_VERSION,
        "kind": stage.kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                **names.child_labels(
                    "MedSFTRun", run_name, stage.stage, run=run_name, generation=generation
                ),
                names.STAGE_HASH: names.hash_label(stage.hash),
            },
            "annotations": {**(annotations or {}), names.STAGE_HASH_FULL: stage.hash},
            "ownerReferences": [names.owner_reference(run)],
        },
        "spec": spec.to_wire(),
    }


def run_tracking(run: Manifest) -> MLflowSpec | None:
    """The MedSFTRun's ``spec.tracking.mlflow``, if any."""
    data = ((run.get("spec") or {}).get("tracking") or {}).get("mlflow")
    return MLflowSpec.model_validate(data) if data else None


def _merged(
    model: CurationStageSpec | SFTStageSpec | EvalStageSpec, updates: dict[str, Any]
) -> dict[str, Any]:
    data = model.model_dump()
    for key, value in updates.items():
        data[key] = value.model_dump() if hasattr(value, "model_dump") else value
    return data
