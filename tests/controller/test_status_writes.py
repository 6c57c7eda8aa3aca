"""A reconcile whose status write loses to another writer is redone from a fresh copy, and
the redo reads the object store again: what the lost pass read (progress, the newest
checkpoint) is in no status yet. Found as a flake of test_trainjob.py: an SFTJob's status
named its retry but not the checkpoint the retry resumes from, until the next poll.

The controller runs in this process against the real apiserver, and the conflict is real
(another client writes the object mid-reconcile); only the reconciler is the test's own,
recording whether each pass was asked to read the store."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from controller.operator_harness import curation_spec, resource

from medsft_operator import fold
from medsft_operator.artifacts import StorageAccess
from medsft_operator.config import OperatorConfig
from medsft_operator.controller import Controller
from medsft_operator.kube import Kube
from medsft_operator.reconcilers.base import Context
from medsft_operator.reconcilers.curation import CurationReconciler


class InterruptedOnce(CurationReconciler):
    """Its first pass is overtaken by another writer; every pass says whether it read."""

    def __init__(self, ctx: Context, other_writer: Any) -> None:
        super().__init__(ctx)
        self.other_writer = other_writer
        self.store_reads: list[bool] = []

    async def reconcile(self, body: dict[str, Any], *, poll: bool) -> Any:
        self.store_reads.append(poll)
        if len(self.store_reads) == 1:
            self.other_writer()  # e.g. the previous reconcile's write, after our GET
        reason = "StoreRead" if poll else "StoreNotRead"
        generation = body["metadata"].get("generation")
        return fold.apply_phase(self.status_of(body), "Running", reason, reason, generation)


def test_a_pass_that_lost_its_status_write_is_redone_with_the_store_read_again(
    kube, cluster, storage
):
    cluster.create(resource("CurationJob", "raced", curation_spec(storage)))
    stale = cluster.get("CurationJob", "raced")

    def other_writer() -> None:
        cluster.patch("CurationJob", "raced", {"metadata": {"labels": {"touched": "yes"}}})

    async def reconcile_once() -> list[bool]:
        with ThreadPoolExecutor(2) as pool:
            api = Kube(kube.api_client(), pool)
            ctx = Context(api, StorageAccess(api, pool), OperatorConfig())
            controller = Controller(ctx)
            reconciler = InterruptedOnce(ctx, other_writer)
            controller.reconcilers[reconciler.rt.plural] = reconciler
            await controller.reconcile(reconciler.rt.plural, stale)  # an event: no poll
            return reconciler.store_reads

    assert asyncio.run(reconcile_once()) == [False, True]
    written = cluster.get("CurationJob", "raced")
    assert written["metadata"]["labels"]["touched"] == "yes"  # the other write stands
    assert written["status"]["message"] == "StoreRead"  # the redo's status, not the lost one
