"""Reconcilers of the stage kinds: CurationJob, SFTJob and EvalJob.

Each reconcile looks at the world (inputs, children, storage), creates what is missing
under deterministic names and returns the status that describes what it saw. Nothing is
remembered between calls, so an operator killed at any point picks up where it was.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from medsft_operator import diagnose, fold, layout, names
from medsft_operator.api.hashing import spec_hash
from medsft_operator.api.k8s import Phase, StatusBase
from medsft_operator.api.kinds import (
    CurationJob,
    CurationJobSpec,
    EvalJob,
    EvalJobSpec,
    SFTBackend,
    SFTJob,
    SFTJobSpec,
)
from medsft_operator.api.status import CurationJobStatus, EvalJobStatus, SFTJobStatus
from medsft_operator.artifacts import InputsError
from medsft_operator.builders.stage_children import (
    StageInputs,
    curation_children,
    eval_children,
    sft_children,
    stage_inputs,
)
from medsft_operator.fold import StatusT
from medsft_operator.kube import (
    CONFIGMAPS,
    CURATIONJOBS,
    EVALJOBS,
    EVENTS,
    JOBS,
    PODS,
    PYTORCHJOBS,
    SFTJOBS,
    TRAINJOBS,
    WORKLOADS,
    Body,
    NotFound,
    ResourceType,
)
from medsft_operator.plan import PlanError, project, storage_key
from medsft_operator.reconcilers.base import ChildRejected, Reconciler
from medsft_pipelines.contract import Spec
from medsft_pipelines.sft.layout import CHECKPOINTS
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.curation import CurationSpec
from medsft_pipelines.specs.eval import EvalSpec
from medsft_pipelines.specs.sft import SFTSpec
from medsft_pipelines.storage.checkpoints import Shape, shape_conflict
from medsft_pipelines.storage.progress import METRICS_PREFIX


class StageReconciler(Reconciler):
    """What the three stage reconcilers share: a finished stage only records the generation
    it saw; otherwise storage and the stage's own inputs (:meth:`upstream`) are resolved —
    missing ones leave it Pending with a condition naming them — and :meth:`advance` moves
    it on from there."""

    stage: ClassVar[layout.StageName]
    #: The job-config contract the stage's pods read: what its content hash covers.
    pipeline_spec: ClassVar[type[Spec]]

    async def reconcile(self, body: Body, *, poll: bool) -> StatusBase:
        spec = self.parse(body).spec
        status: Any = self.status_of(body)
        gen = body["metadata"].get("generation")
        if status.phase in fold.TERMINAL:
            return status.model_copy(update={"observed_generation": gen})
        try:
            storage = await self.resolve_storage(body["metadata"]["namespace"], spec.storage)
            upstream = await self.upstream(body, spec, status, storage)
        except (InputsError, PlanError) as error:
            return self.pending(status, error, gen)
        status = self.inputs_ready(status, gen)
        try:
            new = await self.advance(body, spec, status, storage, upstream, poll=poll)
        except ChildRejected as rejected:  # the same spec is refused every time
            return fold.apply_phase(status, "Failed", "ChildRejected", str(rejected), gen)
        if new.phase == "Succeeded":  # a stall that passed between two polls is over too
            new = fold.apply_stalled(new, None, gen)
        return new

    async def upstream(self, body: Body, spec: Any, status: Any, storage: StorageSpec) -> Any:
        """What the stage reads from elsewhere (a dataset, models): InputsError while
        missing. Also where a stage checks its other references (Secrets)."""
        return None

    async def advance(
        self, body: Body, spec: Any, status: Any, storage: StorageSpec, upstream: Any, *, poll: bool
    ) -> StatusBase:
        raise NotImplementedError

    async def upstream_result(
        self, rt: ResourceType, namespace: str, name: str, field: str, what: str
    ) -> str:
        """``status.<field>`` of the stage resource ``name`` once it succeeded; InputsError
        (ReferenceNotFound, <what>Failed, <what>NotReady) until then."""
        upstream = await self.ctx.kube.get(rt, namespace, name)
        if upstream is None:
            raise InputsError("ReferenceNotFound", f"{rt.kind} {name!r} does not exist")
        found = upstream.get("status") or {}
        if found.get("phase") == "Failed":
            message = f"{rt.kind} {name!r} failed: {found.get('message', '')}"
            raise InputsError(f"{what}Failed", message)
        if found.get("phase") != "Succeeded" or not found.get(field):
            raise InputsError(f"{what}NotReady", f"waiting for {rt.kind} {name!r} to succeed")
        return str(found[field])

    def inputs(
        self,
        body: Body,
        spec: Any,
        storage: StorageSpec,
        *hashed: str,
        output_uri: str | None = None,
    ) -> StageInputs:
        """The stage's inputs, with the content hash of its spec (as its pods read it), its
        storage and ``hashed`` (the URIs of what it reads from upstream)."""
        config = self.ctx.config
        own_hash = spec_hash(project(spec, self.pipeline_spec), storage_key(storage), *hashed)
        return stage_inputs(
            body,
            self.stage,
            storage=storage,
            image=config.stage_image(self.stage, spec),
            spec_hash=own_hash,
            output_uri=output_uri,
            pull_policy=config.image_pull_policy,
            service_account=config.job_service_account,
            propagate=tuple(config.propagate_annotation_prefixes),
        )

    async def stalled(
        self, status: Any, child: Body, state: fold.ChildState, gen: int | None
    ) -> tuple[Any, bool]:
        """Whether the pods of the unfinished ``child`` cannot start
        (:mod:`medsft_operator.diagnose`): (status, True) with the stage Failed for a
        terminal cause, or with Stalled and the cause as its reason and message (the phase
        as it was); (status with Stalled cleared, False) when nothing holds them."""
        blocked = await self.blocked(child)
        if blocked is None:
            return fold.apply_stalled(status, None, gen), False
        if blocked.terminal:
            return fold.apply_phase(status, "Failed", blocked.reason, blocked.message, gen), True
        status = fold.apply_stalled(status, (blocked.reason, blocked.message), gen)
        phase = active_phase(status, state)
        return fold.apply_phase(status, phase, blocked.reason, blocked.message, gen), True

    async def blocked(self, child: Body) -> diagnose.Blocked | None:
        """Why the pods of ``child`` (a Job, PyTorchJob or TrainJob) do not start."""
        meta = child["metadata"]
        labels = meta.get("labels") or {}
        selector = {
            key: labels[key]
            for key in (names.OWNER_KIND, names.OWNER_NAME, names.ATTEMPT)
            if key in labels
        }
        pods = await self.ctx.kube.list(PODS, meta["namespace"], selector)
        uid = meta.get("uid")
        if child.get("kind") in ("Job", "PyTorchJob"):  # their controller owns the pods
            # (a curation's work and merge Jobs share the stage's labels)
            pods = [
                p
                for p in pods
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
            ]
        events: list[Body] = []
        if uid and not any(diagnose.alive(p) for p in pods):  # refused pods leave no pod
            events = await self.ctx.kube.list(
                EVENTS, meta["namespace"], {}, fields={"involvedObject.uid": uid}
            )
        return diagnose.diagnose(
            pods, events, now=fold.now(), grace_s=self.ctx.config.stall_grace_s
        )

    async def fold_queue(
        self, status: Any, child: Body, state: fold.ChildState, gen: int | None
    ) -> tuple[Any, fold.QueueState | None]:
        """Kueue's view of ``child`` (a queued Job, PyTorchJob or TrainJob) folded into the
        Queued / Admitted / Evicted conditions; (status, None) for a child without a queue
        or already finished."""
        meta = child["metadata"]
        local_queue = (meta.get("labels") or {}).get(names.KUEUE_QUEUE)
        if not local_queue or state.phase in fold.TERMINAL:
            return status, None
        try:
            workloads = await self.ctx.kube.list(
                WORKLOADS, meta["namespace"], {names.KUEUE_JOB_UID: meta.get("uid", "")}
            )
        except NotFound:  # the Workload API is not served: Kueue is not installed
            queue = fold.QueueState(
                True,
                "KueueNotInstalled",
                f"{child['kind']} {meta['name']} waits for Kueue (LocalQueue {local_queue}), "
                f"but {WORKLOADS.plural}.{WORKLOADS.group}/{WORKLOADS.version} is not served",
            )
            return fold.apply_queue(status, queue, local_queue, gen), queue
        newest = max(
            workloads, key=lambda w: w["metadata"].get("creationTimestamp") or "", default=None
        )
        queue = fold.workload_state(newest, local_queue)
        return fold.apply_queue(status, queue, local_queue, gen), queue


def queued(status: StatusT, queue: fold.QueueState | None, gen: int | None) -> StatusT | None:
    """The status of a batch-Job stage that Kueue holds: Queued while it waits, Failed with
    Kueue's reason once Kueue will never admit it (deactivated); None when Kueue holds nothing."""
    if queue is not None and queue.ended is not None:
        reason, message = queue.ended
        return fold.apply_phase(status, "Failed", reason, message, gen)
    if queue is not None and queue.waiting:
        return fold.apply_phase(status, "Queued", queue.reason, queue.message, gen)
    return None


def active_phase(status: StatusBase, state: fold.ChildState) -> Phase:
    """The child's phase, except that a stage that has started stays Running while a
    retry or the next step is still starting."""
    if state.phase == "Pending" and status.start_time is not None:
        return "Running"
    return state.phase


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


@dataclass(frozen=True)
class TrainingBackend:
    """One way of running SFT, behind what the SFT reconciler needs: the resource the
    operator creates per attempt, where its name goes in the status, and how its status
    reads. Retries, resume, Kueue and progress are the same for every backend."""

    kind: SFTBackend
    rt: ResourceType
    status_field: str
    state: Callable[[Body], fold.ChildState]


BACKENDS: dict[str, TrainingBackend] = {
    "PyTorchJob": TrainingBackend(
        "PyTorchJob", PYTORCHJOBS, "pytorch_job_name", fold.pytorchjob_state
    ),
    "TrainJob": TrainingBackend("TrainJob", TRAINJOBS, "train_job_name", fold.trainjob_state),
}


def backend_of(spec: SFTJobSpec, status: SFTJobStatus, default: SFTBackend) -> TrainingBackend:
    """The backend an SFTJob keeps once it started (so a changed default or spec never
    starts a second training beside the first), else the spec's, else the operator's."""
    for backend in BACKENDS.values():
        if getattr(status, backend.status_field):
            return backend
    return BACKENDS[spec.backend or default]


class SFTReconciler(StageReconciler):
    rt = SFTJOBS
    model = SFTJob
    stage = "sft"
    pipeline_spec = SFTSpec

    async def upstream(
        self, body: Body, spec: SFTJobSpec, status: SFTJobStatus, storage: StorageSpec
    ) -> str:
        """The dataset manifest URI (checked once, before the first attempt)."""
        backend = backend_of(spec, status, self.ctx.config.default_sft_backend)
        started = getattr(status, backend.status_field) is not None
        return await self._dataset(body["metadata"]["namespace"], spec, storage, checked=started)

    async def advance(
        self,
        body: Body,
        spec: SFTJobSpec,
        status: SFTJobStatus,
        storage: StorageSpec,
        upstream: str,
        *,
        poll: bool,
    ) -> StatusBase:
        meta = body["metadata"]
        namespace, name, gen = meta["namespace"], meta["name"], meta.get("generation")
        backend = backend_of(spec, status, self.ctx.config.default_sft_backend)
        manifest_uri = upstream
        inputs = self.inputs(body, spec, storage, manifest_uri, output_uri=spec.output_uri)
        output = inputs.output_uri

        def children(attempt: int) -> tuple[Body, Body]:
            return sft_children(
                body,
                spec,
                inputs,
                dataset_manifest_uri=manifest_uri,
                attempt=attempt,
                backend=backend.kind,
                training_runtime=self.ctx.config.training_runtime,
            )

        attempts = await self._attempts(backend, namespace, name, body)
        if not attempts and (
            refusal := await self._shape_refusal(namespace, storage, output, spec)
        ):
            return fold.apply_phase(status, "Failed", "TopologyChanged", refusal, gen)
        if not attempts:
            config_map, first = children(0)
            job = await self.ensure_child(
                backend.rt,
                first["metadata"]["name"],
                body,
                lambda: first,
                needs=lambda: [(CONFIGMAPS, config_map)],
                new=True,  # the list of attempts was empty
            )
            attempts = {0: job}
        attempt = max(attempts)
        job = attempts[attempt]
        state = backend.state(job)
        status = status.model_copy(
            update={
                backend.status_field: job["metadata"]["name"],
                "restarts": attempt + (1 if state.restarted else 0),
                "spec_hash": inputs.run.spec_hash,
            }
        )
        if poll or state.phase in fold.TERMINAL:
            status = await self._fold_progress(status, namespace, storage, output, spec.nodes)

        async def failed(state: fold.ChildState, status: SFTJobStatus) -> StatusBase:
            """Attempt ``attempt`` ended without a model: the next one, or Failed once the
            retry budget is spent."""
            failed = job["metadata"]["name"]
            if attempt < spec.backoff_limit:
                if running := await self._live_pods(namespace, name, attempt):
                    message = (
                        f"{backend.kind} {failed} failed ({state.reason}); attempt "
                        f"{attempt + 2} starts once its {running} pod(s) have terminated"
                    )
                    return fold.apply_phase(status, "Running", "WaitingForPods", message, gen)
                if refusal := await self._shape_refusal(namespace, storage, output, spec):
                    return fold.apply_phase(status, "Failed", "TopologyChanged", refusal, gen)
                resume = status.latest_checkpoint_uri
                config_map, retry = children(attempt + 1)
                self.ctx.events.post(
                    body,
                    "Warning",
                    "Retrying",
                    f"{backend.kind} {failed} failed ({state.reason}); attempt {attempt + 2} of "
                    f"{spec.backoff_limit + 1} resumes from {resume or 'the start'}",
                )
                created = await self.ensure_child(
                    backend.rt,
                    retry["metadata"]["name"],
                    body,
                    lambda: retry,
                    needs=lambda: [(CONFIGMAPS, config_map)],
                    new=True,  # newer than every listed attempt
                )
                status = status.model_copy(
                    update={
                        backend.status_field: created["metadata"]["name"],
                        "restarts": attempt + 1,
                    }
                )
                return fold.apply_phase(
                    status, "Running", "Retrying", f"retrying after {state.reason}", gen
                )
            message = f"{backend.kind} {failed} failed ({state.reason}) after {attempt + 1} attempt(s): {state.message}"
            return fold.apply_phase(status, "Failed", state.reason, message, gen)

        if state.phase == "Failed":
            return await failed(state, status)
        if state.phase == "Succeeded":
            model = layout.model_uri(output)
            marker = layout.join_uri(output, layout.SFT_EXPORT_MARKER)
            if not await self.ctx.storage.exists(namespace, storage, marker):
                message = f"training succeeded but the model export {model} is not complete"
                return fold.apply_phase(status, "Failed", "ModelMissing", message, gen)
            status = status.model_copy(update={"model_uri": model})
            return fold.apply_phase(
                status, "Succeeded", "ModelReady", f"model exported to {model}", gen
            )
        # An eviction re-suspends this same job: no new attempt, no retry spent; when
        # Kueue re-admits it, its pods start again and resume from the newest checkpoint.
        status, queue = await self.fold_queue(status, job, state, gen)
        if queue is not None and queue.ended is not None:
            # Kueue will never admit this attempt again (its job would wait suspended for
            # good): it has failed, with Kueue's reason, and spends an attempt.
            reason, message = queue.ended
            return await failed(fold.ChildState("Failed", reason, message), status)
        if queue is not None and queue.waiting:
            message = queue.message
            if queue.evicted is not None:
                resume = status.latest_checkpoint_uri or "the start"
                message = f"{message}; resumes from {resume} when re-admitted"
            return fold.apply_phase(status, "Queued", queue.reason, message, gen)
        # A terminal cause fails the stage, not the attempt: a retry would meet it again.
        status, stuck = await self.stalled(status, job, state, gen)
        if stuck:
            return status
        message = state.message or "training"
        return fold.apply_phase(status, active_phase(status, state), state.reason, message, gen)

    async def _dataset(
        self, namespace: str, spec: SFTJobSpec, storage: StorageSpec, *, checked: bool
    ) -> str:
        """The manifest URI to train on; InputsError while it is missing or not ready."""
        dataset = spec.dataset
        assert dataset is not None
        if dataset.curation_job_ref is not None:
            ref = dataset.curation_job_ref.name
            return await self.upstream_result(
                CURATIONJOBS, namespace, ref, "manifestUri", "Dataset"
            )
        uri = str(dataset.manifest_uri)
        if (
            not checked
            and uri.startswith("s3://")
            and await self.ctx.storage.manifest(namespace, storage, uri) is None
        ):
            raise InputsError("DatasetNotFound", f"dataset manifest {uri} does not exist")
        return uri

    async def _attempts(
        self, backend: TrainingBackend, namespace: str, name: str, owner: Body
    ) -> dict[int, Body]:
        """This SFTJob's PyTorchJobs (or TrainJobs) by attempt number (only those it owns:
        labels can be copied by anyone)."""
        jobs = await self.ctx.kube.list(
            backend.rt, namespace, {names.OWNER_KIND: "SFTJob", names.OWNER_NAME: name}
        )
        found: dict[int, Body] = {}
        for job in jobs:
            if not names.owned_by(job, owner):
                continue
            label = (job["metadata"].get("labels") or {}).get(names.ATTEMPT, "")
            if label.isdigit():
                found[int(label)] = job
        return found

    async def _shape_refusal(
        self, namespace: str, storage: StorageSpec, output: str, spec: SFTJobSpec
    ) -> str | None:
        """Why an attempt of ``spec``'s shape must not start on the checkpoints already in
        ``output`` (written by a job of other nodes x GPUs: its trainer would refuse them,
        attempt after attempt, where before it silently trained from step 0), or None."""
        if not spec.checkpointing.resume:
            return None
        root = await self.ctx.storage.store(
            namespace, storage, layout.join_uri(output, CHECKPOINTS)
        )
        shape = Shape(spec.nodes, spec.gpus_per_node)
        return await self.ctx.storage.call(lambda: shape_conflict(root, shape))

    async def _live_pods(self, namespace: str, name: str, attempt: int) -> int:
        """How many pods of attempt ``attempt`` still run (or may). The PyTorchJob's
        ``cleanPodPolicy: Running`` deletes them; until they are gone, a survivor would hold GPUs
        and write checkpoints beside the next attempt."""
        selector = {
            names.OWNER_KIND: "SFTJob",
            names.OWNER_NAME: name,
            names.ATTEMPT: str(attempt),
        }
        pods = await self.ctx.kube.list(PODS, namespace, selector)
        return len(fold.live_pods(pods, fold.now()))

    async def _fold_progress(
        self, status: SFTJobStatus, namespace: str, storage: StorageSpec, output: str, nodes: int
    ) -> SFTJobStatus:
        """Progress, the newest metrics record and the newest complete checkpoint."""
        progress = await self.ctx.storage.progress(namespace, storage, output)
        store = await self.ctx.storage.store(namespace, storage, output)

        def last_metrics() -> dict[str, Any] | None:
            # Only the newest segment: a long run's metrics are never read whole.
            segments = store.list(f"{METRICS_PREFIX}main-")
            if not segments:
                return None
            lines = store.get_bytes(segments[-1]).decode().strip().splitlines()
            return dict(json.loads(lines[-1])) if lines else None

        record = await self.ctx.storage.call(last_metrics)
        status = fold.fold_sft_progress(status, progress, record)
        status = fold.fold_tracking(status, progress, status.observed_generation)
        checkpoint = await self.ctx.storage.latest_checkpoint(namespace, storage, output, nodes)
        if checkpoint:
            status = status.model_copy(update={"latest_checkpoint_uri": checkpoint})
        return status


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
