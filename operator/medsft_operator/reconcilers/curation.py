"""The CurationJob reconciler: the Indexed work Job, then the merge Job, then the dataset
manifest it must have written."""

from __future__ import annotations

import functools
from typing import Any

from medsft_operator import fold, layout, names
from medsft_operator.api.k8s import StatusBase
from medsft_operator.api.kinds import (
    CurationJob,
    CurationJobSpec,
)
from medsft_operator.api.status import CurationJobStatus
from medsft_operator.builders.stage_children import (
    curation_children,
)
from medsft_operator.kube import (
    CONFIGMAPS,
    CURATIONJOBS,
    JOBS,
    Body,
    ResourceType,
)
from medsft_operator.reconcilers.stage import StageReconciler, active_phase, queued
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.curation import CurationSpec


class CurationReconciler(StageReconciler):
    rt = CURATIONJOBS
    model = CurationJob
    stage = "curation"
    pipeline_spec = CurationSpec

    async def upstream(
        self, body: Body, spec: CurationJobSpec, status: Any, storage: StorageSpec
    ) -> None:
        """The teachers' API key Secrets."""
        teachers = spec.teachers
        for teacher in (teachers.text, teachers.image) if teachers else ():
            if teacher is not None and teacher.api_key_secret is not None:
                ref = teacher.api_key_secret
                await self.ctx.storage.secret_key(body["metadata"]["namespace"], ref.name, ref.key)

    async def advance(
        self,
        body: Body,
        spec: CurationJobSpec,
        status: CurationJobStatus,
        storage: StorageSpec,
        upstream: None,
        *,
        poll: bool,
    ) -> StatusBase:
        meta = body["metadata"]
        namespace, gen = meta["namespace"], meta.get("generation")
        inputs = self.inputs(body, spec, storage, output_uri=spec.output.uri)
        built = functools.cache(lambda: curation_children(body, spec, inputs))

        def needs() -> list[tuple[ResourceType, Body]]:
            return [(CONFIGMAPS, built().config_map)]

        work_name = names.curation_work_job_name(meta["name"])
        work = await self.ensure_child(
            JOBS,
            work_name,
            body,
            lambda: built().work_job,
            needs=needs,
            new=status.job_name is None,
        )
        counts = work.get("status") or {}
        status = status.model_copy(
            update={
                "job_name": work["metadata"]["name"],
                "workers_succeeded": counts.get("succeeded") or 0,
                "workers_failed": counts.get("failed") or 0,
                "spec_hash": inputs.run.spec_hash,
            }
        )
        state, step, current = fold.job_state(work), "workers", work
        if state.phase == "Succeeded":
            merge_name = names.curation_merge_job_name(meta["name"])
            merge = await self.ensure_child(
                JOBS,
                merge_name,
                body,
                lambda: built().merge_job,
                needs=needs,
                new=body.get("status", {}).get("jobName") == work_name,
            )
            status = status.model_copy(update={"job_name": merge["metadata"]["name"]})
            state, step, current = fold.job_state(merge), "merge", merge
        if state.phase == "Failed":
            state = await self.explain_failure(current, state)
            message = f"curation {step} failed ({state.reason}): {state.message}".rstrip(": ")
            return fold.apply_phase(status, "Failed", state.reason, message, gen)
        if state.phase == "Succeeded":  # the merge is done: the dataset must be there
            return await self._dataset_ready(status, namespace, storage, inputs.output_uri, gen)
        status, queue = await self.fold_queue(status, current, state, gen)
        if (held := queued(status, queue, gen)) is not None:
            return held
        if poll:
            progress = await self.ctx.storage.progress(namespace, storage, inputs.output_uri)
            if progress:
                status = fold.fold_curation_counts(status, progress.get("counts") or {})
                status = status.model_copy(update={"progress": fold.progress_text(progress)})
                status = fold.fold_tracking(status, progress, gen)
        status, stuck = await self.stalled(status, current, state, gen)
        if stuck:
            return status
        message = state.message or f"curation {step} running"
        return fold.apply_phase(status, active_phase(status, state), state.reason, message, gen)

    async def _dataset_ready(
        self,
        status: CurationJobStatus,
        namespace: str,
        storage: StorageSpec,
        output: str,
        gen: int | None,
    ) -> CurationJobStatus:
        manifest_uri = layout.manifest_uri(output)
        manifest = await self.ctx.storage.manifest(namespace, storage, manifest_uri)
        if manifest is None:
            message = f"the merge step succeeded but wrote no manifest at {manifest_uri}"
            return fold.apply_phase(status, "Failed", "ManifestMissing", message, gen)
        report_uri = layout.curation_report_uri(output)
        report = await self.ctx.storage.get_json(namespace, storage, report_uri)
        status = fold.fold_manifest(status, manifest, report)
        status = status.model_copy(
            update={
                "manifest_uri": manifest_uri,
                "report_uri": report_uri if report is not None else None,
                "progress": f"{manifest.num_rows}/{manifest.num_rows}",
            }
        )
        message = f"dataset of {manifest.num_rows} samples in {len(manifest.shards)} shards"
        return fold.apply_phase(status, "Succeeded", "DatasetReady", message, gen)
