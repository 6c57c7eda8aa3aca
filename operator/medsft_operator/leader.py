"""Leader election with a coordination.k8s.io/v1 Lease: only the holder acts, and never two.

The algorithm is client-go's (what controller-runtime operators use), with its guarantees:

* **No clock comparison across machines.** A candidate never trusts the holder's
  ``renewTime``: it notes, on its own monotonic clock, when it last saw the Lease record
  change, and takes the Lease only after it stayed unchanged for ``leaseDurationSeconds``.
* **The leader stops first.** A leader may act only until ``renew_deadline`` (shorter than
  the lease duration) after it *sent* its last successful renewal — every other replica saw
  that renewal later than it was sent, so none can take over before the leader's own
  deadline has passed, even if this process is paused (SIGSTOP, a long GC) or cut off from
  the apiserver. :meth:`LeaderElector.remaining` is that budget; the operator's API client
  refuses every request once it is spent and bounds each request's timeout by it
  (:class:`medsft_operator.kube.Kube`'s ``fence``), so a paused leader, resumed, does
  nothing: its first request is refused, and it exits to start over as a candidate.
* **One winner per term.** Updates carry the Lease's resourceVersion (optimistic lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from medsft_operator import metrics
from medsft_operator.kube import LEASES, Body, Conflict, Kube, KubeError, OutOfTime

log = logging.getLogger("medsft.leader")


def _micro(t: datetime) -> str:
    """MicroTime as the API wants it (informational only: no replica judges by it)."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_of(lease: Body) -> tuple[Any, ...]:
    """What identifies one renewal of a Lease (any write changes it)."""
    spec = lease.get("spec") or {}
    return (
        spec.get("holderIdentity"),
        spec.get("renewTime"),
        spec.get("acquireTime"),
        spec.get("leaseDurationSeconds"),
        spec.get("leaseTransitions"),
    )


class Observation:
    """When this replica last saw the Lease record change, on its own monotonic clock."""

    def __init__(self) -> None:
        self.record: tuple[Any, ...] | None = None
        self.at = 0.0

    def see(self, lease: Body, now: float) -> None:
        record = record_of(lease)
        if record != self.record:
            self.record, self.at = record, now

    def held_by_other(self, identity: str, now: float) -> bool:
        """Whether someone else holds the Lease by what this replica observed: a holder is
        named and the record changed less than its duration ago."""
        if self.record is None:
            return False
        holder, duration = self.record[0], self.record[3]
        if not holder or holder == identity:
            return False
        return now < self.at + float(duration or 0)


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_s: float,
        renew_deadline_s: float,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_s < renew_deadline_s < duration_s:
            raise ValueError(
                f"leader election needs retry ({retry_s}s) < renew deadline "
                f"({renew_deadline_s}s) < lease duration ({duration_s}s)"
            )
        # A client of its own (own threads: renewals never queue behind reconciles), whose
        # budget is ``round_budget``.
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = int(max(1, round(duration_s)))
        self.renew_deadline = renew_deadline_s
        self.retry_s = retry_s
        self.clock = clock
        self.observed = Observation()
        self._lease: Body | None = None
        self._valid_until = 0.0  # monotonic: this replica may act before then
        self._round_until = 0.0  # monotonic: end of the current election round
        self.holder: str | None = None  # holder seen in the last round
        self.leading = asyncio.Event()

    def round_budget(self) -> float:
        """Seconds left for the requests of the current round (the elector's client's
        budget: a renewal never outlasts the term it renews)."""
        return self._round_until - self.clock()

    def remaining(self) -> float:
        """Seconds this replica may still act as the leader (<= 0: it must not act)."""
        return self._valid_until - self.clock()

    def _stop_leading(self) -> None:
        self._valid_until = 0.0
        metrics.LEADER.set(0)
        self.leading.clear()

    async def try_acquire_or_renew(self) -> bool:
        """One round: True while this replica holds the Lease (and its deadline moved on)."""
        sent = self.clock()  # others see this round's write later than this
        # A renewal may take no longer than what is left of the term; a candidate's round
        # no longer than a retry period.
        budget = self.remaining() if self.leading.is_set() else self.retry_s
        if budget <= 0:
            return False
        self._round_until = sent + budget  # bounds each request's timeout (see round_budget)
        try:
            return await self._round(sent)
        except Conflict:
            return False  # another candidate wrote first
        except Exception as exc:  # API errors, timeouts (urllib3's), refused connections
            log.warning("leader election: %s: %s", type(exc).__name__, exc)
            return False

    async def _round(self, sent: float) -> bool:
        now = datetime.now(UTC)
        lease = await self.kube.get(LEASES, self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, transitions=0),
            }
            self._won(await self.kube.create(LEASES, body), sent)
            return True
        self.observed.see(lease, self.clock())
        spec = lease.get("spec") or {}
        self.holder = spec.get("holderIdentity")
        mine = self.holder == self.identity  # this process, or its predecessor in the pod
        if not mine and self.observed.held_by_other(self.identity, self.clock()):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        acquired = spec.get("acquireTime") if mine else None
        lease["spec"] = self._spec(now, transitions=transitions, acquired=acquired)
        self._won(await self.kube.update(LEASES, lease), sent)  # resourceVersion: optimistic lock
        return True

    def _won(self, lease: Body, sent: float) -> None:
        self._lease = lease
        self.holder = self.identity
        self.observed.see(lease, self.clock())
        self._valid_until = sent + self.renew_deadline

    def _spec(self, now: datetime, *, transitions: int, acquired: str | None = None) -> Body:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "acquireTime": acquired or _micro(now),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }

    async def acquire(self) -> None:
        """Wait until this replica leads."""
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self.retry_s)
        log.info(
            "became the leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity
        )
        metrics.LEADER.set(1)
        self.leading.set()

    async def keep(self) -> None:
        """Renew every retry period; return (stop acting) once the renew deadline passed
        without a renewal, or another replica holds the Lease."""
        while True:
            await asyncio.sleep(max(0.0, min(self.retry_s, self.remaining())))
            renewed = await self.try_acquire_or_renew()
            if renewed:
                continue
            if self.remaining() <= 0 or self.holder not in (None, self.identity):
                log.error(
                    "lost the leader Lease %s/%s (%s); stopping",
                    self.namespace,
                    self.name,
                    "held by " + str(self.holder)
                    if self.holder not in (None, self.identity)
                    else f"not renewed within {self.renew_deadline:.1f}s",
                )
                self._stop_leading()
                return

    async def release(self, drain: Callable[[float], Awaitable[bool]] | None = None) -> None:
        """Hand the Lease over at once on a clean shutdown (the next leader need not wait).
        Only while still within the term, after this replica stopped acting and, with
        ``drain``, after the requests it still has in flight ended: ``drain(seconds)`` waits
        at most that long (what is left of the term) and says whether they all did. A
        request still running when the term ends keeps the Lease unreleased — the successor
        then waits the lease duration out, as it would for a crashed leader."""
        if not self.leading.is_set() or self._lease is None or self.remaining() <= 0:
            self._stop_leading()
            return
        until = self._valid_until
        self._stop_leading()  # stop first: from here on nothing of ours may act
        if drain is not None and not await drain(until - self.clock()):
            log.warning(
                "requests still in flight at the end of the term: Lease %s/%s left to expire",
                self.namespace,
                self.name,
            )
            return
        budget = until - self.clock()
        if budget <= 0:
            return
        lease = dict(self._lease)
        lease["spec"] = {
            **lease["spec"],
            "holderIdentity": None,
            "renewTime": None,
            "leaseDurationSeconds": 1,
        }
        self._round_until = self.clock() + min(5.0, budget)
        with contextlib.suppress(KubeError, OutOfTime, OSError):
            # Best effort and brief: an unreleased Lease only delays the next leader.
            await self.kube.update(LEASES, lease)
