"""Leader election with a coordination.k8s.io/v1 Lease: only the holder acts.

Every replica runs this loop; the one holding an unexpired Lease runs the operator, the
others wait. The holder renews every ``renew`` seconds; if it cannot renew before the
Lease would expire, it stops acting *before* another replica may take over (it exits and
its Deployment restarts it as a candidate). Updates carry the Lease's resourceVersion, so
two candidates can never both win the same term.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from medsft_operator import metrics
from medsft_operator.kube import LEASES, Body, Conflict, Kube, KubeError

log = logging.getLogger("medsft.leader")


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(t: datetime) -> str:
    """MicroTime as the API wants it."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def expired(lease: Body, now: datetime) -> bool:
    """Whether the Lease's holder has not renewed within its duration."""
    spec = lease.get("spec") or {}
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    if not spec.get("holderIdentity") or renewed is None:
        return True
    return renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0)) < now


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_s: float,
        renew_s: float,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = int(max(1, round(duration_s)))
        self.renew_s = renew_s
        self._lease: Body | None = None
        self.holder: str | None = None  # holder seen in the last round
        self.leading = asyncio.Event()

    async def try_acquire_or_renew(self) -> bool:
        """One round: True while this replica holds the Lease."""
        now = _now()
        try:
            lease = await self.kube.get(LEASES, self.namespace, self.name)
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(now, transitions=0, acquired=now),
                }
                self._lease = await self.kube.create(LEASES, body)
                self.holder = self.identity
                return True
            spec = lease.get("spec") or {}
            self.holder = spec.get("holderIdentity")
            mine = self.holder == self.identity
            if not mine and not expired(lease, now):
                return False
            transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
            acquired = _parse(spec.get("acquireTime")) if mine else now
            lease["spec"] = self._spec(now, transitions=transitions, acquired=acquired or now)
            self._lease = await self.kube.update(LEASES, lease)  # resourceVersion: optimistic lock
            self.holder = self.identity
            return True
        except Conflict:
            return False  # another candidate wrote first
        except KubeError as exc:
            log.warning("leader election: %s", exc)
            return False

    def _spec(self, now: datetime, *, transitions: int, acquired: datetime) -> Body:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "acquireTime": _micro(acquired),
            "renewTime": _micro(now),
            "leaseTransitions": transitions,
        }

    async def acquire(self) -> None:
        """Wait until this replica leads."""
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self.renew_s)
        log.info(
            "became the leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity
        )
        metrics.LEADER.set(1)
        self.leading.set()

    async def keep(self) -> None:
        """Renew until a renewal fails for longer than is safe; then return (stop acting)."""
        last = asyncio.get_running_loop().time()
        # Give up with a margin, before another replica may consider the Lease expired.
        deadline = self.duration - self.renew_s
        while True:
            await asyncio.sleep(self.renew_s)
            if await self.try_acquire_or_renew():
                last = asyncio.get_running_loop().time()
            elif self.holder not in (None, self.identity) or (
                asyncio.get_running_loop().time() - last > deadline
            ):
                log.error("lost the leader Lease %s/%s", self.namespace, self.name)
                metrics.LEADER.set(0)
                self.leading.clear()
                return

    async def release(self) -> None:
        """Hand the Lease over at once on a clean shutdown (the next leader need not wait)."""
        if not self.leading.is_set() or self._lease is None:
            return
        lease = dict(self._lease)
        lease["spec"] = {**lease["spec"], "holderIdentity": None, "renewTime": None}
        with contextlib.suppress(KubeError, OSError, TimeoutError):
            # Best effort and brief: an unreleased Lease only delays the next leader.
            await asyncio.wait_for(self.kube.update(LEASES, lease), timeout=5)
        metrics.LEADER.set(0)
        self.leading.clear()
