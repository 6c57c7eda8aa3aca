"""kopf handlers: thin adapters from kopf's triggers to the :class:`Controller`.

* spec created / changed / operator resumed -> reconcile (kopf retries TemporaryError);
* any event on a medsft object -> the :class:`Poller` learns whether it needs polling
  (unfinished: progress folded from storage; waiting: missing inputs re-checked);
* an owned Job, PyTorchJob, TrainJob (where served) or stage resource changed -> reconcile
  its owner at once;
* a MedSFTRun with ``artifactPolicy: Delete`` is deleted -> the finalizer empties its prefix.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import kopf

from medsft_operator import names
from medsft_operator.api.k8s import GROUP, VERSION
from medsft_operator.controller import Controller
from medsft_operator.kube import JOBS, PYTORCHJOBS, TRAINJOBS
from medsft_operator.poller import Poller

KINDS = ("curationjobs", "sftjobs", "evaljobs", "medsftruns")
STAGE_KINDS = ("curationjobs", "sftjobs", "evaljobs")
# kopf's finalizer: only on a MedSFTRun with ``artifactPolicy: Delete`` (its deletion handler).
FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP  # kopf's bookkeeping annotations: medsft.io/last-handled-configuration


def configure(settings: kopf.OperatorSettings, *, max_workers: int) -> None:
    """kopf settings: bookkeeping in annotations (the CRD status schema has no room for
    kopf's), our own finalizer name, no dynamic CRD/namespace scanning (less RBAC), Events
    only from explicit calls and warnings, bounded concurrency."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4  # only kopf's own sync helpers: ours are async
    # At most this many objects in processing per resource kind, each worker leaving soon
    # after its object goes quiet: a burst of hundreds of new objects waits in the watch
    # stream instead of holding hundreds of bodies (and their copies) in memory at once.
    settings.queueing.worker_limit = max_workers
    settings.queueing.idle_timeout = 0.5


def register(
    registry: kopf.OperatorRegistry,
    controller: Controller,
    *,
    poller: Poller,
    login: Any,
    train_jobs: bool = False,
) -> None:
    """Register every handler of the operator on ``registry``; TrainJobs are watched only
    when ``train_jobs`` (the cluster serves them: a watch on an unserved API fails)."""
    kopf.on.login(registry=registry)(login)
    backoff = controller.ctx.config.retry_backoff_s

    for plural in KINDS:

        async def reconcile(body: kopf.Body, retry: int, _plural: str = plural, **_: Any) -> None:
            await controller.reconcile(_plural, dict(body), retry=retry)

        async def observed(body: kopf.Body, type: str, _plural: str = plural, **_: Any) -> None:
            deleted = type == "DELETED"
            poller.observe(_plural, dict(body), deleted=deleted)
            if deleted:
                meta = body["metadata"]
                controller.forget(_plural, meta["namespace"], meta["name"])

        for decorator in (kopf.on.create, kopf.on.resume):
            decorator(GROUP, VERSION, plural, id="reconcile", backoff=backoff, registry=registry)(
                reconcile
            )
        kopf.on.update(
            GROUP, VERSION, plural, id="reconcile", field="spec", backoff=backoff, registry=registry
        )(reconcile)
        kopf.on.event(GROUP, VERSION, plural, id="observe", registry=registry)(observed)

    async def child_changed(body: kopf.Body, type: str, **_: Any) -> None:
        # On errors the owner's own retries and the poller take over.
        with contextlib.suppress(kopf.TemporaryError):
            await controller.child_changed(dict(body), deleted=type == "DELETED")

    managed = {names.MANAGED_BY: names.OPERATOR_NAME}
    for rt in (JOBS, PYTORCHJOBS, *((TRAINJOBS,) if train_jobs else ())):
        kopf.on.event(
            rt.group, rt.version, rt.plural, id="owner", labels=managed, registry=registry
        )(child_changed)
    for plural in STAGE_KINDS:
        # Stage resources of a run report to the run.
        kopf.on.event(
            GROUP,
            VERSION,
            plural,
            id="run",
            labels={names.RUN: kopf.PRESENT, **managed},
            registry=registry,
        )(child_changed)

    async def finalize(body: kopf.Body, **_: Any) -> None:
        await controller.run.delete_artifacts(dict(body))

    kopf.on.delete(
        GROUP,
        VERSION,
        "medsftruns",
        id="artifacts",
        field="spec.artifactPolicy",
        value="Delete",
        backoff=backoff,
        retries=None,  # until the stages' pods are gone, however long their grace period
        registry=registry,
    )(finalize)
