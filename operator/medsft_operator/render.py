"""``medsft render``: the manifests the operator would create for a resource, offline.

The same builders the reconcilers use, with inputs resolved the way the operator resolves
them — except that nothing is read from the cluster: references to other resources are
resolved to where those resources write by the run layout, and a spec without storage
uses the operator's default from the environment (or a visible placeholder).
"""

from __future__ import annotations

from typing import Any

from medsft_operator import layout, names
from medsft_operator.api.kinds import CurationJob, EvalJob, MedSFTRun, SFTJob
from medsft_operator.builders.stage_children import (
    curation_children,
    eval_children,
    sft_children,
    stage_inputs,
)
from medsft_operator.builders.stage_resources import stage_resource
from medsft_operator.config import OperatorConfig
from medsft_operator.plan import plan_run, resolve_storage
from medsft_pipelines.specs.common import StorageSpec

Manifest = dict[str, Any]

#: Shown where the operator would use its configured default storage.
PLACEHOLDER_STORAGE = StorageSpec(endpoint="operator-default-storage")
PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


def children_of(
    doc: Manifest, *, generation: int = 1, config: OperatorConfig | None = None
) -> list[Manifest]:
    """Everything the operator creates for ``doc`` (a MedSFTRun: its stage resources of
    ``generation`` and, recursively, theirs)."""
    config = config or OperatorConfig.from_env()
    doc = _with_identity(doc)
    return _Renderer(config).children(doc, generation)


def _with_identity(doc: Manifest) -> Manifest:
    meta = {"namespace": "default", "uid": PLACEHOLDER_UID, **(doc.get("metadata") or {})}
    return {**doc, "metadata": meta}


class _Renderer:
    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.default_storage = config.default_storage or PLACEHOLDER_STORAGE
        self.outputs: dict[str, str] = {}  # stage resource name -> its output URI

    def storage(self, own: StorageSpec | None) -> StorageSpec:
        return resolve_storage(own, self.default_storage)

    def children(self, doc: Manifest, generation: int) -> list[Manifest]:
        kind = doc["kind"]
        if kind == "MedSFTRun":
            return self.run(doc, generation)
        if kind == "CurationJob":
            return self.curation(doc)
        if kind == "SFTJob":
            return self.sft(doc)
        if kind == "EvalJob":
            return self.eval(doc)
        raise ValueError(f"nothing to render for kind {kind!r}")

    def run(self, doc: Manifest, generation: int) -> list[Manifest]:
        run = MedSFTRun.from_manifest(doc)
        plan = plan_run(run, default_storage=self.default_storage)
        upstream: dict[layout.StageName, str] = {}
        out: list[Manifest] = []
        for stage in plan.stages:
            if stage.ref is not None:
                upstream[stage.stage] = stage.ref
                continue
            name = names.run_stage_name(doc["metadata"]["name"], stage.stage, generation)
            child = stage_resource(
                doc,
                plan,
                stage,
                name=name,
                generation=generation,
                upstream=upstream,
                annotations=names.propagated_annotations(
                    doc, self.config.propagate_annotation_prefixes
                ),
            )
            child["metadata"]["uid"] = PLACEHOLDER_UID
            upstream[stage.stage] = name
            out += [child, *self.children(child, generation)]
        return out

    def inputs(self, doc: Manifest, stage: layout.StageName, spec: Any, output: str | None) -> Any:
        storage = self.storage(spec.storage)
        inputs = stage_inputs(
            doc,
            stage,
            storage=storage,
            image=self.config.stage_image(stage, spec),
            spec_hash="",
            output_uri=output,
            pull_policy=self.config.image_pull_policy,
            service_account=self.config.job_service_account,
            propagate=tuple(self.config.propagate_annotation_prefixes),
        )
        self.outputs[doc["metadata"]["name"]] = inputs.output_uri
        return inputs

    def upstream_output(
        self, doc: Manifest, name: str, stage: layout.StageName, storage: StorageSpec
    ) -> str:
        """Where a referenced stage resource writes (rendered here, or its default)."""
        if name in self.outputs:
            return self.outputs[name]
        return layout.stage_output(storage, doc["metadata"]["namespace"], name, 1, stage)

    def curation(self, doc: Manifest) -> list[Manifest]:
        spec = CurationJob.from_manifest(doc).spec
        built = curation_children(doc, spec, self.inputs(doc, "curation", spec, spec.output.uri))
        return [built.config_map, built.work_job, built.merge_job]

    def sft(self, doc: Manifest) -> list[Manifest]:
        spec = SFTJob.from_manifest(doc).spec
        inputs = self.inputs(doc, "sft", spec, spec.output_uri)
        assert spec.dataset is not None
        if spec.dataset.manifest_uri:
            manifest_uri = spec.dataset.manifest_uri
        else:
            assert spec.dataset.curation_job_ref is not None
            ref = spec.dataset.curation_job_ref.name
            manifest_uri = layout.manifest_uri(
                self.upstream_output(doc, ref, "curation", inputs.storage)
            )
        config_map, job = sft_children(
            doc,
            spec,
            inputs,
            dataset_manifest_uri=manifest_uri,
            backend=spec.backend or self.config.default_sft_backend,
            training_runtime=self.config.training_runtime,
        )
        return [config_map, job]

    def eval(self, doc: Manifest) -> list[Manifest]:
        spec = EvalJob.from_manifest(doc).spec
        inputs = self.inputs(doc, "eval", spec, None)

        def model(source: Any) -> str:
            if source.uri:
                return str(source.uri)
            return layout.model_uri(
                self.upstream_output(doc, source.sft_job_ref.name, "sft", inputs.storage)
            )

        assert spec.model is not None
        baseline = model(spec.baseline) if spec.baseline is not None else None
        config_map, job = eval_children(
            doc, spec, inputs, model_uri=model(spec.model), baseline_uri=baseline
        )
        return [config_map, job]
