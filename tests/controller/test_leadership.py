"""Leadership that cannot overlap, on the real apiserver with two operator replicas.

Each replica authenticates as its own ServiceAccount (same RBAC), so the apiserver's audit
log (tests/harness/controlplane.py logs every write) tells who wrote what, and when: the
tests prove from it that a replica that lost its term wrote nothing afterwards.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import yaml
from controller.operator_harness import (
    FAKE,
    LEASE_DURATION_S,
    OPERATOR_SA,
    OperatorProcess,
    RunDriver,
    resource,
    run_spec,
    wait_for,
)
from kubernetes import client

from harness.tcpproxy import TcpProxy

HELD = {f"{FAKE}outcome": "Running"}
LEASE = "medsft-operator"
DURATION_S = float(LEASE_DURATION_S)
MUTATING = {"create", "update", "patch", "delete", "deletecollection"}


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def stopped_leading(replica: OperatorProcess) -> datetime | None:
    """When ``replica`` stopped leading, once it has: its health says so, or it exited after
    logging it (a replica that lost its term stops; on a loaded machine a poll can miss the
    moment between the two, so its own log says when)."""
    if (replica.health() or {}).get("leader") is False:
        return datetime.now(UTC)
    if replica.proc is not None and replica.proc.poll() is not None:
        for line in replica.log.read_text().splitlines():
            if "lost the leader Lease" in line:
                return _parse_time(json.loads(line)["timestamp"])
    return None


def second_account(
    kube, namespace: str, folder: Path, server: str | None = None
) -> tuple[Path, str]:
    """Another ServiceAccount bound to the operator's Roles (granted by ``start_operator``),
    and a kubeconfig for it (talking to ``server`` if given, e.g. through a proxy)."""
    name = f"{OPERATOR_SA}-b"
    api = kube.api_client()
    core, rbac_api = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    for role in ("medsft-operator", "medsft-leader"):
        rbac_api.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": f"{role}-b"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 7200}}
    ).status.token
    return kubeconfig(kube, folder / "b.kubeconfig", token, server), (
        f"system:serviceaccount:{namespace}:{name}"
    )


def kubeconfig(kube, path: Path, token: str, server: str | None = None) -> Path:
    doc = yaml.safe_load(Path(kube.kubeconfig).read_text())
    if server:
        doc["clusters"][0]["cluster"]["server"] = server
    doc["users"] = [{"name": "op", "user": {"token": token}}]
    doc["contexts"] = [
        {"name": "op", "context": {"cluster": doc["clusters"][0]["name"], "user": "op"}}
    ]
    doc["current-context"] = "op"
    path.write_text(yaml.safe_dump(doc))
    return path


def writes_of(kube, user: str, since: datetime, namespace: str) -> list[str]:
    return [
        f"{e['verb']} {e['objectRef'].get('resource')}/{e['objectRef'].get('name', '')}"
        f"{'/' + e['objectRef']['subresource'] if e['objectRef'].get('subresource') else ''}"
        f" at {e['requestReceivedTimestamp']}"
        for e in kube.audit_events(user=user)
        if e["verb"] in MUTATING
        and e.get("objectRef", {}).get("namespace") == namespace
        and _parse_time(e["requestReceivedTimestamp"]) >= since
    ]


def lease(cluster) -> dict:
    return (
        client.CoordinationV1Api(cluster.api).read_namespaced_lease(LEASE, cluster.namespace).spec
    )


def one_child_each(cluster, run: str) -> None:
    assert cluster.jobs() == [
        f"{run}-curation-g1-merge",
        f"{run}-curation-g1-work",
        f"{run}-eval-g1-eval",
    ]
    assert [j["metadata"]["name"] for j in cluster.pytorchjobs()] == [f"{run}-sft-g1-a0"]
    for kind in ("CurationJob", "SFTJob", "EvalJob"):
        assert len(cluster.list(kind)) == 1, kind
    assert [r["generation"] for r in cluster.status("MedSFTRun", run)["history"]] == [1]


def test_a_paused_leader_is_replaced_and_does_nothing_when_resumed(
    kube, cluster, storage, start_operator, tmp_path
):
    ns = cluster.namespace
    a = start_operator("replica-a")  # the operator's ServiceAccount
    a.wait_leading()
    b_config, _ = second_account(kube, ns, tmp_path)
    b = OperatorProcess(
        b_config, ns, tmp_path / "replica-b.log", namespaces=[ns], identity="replica-b"
    )
    b.start()
    a_user = f"system:serviceaccount:{ns}:{OPERATOR_SA}"
    try:
        cluster.create(resource("MedSFTRun", "p", run_spec(storage), annotations=HELD))
        drive = RunDriver(cluster, storage, "p")
        wait_for(lambda: cluster.job("p-curation-g1-work"), what="the worker Job")
        wait_for(
            lambda: cluster.status("CurationJob", "p-curation-g1").get("jobName"), what="status"
        )
        assert writes_of(kube, a_user, datetime.min.replace(tzinfo=UTC), ns), "A never acted"

        os.kill(a.proc.pid, signal.SIGSTOP)  # a long GC pause, a frozen VM, ...
        last_renewal = lease(cluster).renew_time
        # The world moves on while A sleeps: its watch streams fill with events it will read
        # when it wakes, and the Job it would act on finishes.
        cluster.finish_job("p-curation-g1-work")
        b.wait_leading(timeout=30)
        spec = lease(cluster)
        assert spec.holder_identity == "replica-b"
        # B waited out a whole lease duration after A's last renewal, on its own clock.
        assert (spec.acquire_time - last_renewal).total_seconds() >= DURATION_S
        wait_for(lambda: cluster.job("p-curation-g1-merge"), what="the merge Job, by B")

        resumed = datetime.now(UTC)
        os.kill(a.proc.pid, signal.SIGCONT)
        assert a.proc.wait(timeout=60) == 1  # it stops, to start over as a candidate
        assert "lost the leader Lease" in a.log.read_text()
        assert writes_of(kube, a_user, resumed, ns) == []  # not one write after it woke

        # B carries the run through; exactly one child per stage, no status gone backwards.
        storage.write_dataset(drive.output(1, "curation"))
        cluster.finish_job("p-curation-g1-merge")
        drive.sft()
        drive.eval()
        cluster.wait_phase("MedSFTRun", "p", "Succeeded")
        one_child_each(cluster, "p")
        assert writes_of(kube, a_user, resumed, ns) == []
    finally:
        b.stop()


def test_a_leader_cut_off_from_the_apiserver_stops_within_the_lease(
    kube, cluster, storage, start_operator, tmp_path
):
    ns = cluster.namespace
    proxy = TcpProxy(kube.port).start()
    a_config, a_user = second_account(kube, ns, tmp_path, server=f"https://127.0.0.1:{proxy.port}")
    a = OperatorProcess(
        a_config, ns, tmp_path / "replica-a.log", namespaces=[ns], identity="replica-a"
    )
    a.start()
    b = None
    try:
        a.wait_leading()
        b = start_operator("replica-b")  # directly connected
        cluster.create(resource("MedSFTRun", "c", run_spec(storage), annotations=HELD))
        drive = RunDriver(cluster, storage, "c")
        wait_for(lambda: cluster.job("c-curation-g1-work"), what="the worker Job, by A")

        proxy.cut()  # requests hang: no error, no reset
        cut_wall = datetime.now(UTC)
        stopped_wall = wait_for(
            lambda: stopped_leading(a), timeout=DURATION_S + 5, what="A to stop leading"
        )
        assert (stopped_wall - cut_wall).total_seconds() < DURATION_S  # within the lease
        b.wait_leading(timeout=30)
        spec = lease(cluster)
        assert spec.holder_identity == "replica-b"
        assert spec.acquire_time > stopped_wall  # B's term began after A's had ended
        assert writes_of(kube, a_user, stopped_wall, ns) == []
        assert writes_of(kube, a_user, cut_wall, ns) == []  # nothing got through the cut

        drive.curation()
        drive.sft()
        drive.eval()
        cluster.wait_phase("MedSFTRun", "c", "Succeeded")
        one_child_each(cluster, "c")
    finally:
        a.kill()
        proxy.close()
        if b is not None:
            b.stop()
