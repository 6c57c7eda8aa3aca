"""Adopt only what is ours: an object with a child's expected name that does not carry an
ownerReference to the owner's UID is never adopted, trusted, replaced or deleted; the owner
waits with a condition naming it. Real apiserver, the operator as its ServiceAccount."""

from __future__ import annotations

from typing import Any

from controller.operator_harness import (
    FAKE,
    curation_spec,
    resource,
    run_spec,
    sft_spec,
    wait_for,
)
from kubernetes import client

HELD = {f"{FAKE}outcome": "Running"}


def _conflict(cluster, kind: str, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (c := cluster.condition(kind, name, "InputsReady"))
            and c["reason"] == "ChildConflict"
            and c
        ),
        what=f"a ChildConflict condition on {kind} {name}",
    )


def _foreign_job(
    cluster,
    name: str,
    labels: dict[str, str] | None = None,
    owner_references: list[dict[str, Any]] | None = None,
) -> client.V1Job:
    """A Job someone else made, with the name (and even the labels) ours would have."""
    return cluster.batch.create_namespaced_job(
        cluster.namespace,
        {
            "metadata": {
                "name": name,
                "labels": labels or {},
                "ownerReferences": owner_references or [],
            },
            "spec": {
                "suspend": True,  # nothing runs here anyway; keep it inert
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "x", "image": "busybox"}],
                    }
                },
            },
        },
    )


def test_a_foreign_object_with_the_childs_name_is_never_adopted(cluster, storage, operator):
    labels = {
        "app.kubernetes.io/managed-by": "medsft-operator",
        "medsft.io/owner-kind": "CurationJob",
        "medsft.io/owner-name": "cur",
    }
    foreign = _foreign_job(cluster, "cur-work", labels)
    cluster.create(resource("CurationJob", "cur", curation_spec(storage)))

    condition = _conflict(cluster, "CurationJob", "cur")
    assert condition["status"] == "False"
    assert f"Job {cluster.namespace}/cur-work already exists" in condition["message"]
    assert "its owners: none" in condition["message"]
    status = cluster.status("CurationJob", "cur")
    assert status["phase"] == "Pending" and "jobName" not in status  # not recorded as ours
    wait_for(
        lambda: ("ChildConflict", condition["message"]) in cluster.events("cur"),
        what="a ChildConflict Event",
    )
    # Untouched: not adopted (no ownerReference added), not replaced.
    job = cluster.job("cur-work")
    assert job.metadata.uid == foreign.metadata.uid and not job.metadata.owner_references
    assert cluster.jobs() == ["cur-work"]

    # Once it is gone, the owner makes its own (the poller re-checks).
    cluster.batch.delete_namespaced_job("cur-work", cluster.namespace)
    own = wait_for(
        lambda: (j := cluster.job("cur-work")).metadata.uid != foreign.metadata.uid and j,
        what="the CurationJob's own Job",
    )
    owner = cluster.get("CurationJob", "cur")
    assert [r.uid for r in own.metadata.owner_references] == [owner["metadata"]["uid"]]
    wait_for(
        lambda: cluster.condition("CurationJob", "cur", "InputsReady")["status"] == "True",
        what="InputsReady back to True",
    )


def test_a_child_left_by_an_earlier_owner_or_owned_by_another_is_not_trusted(
    cluster, storage, operator
):
    cluster.create(resource("CurationJob", "again", curation_spec(storage)))
    wait_for(lambda: cluster.job("again-work"), what="the first owner's Job")
    # Deleted with its children orphaned: its Job stays, released by the garbage collector.
    cluster.custom.delete_namespaced_custom_object(
        "medsft.io",
        "v1alpha1",
        cluster.namespace,
        "curationjobs",
        "again",
        propagation_policy="Orphan",
    )
    wait_for(lambda: cluster.find("CurationJob", "again") is None, what="the first owner gone")
    wait_for(
        lambda: not cluster.job("again-work").metadata.owner_references,
        what="the orphaned Job released",
    )
    cluster.create(resource("CurationJob", "again", curation_spec(storage, workers=3)))
    condition = _conflict(cluster, "CurationJob", "again")
    # The first of its children it meets: the orphaned ConfigMap (its config, made first).
    assert f"ConfigMap {cluster.namespace}/again-config already exists" in condition["message"]
    assert "its owners: none" in condition["message"]
    assert cluster.job("again-work").spec.parallelism == 2  # the old spec's Job, not adopted
    assert "again-merge" not in cluster.jobs()

    # A child of another owner (with that owner's UID) is not ours either.
    cluster.create(resource("CurationJob", "other", curation_spec(storage)))
    other = wait_for(lambda: cluster.find("CurationJob", "other"), what="another owner")
    other_uid = other["metadata"]["uid"]
    owner_ref = {
        "apiVersion": "medsft.io/v1alpha1",
        "kind": "CurationJob",
        "name": "other",
        "uid": other_uid,
        "controller": True,
    }
    _foreign_job(cluster, "third-work", owner_references=[owner_ref])
    cluster.create(resource("CurationJob", "third", curation_spec(storage)))
    condition = _conflict(cluster, "CurationJob", "third")
    assert f"CurationJob other (uid {other_uid})" in condition["message"]


def test_a_foreign_configmap_never_configures_our_pods(cluster, storage, operator):
    cluster.core.create_namespaced_config_map(
        cluster.namespace,
        {"metadata": {"name": "cfg-config"}, "data": {"work.yaml": "not: ours"}},
    )
    cluster.create(resource("CurationJob", "cfg", curation_spec(storage)))
    condition = _conflict(cluster, "CurationJob", "cfg")
    assert f"ConfigMap {cluster.namespace}/cfg-config" in condition["message"]
    assert cluster.jobs() == []  # no Job mounting someone else's config


def test_a_foreign_pytorchjob_is_not_taken_for_an_attempt(cluster, storage, operator):
    storage.write_dataset(f"s3://{storage.bucket}/datasets/d1")
    labels = {
        "app.kubernetes.io/managed-by": "medsft-operator",
        "medsft.io/owner-kind": "SFTJob",
        "medsft.io/owner-name": "tr",
        "medsft.io/attempt": "0",
    }
    cluster.custom.create_namespaced_custom_object(
        "kubeflow.org",
        "v1",
        cluster.namespace,
        "pytorchjobs",
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "PyTorchJob",
            "metadata": {"name": "tr-a0", "labels": labels, "annotations": HELD},
            "spec": {
                "pytorchReplicaSpecs": {
                    "Master": {
                        "replicas": 1,
                        "template": {
                            "spec": {"containers": [{"name": "pytorch", "image": "busybox"}]}
                        },
                    }
                }
            },
        },
    )
    spec = sft_spec(
        storage, dataset={"manifestUri": f"s3://{storage.bucket}/datasets/d1/manifest.json"}
    )
    cluster.create(resource("SFTJob", "tr", spec))
    condition = _conflict(cluster, "SFTJob", "tr")
    assert f"PyTorchJob {cluster.namespace}/tr-a0" in condition["message"]
    assert cluster.status("SFTJob", "tr").get("pytorchJobName") is None
    assert [j["metadata"]["name"] for j in cluster.pytorchjobs()] == ["tr-a0"]


def test_a_run_neither_adopts_nor_deletes_a_foreign_stage_resource(cluster, storage, operator):
    # Someone's CurationJob with the name the run's first generation would use (and another
    # spec: the old code would have deleted it as a stale child of its own).
    cluster.create(resource("CurationJob", "r-curation-g1", curation_spec(storage)))
    foreign_uid = cluster.get("CurationJob", "r-curation-g1")["metadata"]["uid"]
    cluster.create(resource("MedSFTRun", "r", run_spec(storage), annotations=HELD))

    condition = _conflict(cluster, "MedSFTRun", "r")
    assert f"CurationJob {cluster.namespace}/r-curation-g1" in condition["message"]
    assert cluster.get("CurationJob", "r-curation-g1")["metadata"]["uid"] == foreign_uid
    assert not cluster.get("CurationJob", "r-curation-g1")["metadata"].get("ownerReferences")
    assert cluster.status("MedSFTRun", "r")["history"][0].get("curationJob") is None
