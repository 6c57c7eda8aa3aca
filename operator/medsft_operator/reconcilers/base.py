"""What every reconciler shares: the context, events, inputs and child creation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, cast

from pydantic import ValidationError

from medsft_operator import fold, metrics, names
from medsft_operator.api.k8s import Resource, StatusBase
from medsft_operator.artifacts import StorageAccess
from medsft_operator.config import OperatorConfig
from medsft_operator.kube import EVENTS, Body, Conflict, Kube, KubeError, ResourceType
from medsft_operator.plan import PlanError, resolve_storage
from medsft_operator.reconcilers.errors import InputsError
from medsft_pipelines.specs.common import StorageSpec

log = logging.getLogger("medsft.operator")


#: Children delivered by the event that triggered the current reconcile: (kind, ns, name) -> body.
KNOWN: ContextVar[Mapping[tuple[str, str, str], Body]] = ContextVar(
    "medsft_known_children", default=MappingProxyType({})
)


class EventSink:
    """Posts Kubernetes Events through kopf's background poster (never blocks a reconcile).

    kopf's poster is reachable only from its handlers (its settings and queue are
    ContextVars): a reconcile started by the :class:`~medsft_operator.poller.Poller` — where
    pods that cannot start are noticed, and inputs that appear — posts through ``kube``
    itself, in the background too. Without either (unit tests, ``medsft render``) events
    are only recorded.
    """

    def __init__(self, redact: Any = None, kube: Kube | None = None) -> None:
        self.redact = redact or (lambda text: text)
        self.kube = kube
        self.recorded: list[tuple[str, str, str, str]] = []
        self._posting: set[asyncio.Task[None]] = set()

    def post(self, body: Body, type_: str, reason: str, message: str) -> None:
        message = self.redact(message)[:1024]
        self.recorded.append((body["metadata"]["name"], type_, reason, message))
        try:
            import kopf

            kopf.event(cast(kopf.Body, body), type=type_, reason=reason, message=message)
        except LookupError:  # no kopf context (kopf's settings are a ContextVar)
            self._post_directly(body, type_, reason, message)

    def _post_directly(self, body: Body, type_: str, reason: str, message: str) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.kube is None:
            return
        task = loop.create_task(self._create(self.kube, event_of(body, type_, reason, message)))
        self._posting.add(task)  # a task nobody holds may be collected before it ran
        task.add_done_callback(self._posting.discard)

    @staticmethod
    async def _create(kube: Kube, event: Body) -> None:
        try:
            await kube.create(EVENTS, event)
        except Exception as exc:  # an Event is best effort, as kopf's are
            log.warning("could not post event %s: %s", event["reason"], type(exc).__name__)


def event_of(body: Body, type_: str, reason: str, message: str) -> Body:
    """A core/v1 Event about ``body``, as kopf's poster writes them."""
    meta = body["metadata"]
    now = fold.now().isoformat().replace("+00:00", "Z")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": names.OPERATOR_NAME},
        "reportingComponent": names.OPERATOR_NAME,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


@dataclass
class Context:
    """Everything a reconciler talks to."""

    kube: Kube
    storage: StorageAccess
    config: OperatorConfig
    events: EventSink = field(default_factory=EventSink)


class InvalidSpec(Exception):
    """The resource's own spec does not validate: a name the benchmark registry does not know
    (the CRD cannot list them), or a CRD out of step with the models. A permanent failure,
    reported in the status."""

    def __init__(self, error: ValidationError) -> None:
        super().__init__(str(error))
        self.error = error


class ChildConflict(InputsError):
    """An object with a child's name exists but is not ours (no ownerReference to the owner's
    UID): created by someone else, or left by an earlier object of the same name. It is never
    adopted (nor trusted, replaced or deleted); the owner waits, with a condition naming it,
    until it is gone."""

    def __init__(self, rt: ResourceType, found: Body, owner: Body) -> None:
        meta = found["metadata"]
        owners = [
            f"{r.get('kind')} {r.get('name')} (uid {r.get('uid')})"
            for r in meta.get("ownerReferences") or []
        ]
        super().__init__(
            "ChildConflict",
            f"{rt.kind} {meta['namespace']}/{meta['name']} already exists and is not owned by "
            f"this {owner['kind']} (uid {owner['metadata'].get('uid')}; its owners: "
            f"{', '.join(owners) or 'none'}); delete or rename it to continue",
        )
        self.kind, self.namespace, self.name = rt.kind, meta["namespace"], meta["name"]


class ChildRejected(Exception):
    """The apiserver refuses a child as invalid (422): a pod template Kubernetes' own rules
    reject, or a cluster policy (ValidatingAdmissionPolicy) that denies it. The same spec
    is refused every time, so the stage fails with the apiserver's message instead of
    retrying forever (``medsft validate`` says the same before anything is applied)."""

    def __init__(self, rt: ResourceType, name: str, message: str) -> None:
        super().__init__(f"the apiserver refused {rt.kind} {name}: {message}")
        self.kind, self.name = rt.kind, name


def check_owned(rt: ResourceType, found: Body, owner: Body) -> Body:
    """``found`` if ``owner`` owns it; :class:`ChildConflict` otherwise."""
    if not names.owned_by(found, owner):
        raise ChildConflict(rt, found, owner)
    return found


class Reconciler:
    """Base of the four reconcilers: observe, act (idempotently), return the new status."""

    rt: ClassVar[ResourceType]
    model: ClassVar[type[Resource]]

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def status_of(self, body: Body) -> StatusBase:
        status_type = self.model.model_fields["status"].annotation.__args__[0]  # type: ignore[union-attr]
        raw = body.get("status") or {}
        try:
            return status_type.model_validate(raw)
        except ValueError:
            log.warning(
                "ignoring an unreadable status of %s/%s", self.rt.kind, body["metadata"]["name"]
            )
            return status_type()

    def parse(self, body: Body) -> Any:
        """The resource as its model; :class:`InvalidSpec` if it does not validate."""
        try:
            return self.model.from_manifest(body)
        except ValidationError as exc:
            raise InvalidSpec(exc) from None

    async def reconcile(self, body: Body, *, poll: bool) -> StatusBase:
        raise NotImplementedError

    # -- shared steps ----------------------------------------------------------------------

    def pending(self, status: Any, error: InputsError | PlanError, generation: int | None) -> Any:
        """Inputs missing: a condition naming what and why; re-checked by the timer."""
        reason = error.reason
        message = str(error)
        status = fold.apply_inputs(status, False, reason, message, generation)
        return fold.apply_phase(status, "Pending", reason, message, generation)

    def inputs_ready(self, status: Any, generation: int | None) -> Any:
        return fold.apply_inputs(status, True, "InputsReady", "inputs are available", generation)

    async def resolve_storage(self, namespace: str, *candidates: StorageSpec | None) -> StorageSpec:
        """The storage to use, with its Secret checked (PlanError / InputsError otherwise)."""
        storage = resolve_storage(*candidates, self.ctx.config.default_storage)
        await self.ctx.storage.settings(namespace, storage)
        return storage

    async def read_child(self, rt: ResourceType, namespace: str, name: str) -> Body | None:
        """A child as the event that triggered this reconcile delivered it, else read."""
        known = KNOWN.get().get((rt.kind, namespace, name))
        return known if known is not None else await self.ctx.kube.get(rt, namespace, name)

    async def ensure_child(
        self,
        rt: ResourceType,
        name: str,
        owner: Body,
        build: Callable[[], Body],
        *,
        needs: Callable[[], list[tuple[ResourceType, Body]]] = list,
        new: bool = False,
    ) -> Body:
        """The child ``name``, created from ``build()`` if absent (after the objects it
        ``needs``, e.g. its ConfigMap); an Event and a metric when it is new.

        Manifests are built only when something is created: in the steady state a
        reconcile reads its children and renders nothing. ``new``: the owner's status says
        it never created this child, so try creating before reading (one request, not two).
        Only what ``owner`` owns (by UID) is ever returned: an object of the same name
        without that ownerReference raises :class:`ChildConflict` (also for ``needs``: a
        foreign ConfigMap must never configure our pods).
        """
        namespace = owner["metadata"]["namespace"]
        if not new:
            existing = await self.read_child(rt, namespace, name)
            if existing is not None:
                return check_owned(rt, existing, owner)
        for need_rt, need in needs():  # new alongside the child: create, no read first
            try:
                await self.ctx.kube.create(need_rt, need)
            except Conflict:
                meta = need["metadata"]
                found = await self.ctx.kube.get(need_rt, meta["namespace"], meta["name"])
                if found is not None:
                    check_owned(need_rt, found, owner)
        try:
            child, created = await self.ctx.kube.ensure(rt, build(), create_first=new)
        except KubeError as error:
            if error.status == 422:
                raise ChildRejected(rt, name, error.message) from None
            raise
        check_owned(rt, child, owner)
        if created:
            metrics.CHILDREN_CREATED.labels(kind=rt.kind).inc()
            if rt.kind != "ConfigMap":
                self.ctx.events.post(owner, "Normal", "Created", f"Created {rt.kind} {name}")
        return child
