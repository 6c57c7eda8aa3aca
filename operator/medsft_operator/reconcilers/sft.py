"""The SFTJob reconciler and its training backends (PyTorchJob, TrainJob): one child per
attempt, retries that resume from the newest checkpoint, the exported model."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medsft_operator import fold, layout, names
from medsft_operator.api.k8s import StatusBase
from medsft_operator.api.kinds import (
    SFTBackend,
    SFTJob,
    SFTJobSpec,
)
from medsft_operator.api.status import SFTJobStatus
from medsft_operator.builders.stage_children import (
    sft_children,
)
from medsft_operator.kube import (
    CONFIGMAPS,
    CURATIONJOBS,
    PODS,
    PYTORCHJOBS,
    SFTJOBS,
    TRAINJOBS,
    Body,
    ResourceType,
)
from medsft_operator.reconcilers.errors import InputsError
from medsft_operator.reconcilers.stage import StageReconciler, active_phase
from medsft_pipelines.sft.layout import CHECKPOINTS
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.specs.sft import SFTSpec
from medsft_pipelines.storage.checkpoints import Shape, shape_conflict
from medsft_pipelines.storage.errors import OutOfBudget, StorageError
from medsft_pipelines.storage.progress import METRICS_PREFIX

log = logging.getLogger("medsft.operator")
STORAGE_UNAVAILABLE = "StorageUnavailable"  # the class name the stages report it by


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
        store_down: StorageError | None = None  # what the operator's own read met
        if poll or state.phase in fold.TERMINAL:
            try:
                status = await self._fold_progress(status, namespace, storage, output, spec.nodes)
            except OutOfBudget:
                raise  # no longer the leader: act no more
            except StorageError as exc:
                if state.phase != "Failed":
                    raise
                # The attempt failed, maybe of this very outage: say why now, with the
                # progress last read, rather than retry until the store answers again.
                log.warning("SFTJob %s/%s: progress not read: %s", namespace, name, exc)
                store_down = exc

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

                def waiting_for_store(error: StorageError) -> StatusBase:
                    # The next attempt starts from what the store holds (its progress, its
                    # checkpoints): once the store answers. Until then the status says so.
                    message = (
                        f"{backend.kind} {failed} failed ({state.reason}); attempt "
                        f"{attempt + 2} starts once the object store answers: {error}"
                    )
                    return fold.apply_phase(status, "Running", STORAGE_UNAVAILABLE, message, gen)

                if store_down is not None:
                    return waiting_for_store(store_down)
                try:
                    refusal = await self._shape_refusal(namespace, storage, output, spec)
                except OutOfBudget:
                    raise
                except StorageError as exc:
                    return waiting_for_store(exc)
                if refusal:
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
            explained = await self.explain_failure(job, state)
            if explained is state and store_down is not None:
                # No pod said more (the training operator may have deleted them), and the
                # operator cannot reach the store either: that is the likeliest cause.
                message = f"{state.message}; the object store does not answer: {store_down}"
                explained = fold.ChildState(state.phase, STORAGE_UNAVAILABLE, message)
            return await failed(explained, status)
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
