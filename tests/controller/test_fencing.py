"""Fencing of the operator's writes, with requests held in the network past the leader's term.

Two leader electors compete for a real Lease on the real apiserver; the first one's requests
go through a proxy that holds their bytes and delivers them later — after the successor
acquired — the way a stalled link or a middlebox does. A client-side timeout cannot stop such
a request from arriving, so these tests check what can be guaranteed: each call ends within
the term, a clean hand-over waits for the requests in flight, and a late write cannot replace
what the successor wrote (a conditional write at the store, a resourceVersion at the
apiserver).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from controller.operator_harness import STORAGE_SECRET, Cluster, Storage
from kubernetes import client
from urllib3.exceptions import HTTPError

from harness.tcpproxy import TcpProxy
from medsft_operator.artifacts import StorageAccess
from medsft_operator.kube import CONFIGMAPS, Kube, OutOfTime, load_api_client
from medsft_operator.leader import LeaderElector
from medsft_operator.main import hand_over
from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.storage import StorageError

LEASE = "fencing-test"
SLACK_S = 1.0  # a call may end this much after the term (thread hand-offs on a loaded machine)


@dataclass
class Replica:
    """What an operator replica holds for fencing: an elector with its own direct client,
    and the reconcilers' client (through ``server`` if given) bounded by the elector's term."""

    name: str
    elector: LeaderElector
    kube: Kube
    storage: StorageAccess
    executor: ThreadPoolExecutor


def replica(
    kubeconfig: str, namespace: str, identity: str, renew_deadline_s: float, server: str = ""
) -> Replica:
    lease_kube = Kube(load_api_client(kubeconfig, pool_size=2), ThreadPoolExecutor(2))
    elector = LeaderElector(
        lease_kube,
        namespace=namespace,
        name=LEASE,
        identity=identity,
        duration_s=renew_deadline_s + 1,
        renew_deadline_s=renew_deadline_s,
        retry_s=0.5,
    )
    lease_kube.budget = elector.round_budget
    api = load_api_client(kubeconfig)
    if server:
        api.configuration.host = server
    executor = ThreadPoolExecutor(4)
    kube = Kube(api, executor, budget=elector.remaining)
    return Replica(identity, elector, kube, StorageAccess(kube, executor), executor)


def through(proxy: TcpProxy, kube, namespace: str, renew_deadline_s: float) -> Replica:
    """Replica ``a``, whose reconcilers reach the apiserver through ``proxy``."""
    return replica(
        str(kube.kubeconfig),
        namespace,
        "a",
        renew_deadline_s=renew_deadline_s,
        server=f"https://127.0.0.1:{proxy.port}",  # the apiserver's certificate names 127.0.0.1
    )


def holder(kube, namespace: str) -> str | None:
    lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease(LEASE, namespace)
    return lease.spec.holder_identity


def pointer(namespace: str, generation: int) -> dict[str, Any]:
    return {"namespace": namespace, "run": "run", "generation": generation, "modelUri": "m"}


def test_a_late_promoted_pointer_write_cannot_replace_the_successors(
    kube, namespace, minio, minio_bucket
) -> None:
    storage = Storage(minio.endpoint, minio_bucket, minio.access_key, minio.secret_key)
    Cluster(kube, namespace).secret(
        STORAGE_SECRET, {"accessKey": minio.access_key, "secretKey": minio.secret_key}
    )
    proxy = TcpProxy(minio.port).start()
    via_proxy = StorageSpec.model_validate(
        {**storage.spec(), "endpoint": f"127.0.0.1:{proxy.port}"}
    )
    direct = StorageSpec.model_validate(storage.spec())
    uri = f"s3://{minio_bucket}/{namespace}/run/promoted.json"

    async def scenario() -> float:
        a = replica(str(kube.kubeconfig), namespace, "a", renew_deadline_s=2.0)
        b = replica(str(kube.kubeconfig), namespace, "b", renew_deadline_s=2.0)
        await a.elector.acquire()
        await a.storage.advance_json(namespace, via_proxy, uri, pointer(namespace, 1), "generation")
        # Generation 2's write leaves A and is held on the way (its read goes through).
        proxy.hold(lambda data: data.startswith(b"PUT "))
        left, started = a.elector.remaining(), time.monotonic()
        with pytest.raises((StorageError, OutOfTime)):
            await a.storage.advance_json(
                namespace, via_proxy, uri, pointer(namespace, 2), "generation"
            )
        elapsed = time.monotonic() - started
        assert elapsed < left + SLACK_S, f"the write ran {elapsed:.1f}s of a {left:.1f}s term"
        await asyncio.wait_for(b.elector.acquire(), 30)
        now = await b.storage.advance_json(
            namespace, direct, uri, pointer(namespace, 3), "generation"
        )
        assert now["generation"] == 3
        proxy.release()  # A's generation-2 PUT reaches MinIO now, after B's
        assert await asyncio.to_thread(proxy.wait_late_answers), "the held PUT never arrived"
        # B goes on: a pointer behind the store's is never written back.
        assert (
            await b.storage.advance_json(
                namespace, direct, uri, pointer(namespace, 2), "generation"
            )
        )["generation"] == 3
        return elapsed

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()
    assert storage.store(uri.rsplit("/", 1)[0]).get_json("promoted.json")["generation"] == 3


def test_a_clean_hand_over_waits_for_the_write_in_flight(kube, namespace) -> None:
    proxy = TcpProxy(int(kube.server.rsplit(":", 1)[1])).start()
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"namespace": namespace}}

    async def scenario() -> None:
        a = through(proxy, kube, namespace, renew_deadline_s=8.0)
        await a.elector.acquire()
        await a.kube.create(
            CONFIGMAPS, {**config_map, "metadata": {**config_map["metadata"], "name": "first"}}
        )
        proxy.hold()
        writing = asyncio.create_task(
            a.kube.create(
                CONFIGMAPS, {**config_map, "metadata": {**config_map["metadata"], "name": "late"}}
            )
        )
        await asyncio.sleep(0.5)  # the request is on its way, held in the proxy
        handing = asyncio.create_task(hand_over(a.elector, a.executor))
        for _ in range(10):  # while it is in flight, nobody else may act: the Lease stays A's
            await asyncio.sleep(0.1)
            assert holder(kube, namespace) == "a"
            assert not handing.done()
        proxy.release()
        await writing
        await asyncio.wait_for(handing, 10)
        assert holder(kube, namespace) is None  # handed over once the write had landed

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()


def test_a_late_status_write_on_the_apiserver_path_cannot_replace_the_successors(
    kube, namespace
) -> None:
    proxy = TcpProxy(int(kube.server.rsplit(":", 1)[1])).start()
    core = client.CoreV1Api(kube.api_client())
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "state"}, "data": {"writer": "none"}}
    )

    async def scenario() -> None:
        a = through(proxy, kube, namespace, renew_deadline_s=2.0)
        b = replica(str(kube.kubeconfig), namespace, "b", renew_deadline_s=2.0)

        async def write(replica: Replica, seen: dict[str, Any]) -> None:
            # As the controller writes a status: guarded by the resourceVersion it read.
            version = seen["metadata"]["resourceVersion"]
            patch = {"metadata": {"resourceVersion": version}, "data": {"writer": replica.name}}
            await replica.kube.patch(CONFIGMAPS, namespace, "state", patch)

        await a.elector.acquire()
        seen = await a.kube.get(CONFIGMAPS, namespace, "state")
        assert seen is not None
        proxy.hold()
        left, started = a.elector.remaining(), time.monotonic()
        with pytest.raises((HTTPError, OutOfTime)):  # it timed out, or was refused
            await write(a, seen)
        assert time.monotonic() - started < left + SLACK_S
        await hand_over(a.elector, a.executor)  # past the term: nothing to hand over
        await asyncio.wait_for(b.elector.acquire(), 30)
        current = await b.kube.get(CONFIGMAPS, namespace, "state")
        assert current is not None
        await write(b, current)
        proxy.release()
        assert await asyncio.to_thread(proxy.wait_late_answers), "the held PATCH never arrived"

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()
    assert core.read_namespaced_config_map("state", namespace).data == {"writer": "b"}
