"""Operations: crash and restart, two replicas, and RBAC that is enough and no broader."""

from __future__ import annotations

import pytest
from controller.operator_harness import (
    FAKE,
    OPERATOR_SA,
    RunDriver,
    curation_spec,
    resource,
    run_spec,
    wait_for,
)
from kubernetes import client
from kubernetes.client.rest import ApiException

HELD = {f"{FAKE}outcome": "Running"}


def test_operator_killed_mid_run_restarts_without_duplicates(cluster, storage, start_operator):
    first = start_operator("first")
    first.wait_leading()
    cluster.create(resource("MedSFTRun", "crash", run_spec(storage), annotations=HELD))
    drive = RunDriver(cluster, storage, "crash")
    wait_for(lambda: cluster.job("crash-curation-g1-work"), what="the worker Job")

    first.kill()  # SIGKILL: no cleanup, the Lease is still held
    cluster.finish_job("crash-curation-g1-work")  # the world moves on while it is down

    second = start_operator("second")
    second.wait_leading(timeout=30)  # after the dead leader's Lease expired
    wait_for(
        lambda: cluster.job("crash-curation-g1-merge"), what="the merge Job, by the new leader"
    )
    storage.write_dataset(drive.output(1, "curation"))
    cluster.finish_job("crash-curation-g1-merge")
    wait_for(lambda: cluster.find("SFTJob", "crash-sft-g1"), what="the SFTJob")
    wait_for(lambda: cluster.pytorchjob("crash-sft-g1-a0"), what="the PyTorchJob")

    second.kill()  # again, mid-training
    third = start_operator("third")
    third.wait_leading(timeout=30)
    drive.sft()
    drive.eval()
    cluster.wait_phase("MedSFTRun", "crash", "Succeeded")

    # Exactly one child per stage and generation, whoever created it.
    assert cluster.jobs() == [
        "crash-curation-g1-merge",
        "crash-curation-g1-work",
        "crash-eval-g1-eval",
    ]
    assert [j["metadata"]["name"] for j in cluster.pytorchjobs()] == ["crash-sft-g1-a0"]
    for kind in ("CurationJob", "SFTJob", "EvalJob"):
        assert len(cluster.list(kind)) == 1
    assert [r["generation"] for r in cluster.status("MedSFTRun", "crash")["history"]] == [1]


def test_two_replicas_only_the_leader_acts(cluster, storage, start_operator):
    a, b = start_operator("replica-a"), start_operator("replica-b")
    leader = wait_for(
        lambda: next((op for op in (a, b) if (op.health() or {}).get("leader")), None),
        what="a leader",
    )
    standby = b if leader is a else a
    wait_for(lambda: standby.health() is not None, what="the standby's health endpoint")
    assert standby.health()["leader"] is False  # alive, ready, waiting

    cluster.create(resource("CurationJob", "one", curation_spec(storage)))
    wait_for(
        lambda: cluster.status("CurationJob", "one").get("jobName"), what="the leader's reconcile"
    )
    assert leader.metric("medsft_reconciles_total") > 0
    assert standby.metric("medsft_reconciles_total") == 0
    assert standby.metric("medsft_leader") == 0 and leader.metric("medsft_leader") == 1

    # A clean shutdown hands the Lease over at once; the other replica takes the work.
    assert leader.stop() == 0
    standby.wait_leading(timeout=15)
    cluster.create(resource("CurationJob", "two", curation_spec(storage)))
    wait_for(lambda: cluster.job("two-work"), what="the new leader's Job")
    assert standby.metric("medsft_reconciles_total") > 0
    assert cluster.jobs() == ["one-work", "two-work"]


def _can(
    kube,
    namespace: str,
    verb: str,
    resource: str,
    group: str = "",
    *,
    name: str = "",
    ns: str | None = None,
) -> bool:
    """What the apiserver's RBAC authorizer answers for the operator's ServiceAccount."""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{namespace}:{OPERATOR_SA}",
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            resource_attributes=client.V1ResourceAttributes(
                namespace=ns if ns is not None else namespace,
                verb=verb,
                resource=resource,
                group=group,
                name=name,
            ),
        )
    )
    return bool(
        client.AuthorizationV1Api(kube.api_client())
        .create_subject_access_review(review)
        .status.allowed
    )


def test_operator_rbac_is_enough_and_no_broader(kube, cluster, storage, operator):
    ns = cluster.namespace
    # Enough: this operator (like every one in these tests) runs as the ServiceAccount with
    # exactly rbac.py's rules, and does its job.
    cluster.create(resource("CurationJob", "rbac", curation_spec(storage)))
    wait_for(lambda: cluster.job("rbac-work"), what="a Job created under the shipped RBAC")
    for verb, res, group in [
        ("create", "jobs", "batch"),
        ("watch", "pytorchjobs", "kubeflow.org"),
        ("create", "events", ""),
        ("patch", "medsftruns/status", "medsft.io"),
        ("get", "secrets", ""),
    ]:
        assert _can(kube, ns, verb, res, group), f"{verb} {res} should be allowed"
    # No broader: it cannot enumerate Secrets, touch workloads it does not own the verbs
    # for, run pods, escalate through RBAC, or act outside the namespaces it serves.
    denied = [
        ("list", "secrets", ""),
        ("watch", "secrets", ""),
        ("update", "secrets", ""),
        ("delete", "jobs", "batch"),
        ("update", "jobs", "batch"),
        ("patch", "pytorchjobs", "kubeflow.org"),
        ("create", "pods", ""),
        ("create", "pods/exec", ""),
        ("patch", "configmaps", ""),
        ("create", "rolebindings", "rbac.authorization.k8s.io"),
        ("create", "deployments", "apps"),
        ("delete", "namespaces", ""),
        ("list", "nodes", ""),
        ("update", "customresourcedefinitions", "apiextensions.k8s.io"),
    ]
    for verb, res, group in denied:
        assert not _can(kube, ns, verb, res, group), f"{verb} {res} must be denied"
    assert not _can(kube, ns, "get", "secrets", ns="kube-system")
    assert not _can(kube, ns, "update", "leases", "coordination.k8s.io", name="someone-elses-lease")

    # And the apiserver really refuses it (not just the review): a forbidden action, acted.
    as_operator = client.CoreV1Api(kube.impersonating(f"system:serviceaccount:{ns}:{OPERATOR_SA}"))
    with pytest.raises(ApiException) as err:
        as_operator.list_namespaced_secret(ns)
    assert err.value.status == 403
    secret = as_operator.read_namespaced_secret("storage-creds", ns)  # by name: allowed
    assert secret.metadata.name == "storage-creds"


def test_cluster_wide_operator_runs_under_the_cluster_role(kube, cluster, storage, tmp_path):
    """The chart's default: every namespace watched, the rules in a ClusterRole."""
    from controller.operator_harness import (
        OperatorProcess,
        grant_operator,
        service_account_kubeconfig,
    )

    grant_operator(kube, cluster.namespace, clusterwide=True)
    kubeconfig = service_account_kubeconfig(kube, cluster.namespace, tmp_path / "sa.kubeconfig")
    op = OperatorProcess(
        kubeconfig, cluster.namespace, tmp_path / "clusterwide.log", namespaces=None, identity="cw"
    ).start()
    rbac_api = client.RbacAuthorizationV1Api(kube.api_client())
    try:
        op.wait_leading()
        cluster.create(resource("CurationJob", "cw", curation_spec(storage)))
        wait_for(lambda: cluster.job("cw-work"), what="a Job from the cluster-wide operator")
        assert _can(
            kube, cluster.namespace, "list", "curationjobs", "medsft.io", ns=""
        )  # all namespaces
        assert not _can(kube, cluster.namespace, "list", "secrets", ns="")
    finally:
        op.stop()
        name = f"medsft-operator-{cluster.namespace}"
        rbac_api.delete_cluster_role_binding(name)
        rbac_api.delete_cluster_role(name)
    assert "Traceback" not in op.tail(400)
