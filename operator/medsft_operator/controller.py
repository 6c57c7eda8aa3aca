"""The controller: serialises reconciles per object, writes status, counts, retries.

kopf delivers the triggers (creation, spec changes, timers, children's events); this
class turns each into one reconcile of one object under that object's lock, writes the
status only when it changed (guarded by ``resourceVersion``), posts Events for
transitions, and converts unexpected errors into ``kopf.TemporaryError`` with
exponential backoff — with every secret value scrubbed from what it logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import kopf

from medsft_operator import fold, metrics, names
from medsft_operator.api.k8s import StatusBase
from medsft_operator.kube import (
    BY_KIND,
    MEDSFTRUNS,
    Body,
    Conflict,
    NotFound,
)
from medsft_operator.reconcilers.base import (
    KNOWN,
    ChildConflict,
    Context,
    InvalidSpec,
    Reconciler,
)
from medsft_operator.reconcilers.curation import CurationReconciler
from medsft_operator.reconcilers.eval import EvalReconciler
from medsft_operator.reconcilers.run import RunReconciler
from medsft_operator.reconcilers.sft import SFTReconciler

log = logging.getLogger("medsft.operator")

MAX_PASSES = 5  # status write conflicts within one trigger


class Controller:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.run = RunReconciler(ctx)  # also the finalizer of artifactPolicy: Delete
        self.reconcilers: dict[str, Reconciler] = {
            r.rt.plural: r
            for r in (CurationReconciler(ctx), SFTReconciler(ctx), EvalReconciler(ctx), self.run)
        }
        self.phases = metrics.PhaseTracker()
        self._child_states: dict[str, tuple[Any, ...]] = {}  # child uid -> what owners look at
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._slots = asyncio.Semaphore(ctx.config.max_concurrent_reconciles)

    def _lock(self, plural: str, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((plural, namespace, name), asyncio.Lock())

    def forget(self, plural: str, namespace: str, name: str) -> None:
        """The object is gone: drop its lock and its phase gauge."""
        self._locks.pop((plural, namespace, name), None)
        self.phases.forget(self.reconcilers[plural].rt.kind, namespace, name)

    async def reconcile(
        self, plural: str, body: Body, *, poll: bool = False, retry: int = 0
    ) -> None:
        """One reconcile of ``body`` (a kopf body or a fresh GET), retried by kopf on error."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        reconciler = self.reconcilers[plural]
        kind = reconciler.rt.kind
        trigger = "poll" if poll else "event"
        metrics.TRIGGER.set(trigger)  # this task's API requests are counted under it
        started = time.perf_counter()
        async with self._lock(plural, namespace, name), self._slots:
            try:
                await self._reconcile(reconciler, dict(body), poll=poll)
            except InvalidSpec as exc:
                # The apiserver validated the spec against the CRD: what only the models know
                # (benchmark names of the registry) or a drifted CRD gets here. Say so in the
                # status, without creating anything, instead of retrying forever.
                metrics.RECONCILES.labels(kind=kind, result="invalid", trigger=trigger).inc()
                await self._invalid(reconciler, body, exc)
                return
            except Exception as exc:
                metrics.RECONCILES.labels(kind=kind, result="error", trigger=trigger).inc()
                metrics.RECONCILE_ERRORS.labels(kind=kind, error=type(exc).__name__).inc()
                delay = min(
                    self.ctx.config.retry_backoff_s * 2**retry, self.ctx.config.retry_backoff_max_s
                )
                text = self.ctx.storage.redact(f"{type(exc).__name__}: {exc}")[:500]
                log.warning(
                    "reconcile of %s %s/%s failed (retry in %.0fs): %s",
                    kind,
                    namespace,
                    name,
                    delay,
                    text,
                )
                raise kopf.TemporaryError(text, delay=delay) from None
            finally:
                metrics.RECONCILE_DURATION.labels(kind=kind).observe(time.perf_counter() - started)
        metrics.RECONCILES.labels(kind=kind, result="ok", trigger=trigger).inc()

    async def reconcile_named(
        self, plural: str, namespace: str, name: str, *, poll: bool = False
    ) -> None:
        """Reconcile an object known by name (a child changed, or a poll): read it fresh."""
        metrics.TRIGGER.set("poll" if poll else "event")
        body = await self.ctx.kube.get(self.reconcilers[plural].rt, namespace, name)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            await self.reconcile(plural, body, poll=poll)

    async def child_changed(self, child: Body, *, deleted: bool = False) -> None:
        """A Job, PyTorchJob or stage resource we own changed: reconcile its owner — if
        what its owner looks at changed (most events are other fields, or the echo of our
        own create)."""
        meta = child["metadata"]
        labels = meta.get("labels") or {}
        owner_kind, owner_name = labels.get(names.OWNER_KIND), labels.get(names.OWNER_NAME)
        if owner_kind not in BY_KIND or not owner_name:
            return
        plural = BY_KIND[owner_kind].plural
        if plural not in self.reconcilers:
            return
        uid = meta.get("uid", "")
        if deleted:
            self._child_states.pop(uid, None)
        else:
            state = fold.observed_state(child)
            previous = self._child_states.get(uid)
            self._child_states[uid] = state
            if state == previous or (previous is None and state == fold.UNOBSERVED):
                return
        KNOWN.set({(child["kind"], meta["namespace"], meta["name"]): child})
        await self.reconcile_named(plural, meta["namespace"], owner_name)

    async def _reconcile(self, reconciler: Reconciler, body: Body, *, poll: bool) -> None:
        for _ in range(MAX_PASSES):
            if body["metadata"].get("deletionTimestamp"):
                return
            old = reconciler.status_of(body)
            try:
                new = await reconciler.reconcile(body, poll=poll)
            except ChildConflict as conflict:  # not ours: wait, saying which object blocks
                new = reconciler.pending(old, conflict, body["metadata"].get("generation"))
            try:
                await self._write_status(reconciler, body, old, new)
                return
            except Conflict:  # changed since we read it: start over from a fresh copy
                fresh = await self.ctx.kube.get(
                    reconciler.rt, body["metadata"]["namespace"], body["metadata"]["name"]
                )
                if fresh is None:
                    return
                body = fresh
                # What the lost pass read from the store (progress, the newest checkpoint)
                # is in no status yet: read it again. Otherwise a pass that, say, started
                # an SFT retry would be redone without it, and the status would name the
                # retry but not the checkpoint it resumes from until the next poll.
                poll = True
        log.warning(
            "reconcile of %s/%s did not settle in %d passes",
            reconciler.rt.kind,
            body["metadata"]["name"],
            MAX_PASSES,
        )

    async def _write_status(
        self, reconciler: Reconciler, body: Body, old: StatusBase, new: StatusBase
    ) -> Body | None:
        """Patch the status if it changed; the object as written (None if it is gone)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        self.phases.set(reconciler.rt.kind, namespace, name, new.phase)
        current: dict[str, Any] = body.get("status") or {}
        wanted = new.to_wire()
        if wanted == current:
            return body
        patch = {
            "metadata": {"resourceVersion": meta["resourceVersion"]},
            "status": merge_patch(current, wanted),
        }
        try:
            written = await self.ctx.kube.patch_status(reconciler.rt, namespace, name, patch)
        except NotFound:
            return None
        for type_, reason, message in fold.transition_events(old, new):
            self.ctx.events.post(body, type_, reason, message)
        return written

    async def _invalid(self, reconciler: Reconciler, body: Body, exc: InvalidSpec) -> None:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.error.errors()[:5]
        )
        status = reconciler.status_of(body)
        generation = body["metadata"].get("generation")
        new = fold.apply_phase(
            status, "Failed", "InvalidSpec", f"invalid spec: {errors}", generation
        )
        with contextlib.suppress(Conflict, NotFound):
            await self._write_status(reconciler, body, status, new)

    def needs_polling(self, plural: str, body: Body) -> bool:
        """Whether the timer should reconcile this object: a stage while unfinished (its
        progress is in storage, not in any event); a run only while waiting for inputs
        (its stages' events drive it otherwise)."""
        status = body.get("status") or {}
        if body["metadata"].get("deletionTimestamp") or status.get("phase") in fold.TERMINAL:
            return False
        if plural != MEDSFTRUNS.plural:
            return True
        inputs = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "InputsReady"), None
        )
        return inputs is not None and inputs.get("status") == "False"


def merge_patch(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``current`` into ``wanted``: keys gone from ``wanted`` are
    set to null at every level (a nested object is merged, not replaced, by a merge patch)."""
    patch: dict[str, Any] = {k: None for k in current if k not in wanted}
    for key, value in wanted.items():
        old = current.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            patch[key] = merge_patch(old, value)
        else:
            patch[key] = value
    return patch


__all__ = ["MEDSFTRUNS", "Controller"]
