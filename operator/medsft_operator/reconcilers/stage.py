"""What the reconcilers of the three stage kinds share (:class:`StageReconciler`).

Each reconcile looks at the world (inputs, children, storage), creates what is missing
under deterministic names and returns the status that describes what it saw. Nothing is
remembered between calls, so an operator killed at any point picks up where it was.
The kinds themselves have a file each: :mod:`.curation`, :mod:`.sft`, :mod:`.eval`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from medsft_operator import diagnose, fold, layout, names
from medsft_operator.api.hashing import spec_hash
from medsft_operator.api.k8s import Phase, StatusBase
from medsft_operator.builders.stage_children import (
    StageInputs,
    stage_inputs,
)
from medsft_operator.fold import StatusT
from medsft_operator.kube import (
    EVENTS,
    PODS,
    WORKLOADS,
    Body,
    NotFound,
    ResourceType,
)
from medsft_operator.plan import PlanError, project, storage_key
from medsft_operator.reconcilers.base import ChildRejected, Reconciler
from medsft_operator.reconcilers.errors import InputsError
from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import StorageSpec


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

    async def child_pods(self, child: Body) -> list[Body]:
        """The pods of ``child`` (a Job, PyTorchJob or TrainJob), by the stage's labels."""
        meta = child["metadata"]
        labels = meta.get("labels") or {}
        selector = {
            key: labels[key]
            for key in (names.OWNER_KIND, names.OWNER_NAME, names.ATTEMPT)
            if key in labels
        }
        pods = await self.ctx.kube.list(PODS, meta["namespace"], selector)
        if child.get("kind") in ("Job", "PyTorchJob"):  # their controller owns the pods
            # (a curation's work and merge Jobs share the stage's labels)
            uid = meta.get("uid")
            pods = [
                p
                for p in pods
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])
            ]
        return pods

    async def blocked(self, child: Body) -> diagnose.Blocked | None:
        """Why the pods of ``child`` (a Job, PyTorchJob or TrainJob) do not start."""
        meta = child["metadata"]
        pods = await self.child_pods(child)
        uid = meta.get("uid")
        events: list[Body] = []
        if uid and not any(diagnose.alive(p) for p in pods):  # refused pods leave no pod
            events = await self.ctx.kube.list(
                EVENTS, meta["namespace"], {}, fields={"involvedObject.uid": uid}
            )
        return diagnose.diagnose(
            pods, events, now=fold.now(), grace_s=self.ctx.config.stall_grace_s
        )

    async def explain_failure(self, child: Body, state: fold.ChildState) -> fold.ChildState:
        """``state`` of the failed ``child`` with the cause its pods left
        (:func:`diagnose.failure_cause`): their reason (``StorageUnavailable``,
        ``OOMKilled``...) instead of the controller's generic one, and their words after
        the controller's. Unchanged when no pod says more (they may be gone)."""
        cause = diagnose.failure_cause(await self.child_pods(child))
        if cause is None:
            return state
        message = "; ".join(part for part in (state.message, cause.message) if part)
        return fold.ChildState(state.phase, cause.reason, message, state.restarted)

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
