"""The EvalJob reconciler: one Job evaluating a model (and a baseline), its summary folded
into the status."""

from __future__ import annotations

import functools
from typing import Any

from medsft_operator import fold, layout, names
from medsft_operator.api.k8s import StatusBase
from medsft_operator.api.kinds import (
    EvalJob,
    EvalJobSpec,
)
from medsft_operator.api.status import EvalJobStatus
from medsft_operator.builders.stage_children import (
    eval_children,
)
from medsft_operator.kube import (
    CONFIGMAPS,
    EVALJOBS,
    JOBS,
    SFTJOBS,
    Body,
)
from medsft_operator.reconcilers.stage import StageReconciler, queued
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.eval import EvalSpec


class EvalReconciler(StageReconciler):
    rt = EVALJOBS
    model = EvalJob
    stage = "eval"
    pipeline_spec = EvalSpec

    async def upstream(
        self, body: Body, spec: EvalJobSpec, status: Any, storage: StorageSpec
    ) -> tuple[str, str | None]:
        """The URIs of the model and of the baseline (if any)."""
        namespace = body["metadata"]["namespace"]
        assert spec.model is not None
        model_uri = await self._model(namespace, spec.model.sft_job_ref, spec.model.uri)
        baseline_uri = None
        if spec.baseline is not None:
            baseline_uri = await self._model(
                namespace, spec.baseline.sft_job_ref, spec.baseline.uri
            )
        return model_uri, baseline_uri

    async def advance(
        self,
        body: Body,
        spec: EvalJobSpec,
        status: EvalJobStatus,
        storage: StorageSpec,
        upstream: tuple[str, str | None],
        *,
        poll: bool,
    ) -> StatusBase:
        meta = body["metadata"]
        namespace, gen = meta["namespace"], meta.get("generation")
        model_uri, baseline_uri = upstream
        inputs = self.inputs(body, spec, storage, model_uri)
        built = functools.cache(
            lambda: eval_children(
                body, spec, inputs, model_uri=model_uri, baseline_uri=baseline_uri
            )
        )
        job = await self.ensure_child(
            JOBS,
            names.eval_job_name(meta["name"]),
            body,
            lambda: built()[1],
            needs=lambda: [(CONFIGMAPS, built()[0])],
            new=status.job_name is None,
        )
        status = status.model_copy(
            update={"job_name": job["metadata"]["name"], "spec_hash": inputs.run.spec_hash}
        )
        state = fold.job_state(job)
        if state.phase == "Failed":
            state = await self.explain_failure(job, state)
            message = f"evaluation failed ({state.reason}): {state.message}".rstrip(": ")
            return fold.apply_phase(status, "Failed", state.reason, message, gen)
        if state.phase == "Succeeded":
            summary_uri = layout.eval_summary_uri(inputs.output_uri)
            summary = await self.ctx.storage.get_json(namespace, storage, summary_uri)
            if summary is None:
                message = f"the evaluation succeeded but wrote no summary at {summary_uri}"
                return fold.apply_phase(status, "Failed", "SummaryMissing", message, gen)
            status = fold.fold_eval_summary(status, summary)
            if status.report_uri is None:
                status = status.model_copy(
                    update={"report_uri": layout.eval_report_uri(inputs.output_uri)}
                )
            mean = status.mean_accuracy
            count = len(status.results)
            message = (
                f"mean accuracy {mean:.4f} over {count} benchmarks"
                if mean is not None
                else "evaluated"
            )
            return fold.apply_phase(status, "Succeeded", "Evaluated", message, gen)
        status, queue = await self.fold_queue(status, job, state, gen)
        if (held := queued(status, queue, gen)) is not None:
            return held
        if poll:
            progress = await self.ctx.storage.progress(namespace, storage, inputs.output_uri)
            if progress:
                status = status.model_copy(update={"progress": fold.progress_text(progress)})
                status = fold.fold_tracking(status, progress, gen)
        status, stuck = await self.stalled(status, job, state, gen)
        if stuck:
            return status
        return fold.apply_phase(
            status, state.phase, state.reason, state.message or "evaluating", gen
        )

    async def _model(self, namespace: str, ref: Any, uri: str | None) -> str:
        """A model location: the URI itself, or a succeeded SFTJob's exported model."""
        if ref is None:
            assert uri is not None
            return uri
        return await self.upstream_result(SFTJOBS, namespace, ref.name, "modelUri", "Model")
