"""The MedSFTRun reconciler: generations, stage reuse, promotion, history.

A generation's number is the last recorded one plus one, and its children are named by it,
so an operator restarted before it recorded a generation finds the children it already
made (a child left for a spec that has moved on since is replaced). Each stage is resolved to a stage resource by content hash: a child of this
run with the stage's hash (from any generation, not failed) is reused; otherwise
``<run>-<stage>-g<N>`` is created, once the previous stage has succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal, cast

import kopf

from medsft_operator import fold, layout, names, promotion
from medsft_operator.api import conditions as cond
from medsft_operator.api.k8s import StatusBase
from medsft_operator.api.kinds import MedSFTRun
from medsft_operator.api.status import EvalJobStatus, GenerationRecord, MedSFTRunStatus
from medsft_operator.builders.stage_resources import stage_resource
from medsft_operator.kube import BY_KIND, CURATIONJOBS, EVALJOBS, MEDSFTRUNS, SFTJOBS, Body
from medsft_operator.plan import (
    STAGES,
    PlanError,
    PreviousCuration,
    RunPlan,
    StagePlan,
    plan_run,
    resolve_storage,
)
from medsft_operator.reconcilers.base import Reconciler
from medsft_operator.reconcilers.errors import InputsError
from medsft_operator.tracking import log_generation_outcome, open_generation_run
from medsft_pipelines.specs.tracking import MLflowSpec

log = logging.getLogger("medsft.operator")

TRACKING_TIMEOUT_S = 20.0
"""The longest a reconcile waits for the MLflow server (the client's own timeouts are short)."""
TRACKING_RETRY_S = 60.0
"""After the server failed, the next try waits this long (each reconcile would wait again)."""
STAGE_TITLES = {"curation": "Curation", "sft": "SFT", "eval": "Eval"}
RECORD_FIELD = {"curation": "curation_job", "sft": "sft_job", "eval": "eval_job"}
DELETION_POLL_S = 2.0  # how often a deleted run checks whether its stages' pods are gone
STAGE_RESOURCES = (CURATIONJOBS, SFTJOBS, EVALJOBS)


class RunReconciler(Reconciler):
    rt = MEDSFTRUNS
    model = MedSFTRun

    async def reconcile(self, body: Body, *, poll: bool) -> StatusBase:
        status = await self._reconcile(body)
        if status.phase not in ("Running", "Queued"):  # no stage is active: none is stalled
            status = fold.apply_stalled(status, None, body["metadata"].get("generation"))
        return status

    async def _reconcile(self, body: Body) -> StatusBase:
        run: MedSFTRun = self.parse(body)
        status = cast(MedSFTRunStatus, self.status_of(body))
        meta = body["metadata"]
        namespace, gen = meta["namespace"], meta.get("generation")
        try:
            previous = await self._previous_curation(body, status)
            plan = plan_run(run, default_storage=self.ctx.config.default_storage, previous=previous)
            await self.ctx.storage.settings(namespace, plan.storage)
        except (InputsError, PlanError) as error:
            return self.pending(status, error, gen)
        status = self.inputs_ready(status, gen)

        history = list(status.history)
        if not history or history[0].spec_hash != plan.key:
            status = await self._start_generation(body, run, status, plan, history, gen)
            history = list(status.history)
        record = history[0]
        mlflow = run.spec.tracking.mlflow if run.spec.tracking else None
        if mlflow is not None and record.tracking_run_id is None:
            status = await self._open_tracking(body, mlflow, plan, status, gen)
            history = list(status.history)
            record = history[0]
        number = record.generation
        upstream: dict[layout.StageName, str] = {}
        children: dict[layout.StageName, Body] = {}
        for stage in plan.stages:
            try:
                child, reused_from = await self._stage_child(
                    body, plan, stage, record, number, upstream
                )
            except InputsError as error:
                status = status.model_copy(
                    update={"history": history, "stage": STAGE_TITLES[stage.stage]}
                )
                return self.pending(status, error, gen)
            child_name = child["metadata"]["name"]
            if getattr(record, RECORD_FIELD[stage.stage]) != child_name:
                record = record.model_copy(update={RECORD_FIELD[stage.stage]: child_name})
                if reused_from is not None:
                    self.ctx.events.post(
                        body,
                        "Normal",
                        "StageReused",
                        f"generation {number} reuses {stage.kind} {child_name} (unchanged since generation {reused_from})",
                    )
                await self._delete_superseded(namespace, history[1:], stage, child_name, body)
            upstream[stage.stage] = child_name
            children[stage.stage] = child
            child_status = child.get("status") or {}
            status = _stage_tracking(status, stage.kind, child_name, child_status, gen)
            phase = child_status.get("phase")
            title = STAGE_TITLES[stage.stage]
            if phase == "Succeeded":
                continue
            if phase == "Failed":
                record = record.model_copy(
                    update={
                        "phase": "Failed",
                        "completion_time": record.completion_time or fold.now(),
                    }
                )
                history[0] = record
                message = f"generation {number}: {stage.kind} {child_name} failed: {child_status.get('message', '')}"
                status = status.model_copy(
                    update={"history": history, "stage": title, "progress": None}
                )
                return fold.apply_phase(status, "Failed", f"{stage.kind}Failed", message, gen)
            record = record.model_copy(update={"phase": "Running"})
            history[0] = record
            progress = child_status.get("progress")
            status = status.model_copy(
                update={
                    "history": history,
                    "stage": title,
                    "progress": f"{stage.stage} {progress}" if progress else stage.stage,
                }
            )
            state = phase or "Pending"
            message = f"generation {number}: {title} {state.lower()} ({stage.kind} {child_name})"
            if phase == "Queued":  # waiting for Kueue: say so in the run's phase too
                message = f"{message}: {child_status.get('message', '')}"
                return fold.apply_phase(status, "Queued", f"{title}Queued", message, gen)
            # The stage's pods cannot start: the run says why, with the stage's own cause.
            stalled = fold.stalled_of(child_status)
            if stalled is not None:
                reason, why = stalled
                message = f"{message}: {why}"[: fold.QUEUE_MESSAGE_MAX]
                stalled = (reason, message)
            status = fold.apply_stalled(status, stalled, gen)
            return fold.apply_phase(status, "Running", f"{title}{state}", message, gen)
        return await self._finish_generation(
            body, run, status, plan, history, record, children, gen
        )

    # -- generations ------------------------------------------------------------------------

    async def _start_generation(
        self,
        body: Body,
        run: MedSFTRun,
        status: MedSFTRunStatus,
        plan: RunPlan,
        history: list[GenerationRecord],
        gen: int | None,
    ) -> MedSFTRunStatus:
        number = history[0].generation + 1 if history else 1
        if history and history[0].phase not in fold.TERMINAL:
            # Superseded before it finished: no outcome; its unreused children go below.
            history[0] = history[0].model_copy(
                update={"phase": None, "completion_time": fold.now()}
            )
        record = GenerationRecord(
            generation=number, spec_hash=plan.key, phase="Pending", start_time=fold.now()
        )
        history = [record, *history]
        kept, dropped = (
            history[: run.spec.retraining.history_limit],
            history[run.spec.retraining.history_limit :],
        )
        await self._delete_dropped(body, kept, dropped, status.promoted_generation)
        first = plan.stages[0].stage
        status = status.model_copy(
            update={
                "history": kept,
                "current_generation": number,
                "stage": STAGE_TITLES[first],
                "score": None,
                "progress": None,
                "tracking_url": None,  # the new generation's run replaces it once opened
            }
        )
        if run.spec.promotion is not None:
            status = status.model_copy(
                update={"conditions": cond.remove_condition(status.conditions, cond.PROMOTED)}
            )
        if number > 1:  # the first generation is the run starting, not news
            self.ctx.events.post(
                body, "Normal", "GenerationStarted", f"generation {number} started"
            )
        return fold.apply_phase(
            status, "Running", "GenerationStarted", f"generation {number} started", gen
        )

    async def _finish_generation(
        self,
        body: Body,
        run: MedSFTRun,
        status: MedSFTRunStatus,
        plan: RunPlan,
        history: list[GenerationRecord],
        record: GenerationRecord,
        children: dict[layout.StageName, Body],
        gen: int | None,
    ) -> MedSFTRunStatus:
        number = record.generation
        scores: dict[str, float] = {}
        eval_status: EvalJobStatus | None = None
        if "eval" in children:
            eval_status = EvalJobStatus.model_validate(children["eval"].get("status") or {})
            scores = fold.scores_of(eval_status)
        model_uri = (children["sft"].get("status") or {}).get("modelUri")
        eval_spec = run.spec.eval.spec if run.spec.eval is not None else None
        record = record.model_copy(
            update={
                "phase": "Succeeded",
                "scores": scores,
                "eval_settings": promotion.eval_settings(eval_spec) if eval_spec else {},
                "model_uri": model_uri,
                "completion_time": record.completion_time or fold.now(),
            }
        )
        update: dict[str, Any] = {"stage": "Done", "score": scores.get("mean"), "progress": None}
        spec = run.spec.promotion
        if spec is not None and eval_status is not None and record.promoted is None:
            promoted_eval = next(
                (
                    promotion.Evaluated(r.scores, r.model_uri, r.eval_settings)
                    for r in history[1:]
                    if r.generation == status.promoted_generation
                ),
                None,
            )
            verdict = promotion.evaluate(
                spec,
                scores,
                baseline_mean=fold.baseline_mean(eval_status),
                current=promotion.Evaluated(scores, model_uri, record.eval_settings),
                promoted=promoted_eval,
            )
            meta = body["metadata"]
            conditions = status.conditions
            if verdict.promoted:
                pointer = {
                    "namespace": meta["namespace"],
                    "run": meta["name"],
                    "generation": number,
                    "modelUri": model_uri,
                    "scores": scores,
                    "promotedAt": fold.now().isoformat(),
                }
                uri = layout.promoted_pointer_uri(plan.storage, meta["namespace"], meta["name"])
                # Forward only: never replaces a newer generation's pointer (a late write of
                # a replaced leader, or a status that lags the store).
                await self.ctx.storage.advance_json(
                    meta["namespace"], plan.storage, uri, pointer, order="generation"
                )
                update |= {"promoted_generation": number, "promoted_model_uri": model_uri}
                promoted: Literal["True", "False"] = "True"
                reason, said = "ThresholdsMet", f"promoted: {verdict.message()}"
                event = ("Normal", "Promoted", f"generation {number} promoted ({uri})")
            else:
                promoted = "False"
                reason, said = "ThresholdsNotMet", f"not promoted: {verdict.message()}"
                event = ("Warning", "NotPromoted", f"generation {number}: {verdict.message()}")
            conditions = cond.set_condition(
                conditions, cond.PROMOTED, promoted, reason, f"generation {number} {said}", gen
            )
            self.ctx.events.post(body, *event)
            record = record.model_copy(update={"promoted": verdict.promoted})
            update["conditions"] = conditions
            await self._track_outcome(run, record, scores, verdict.promoted, verdict.message())
        history[0] = record
        update["history"] = history
        status = status.model_copy(update=update)
        mean = scores.get("mean")
        message = f"generation {number} succeeded" + (
            f" (mean accuracy {mean:.4f})" if mean is not None else ""
        )
        return fold.apply_phase(status, "Succeeded", "GenerationSucceeded", message, gen)

    # -- experiment tracking ----------------------------------------------------------------

    async def _open_tracking(
        self,
        body: Body,
        mlflow: MLflowSpec,
        plan: RunPlan,
        status: MedSFTRunStatus,
        gen: int | None,
    ) -> MedSFTRunStatus:
        """Find or open the current generation's MLflow run: its id in the history record,
        its URL in the status. The tracker's trouble is a condition, never the run's: the
        stages then open runs of their own, the numbers are in storage either way."""
        meta, record = body["metadata"], status.history[0]
        degraded = cond.get_condition(status.conditions, cond.TRACKING_DEGRADED)
        if (
            degraded is not None
            and degraded.status == "True"
            and (fold.now() - degraded.last_transition_time).total_seconds() < TRACKING_RETRY_S
        ):
            return status  # tried a moment ago: no reconcile waits on a dead server each time
        opening = asyncio.to_thread(
            open_generation_run,
            mlflow,
            name=meta["name"],
            namespace=meta["namespace"],
            generation=record.generation,
            spec_hash=plan.key,
            stage_hashes={s.stage: s.hash for s in plan.stages},
            recipe={s.stage: s.spec.to_wire() for s in plan.stages if s.spec is not None},
        )
        try:
            opened = await asyncio.wait_for(opening, TRACKING_TIMEOUT_S)
        except Exception as exc:  # unreachable, slow, refusing: all the same to the run
            message = (
                f"generation {record.generation}: the MLflow server {mlflow.tracking_uri} did "
                f"not open the run ({type(exc).__name__}); training goes on, its numbers are "
                "in storage"
            )
            conditions = cond.set_condition(
                status.conditions,
                cond.TRACKING_DEGRADED,
                "True",
                "TrackerUnreachable",
                message,
                gen,
            )
            return status.model_copy(update={"conditions": conditions})
        history = [
            record.model_copy(update={"tracking_run_id": opened.run_id}),
            *status.history[1:],
        ]
        conditions = cond.set_condition(
            status.conditions,
            cond.TRACKING_DEGRADED,
            "False",
            "RunOpened",
            f"generation {record.generation} is tracked at {opened.url}",
            gen,
        )
        return status.model_copy(
            update={"history": history, "tracking_url": opened.url, "conditions": conditions}
        )

    async def _track_outcome(
        self,
        run: MedSFTRun,
        record: GenerationRecord,
        scores: dict[str, float],
        promoted: bool,
        message: str,
    ) -> None:
        """The generation's scores and promotion decision on its MLflow run (best effort)."""
        mlflow = run.spec.tracking.mlflow if run.spec.tracking else None
        if mlflow is None or record.tracking_run_id is None:
            return
        metrics = {f"score.{k}": v for k, v in scores.items()} | {"promoted": float(promoted)}
        tags = {"medsft.promoted": str(promoted).lower(), "medsft.promotion": message[:5000]}
        logging = asyncio.to_thread(
            log_generation_outcome, mlflow, record.tracking_run_id, metrics, tags
        )
        with contextlib.suppress(Exception):  # the decision stands in status either way
            await asyncio.wait_for(logging, TRACKING_TIMEOUT_S)

    # -- stage children ---------------------------------------------------------------------

    async def _previous_curation(
        self, run: Body, status: MedSFTRunStatus
    ) -> PreviousCuration | None:
        """The curation stage of the latest generation (the benchmarks its data was
        decontaminated against), so that an edit that only drops a benchmark reuses it."""
        name = status.history[0].curation_job if status.history else None
        if not name:
            return None
        child = await self.read_child(BY_KIND["CurationJob"], run["metadata"]["namespace"], name)
        if child is None or not names.owned_by(child, run):
            return None
        return PreviousCuration.of_child(child, _hash_of(child))

    async def _stage_child(
        self,
        run: Body,
        plan: RunPlan,
        stage: StagePlan,
        record: GenerationRecord,
        number: int,
        upstream: dict[layout.StageName, str],
    ) -> tuple[Body, int | None]:
        """The stage resource of this generation, and the generation it was reused from."""
        kube, rt = self.ctx.kube, BY_KIND[stage.kind]
        namespace, run_name = run["metadata"]["namespace"], run["metadata"]["name"]
        if stage.ref is not None:
            child = await self.read_child(rt, namespace, stage.ref)
            if child is None:
                raise InputsError("ReferenceNotFound", f"{stage.kind} {stage.ref!r} does not exist")
            return child, None
        recorded = getattr(record, RECORD_FIELD[stage.stage])
        if recorded:
            child = await self.read_child(rt, namespace, recorded)
            if child is not None and names.owned_by(child, run) and _hash_of(child) == stage.hash:
                return child, None
        candidates: list[Body] = []
        if number > 1:  # in generation 1 nothing can be reused; a child made before a crash
            # is found by its name below
            selector = {names.RUN: run_name, names.STAGE_HASH: names.hash_label(stage.hash)}
            candidates = await kube.list(rt, namespace, selector)
        usable = [
            c
            for c in candidates
            if names.owned_by(c, run)  # labels can be copied; only our UID makes it ours
            and _hash_of(c) == stage.hash
            and (c.get("status") or {}).get("phase") != "Failed"
            and not c["metadata"].get("deletionTimestamp")
        ]
        if usable:
            # Prefer a finished one, then the newest.
            usable.sort(
                key=lambda c: (
                    (c.get("status") or {}).get("phase") == "Succeeded",
                    _generation_of(c),
                )
            )
            child = usable[-1]
            origin = _generation_of(child)
            return child, origin if origin != number else None
        name = names.run_stage_name(run_name, stage.stage, number)
        prefixes = self.ctx.config.propagate_annotation_prefixes
        child = await self.ensure_child(
            rt,
            name,
            run,
            lambda: stage_resource(
                run,
                plan,
                stage,
                name=name,
                generation=number,
                upstream=upstream,
                annotations=names.propagated_annotations(run, prefixes),
                tracking_run_id=record.tracking_run_id,
            ),
            new=not recorded,  # never created for this generation (as far as the status says)
        )
        if _hash_of(child) != stage.hash:
            # Left by an attempt that never got recorded (the spec moved on meanwhile).
            await kube.delete(rt, namespace, name)
            raise InputsError(
                "ReplacingStaleChild", f"replacing {stage.kind} {name} made for an older spec"
            )
        return child, None

    async def _delete_superseded(
        self, namespace: str, older: list[GenerationRecord], stage: StagePlan, keep: str, run: Body
    ) -> None:
        """Stop the unfinished child of an older, superseded generation that the current one
        does not use (e.g. training on an outdated recipe)."""
        field = RECORD_FIELD[stage.stage]
        for record in older:
            old_name = getattr(record, field)
            if record.phase is not None or not old_name or old_name == keep:
                continue
            rt = BY_KIND[stage.kind]
            child = await self.ctx.kube.get(rt, namespace, old_name)
            if (
                child is None
                or not names.owned_by(child, run)
                or (child.get("status") or {}).get("phase") in fold.TERMINAL
            ):
                continue
            if await self.ctx.kube.delete(rt, namespace, old_name):
                self.ctx.events.post(
                    run,
                    "Normal",
                    "SupersededDeleted",
                    f"deleted unfinished {stage.kind} {old_name} of superseded generation {record.generation}",
                )

    async def _delete_dropped(
        self,
        run: Body,
        kept: list[GenerationRecord],
        dropped: list[GenerationRecord],
        promoted: int | None,
    ) -> None:
        """Children of generations beyond the history limit go, unless still in use."""
        in_use = {getattr(r, f) for r in kept for f in RECORD_FIELD.values()}
        in_use |= {
            getattr(r, f)
            for r in dropped
            if r.generation == promoted
            for f in RECORD_FIELD.values()
        }
        namespace = run["metadata"]["namespace"]
        for record in dropped:
            for stage in STAGES:
                name = getattr(record, RECORD_FIELD[stage])
                if name and name not in in_use:
                    kind = {"curation": "CurationJob", "sft": "SFTJob", "eval": "EvalJob"}[stage]
                    child = await self.ctx.kube.get(BY_KIND[kind], namespace, name)
                    if child is not None and names.owned_by(child, run):
                        await self.ctx.kube.delete(BY_KIND[kind], namespace, name)

    async def delete_artifacts(self, body: Body) -> None:
        """``artifactPolicy: Delete``: remove the run's storage prefix (the finalizer) — only
        once nothing can write under it any more.

        Every stage resource the run owns is deleted in the foreground: it is gone only after
        its Jobs and PyTorchJobs are, and those only after their pods are (every
        ownerReference on the way blocks its owner's deletion). Until then this raises
        ``kopf.TemporaryError`` and kopf retries; a training pod still in its termination
        grace period may still be writing, and the prefix waits for it.
        """
        run = MedSFTRun.from_manifest(body)
        if run.spec.artifact_policy != "Delete":
            return
        meta = body["metadata"]
        namespace = meta["namespace"]
        remaining = []
        for rt in STAGE_RESOURCES:
            for child in await self.ctx.kube.list(rt, namespace, {names.RUN: meta["name"]}):
                if not names.owned_by(child, body):
                    continue  # a referenced stage of someone else's: not ours to delete
                child_name = child["metadata"]["name"]
                remaining.append(f"{rt.kind} {child_name}")
                if not child["metadata"].get("deletionTimestamp"):
                    await self.ctx.kube.delete(rt, namespace, child_name, propagation="Foreground")
        if remaining:
            raise kopf.TemporaryError(
                f"deleting artifacts after {', '.join(sorted(remaining))} and their pods are gone",
                delay=DELETION_POLL_S,
            )
        storage = resolve_storage(run.spec.storage, self.ctx.config.default_storage)
        root = layout.run_root(storage, namespace, meta["name"])
        deleted = await self.ctx.storage.delete_prefix(namespace, storage, root)
        self.ctx.events.post(
            body, "Normal", "ArtifactsDeleted", f"deleted {deleted} objects under {root}/"
        )
        log.info("deleted %d objects under %s/ for %s/%s", deleted, root, namespace, meta["name"])


def _stage_tracking(
    status: MedSFTRunStatus, kind: str, name: str, child_status: dict, gen: int | None
) -> MedSFTRunStatus:
    """A stage whose tracking is degraded makes the run's ``TrackingDegraded`` True (with
    the stage named); once none is, the run's own state of it stands again."""
    child = next(
        (
            c
            for c in child_status.get("conditions") or []
            if c.get("type") == cond.TRACKING_DEGRADED
        ),
        None,
    )
    mine = cond.get_condition(status.conditions, cond.TRACKING_DEGRADED)
    if child is not None and child.get("status") == "True":
        conditions = cond.set_condition(
            status.conditions,
            cond.TRACKING_DEGRADED,
            "True",
            "StageTrackingDegraded",
            f"{kind} {name}: {child.get('message', '')}",
            gen,
        )
    elif (
        mine is not None
        and mine.reason == "StageTrackingDegraded"
        and mine.message.startswith(f"{kind} {name}:")
    ):
        conditions = cond.set_condition(
            status.conditions, cond.TRACKING_DEGRADED, "False", "Sending", "", gen
        )
    else:
        return status
    return status.model_copy(update={"conditions": conditions})


def _hash_of(child: Body) -> str | None:
    return (child["metadata"].get("annotations") or {}).get(names.STAGE_HASH_FULL)


def _generation_of(child: Body) -> int:
    value = (child["metadata"].get("labels") or {}).get(names.GENERATION, "0")
    return int(value) if value.isdigit() else 0
