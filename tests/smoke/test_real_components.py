"""Smoke tests proving every test component is the real thing.

Each test fails if its component is absent or fake: a real apiserver validates
and authorizes, a real controller-manager garbage-collects, a real MinIO stores,
real kubectl/helm binaries answer.
"""

from __future__ import annotations

import io
import subprocess
import time

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from harness.fake_training_operator import OUTCOME, current_phase
from harness.testbin import pinned_versions


def _wait_for(predicate, timeout: float = 60.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.medsft.io"},
    "spec": {
        "group": "smoke.medsft.io",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_namespace_crd_and_custom_resource(kube, namespace):
    api = kube.api_client()
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except ApiException as exc:
        assert exc.status == 409  # already there from an earlier run in this session
    kube.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.medsft.io")
    custom = client.CustomObjectsApi(api)
    body = {"apiVersion": "smoke.medsft.io/v1", "kind": "Widget", "metadata": {"name": "w"}}
    created = custom.create_namespaced_custom_object(
        "smoke.medsft.io", "v1", namespace, "widgets", {**body, "spec": {"size": 3}}
    )
    assert created["metadata"]["uid"]
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            "smoke.medsft.io",
            "v1",
            namespace,
            "widgets",
            {**body, "metadata": {"name": "bad"}, "spec": {"size": 0}},
        )
    assert err.value.status == 422
    assert "spec.size" in err.value.body


def _pytorchjob(name: str, replicas=1) -> dict:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": replicas,
                    "restartPolicy": "OnFailure",
                    "template": {"spec": {"containers": [{"name": "pytorch", "image": "busybox"}]}},
                }
            }
        },
    }


def test_pytorchjob_validated_by_upstream_schema(kube, namespace, kubeflow_crds):
    custom = client.CustomObjectsApi(kube.api_client())
    ok = custom.create_namespaced_custom_object(
        "kubeflow.org", "v1", namespace, "pytorchjobs", _pytorchjob("good")
    )
    assert ok["kind"] == "PyTorchJob"
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", _pytorchjob("bad", replicas="two")
        )
    assert err.value.status == 422
    assert "replicas" in err.value.body


def test_fake_training_operator_moves_status(kube, namespace, fake_training_operator):
    custom = client.CustomObjectsApi(kube.api_client())
    good, bad = _pytorchjob("ok"), _pytorchjob("boom")
    bad["metadata"]["annotations"] = {OUTCOME: "Failed"}
    for job in (good, bad):
        custom.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", job)

    def phase(name):
        obj = custom.get_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", name
        )
        return current_phase(obj.get("status"))

    _wait_for(lambda: phase("ok") == "Succeeded")
    _wait_for(lambda: phase("boom") == "Failed")
    seen = custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "ok")
    types = [c["type"] for c in seen["status"]["conditions"]]
    assert types == ["Created", "Running", "Succeeded"]


def test_service_account_without_rights_is_forbidden(kube, namespace):
    core = client.CoreV1Api(kube.api_client())
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="nobody"))
    )
    as_nobody = client.CoreV1Api(kube.impersonating(f"system:serviceaccount:{namespace}:nobody"))
    with pytest.raises(ApiException) as err:
        as_nobody.list_namespaced_config_map(namespace)
    assert err.value.status == 403
    assert "forbidden" in err.value.body.lower()
    # ...and the same identity is allowed once RBAC grants it: the 403 came from RBAC.
    rbac = client.RbacAuthorizationV1Api(kube.api_client())
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-cm"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "read-cm"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-cm"},
            "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": namespace}],
        },
    )

    def allowed() -> bool:
        try:
            return as_nobody.list_namespaced_config_map(namespace) is not None
        except ApiException as exc:
            if exc.status != 403:
                raise
            return False  # the RBAC authorizer has not seen the new binding yet

    _wait_for(allowed)


def test_deleting_owner_garbage_collects_dependent(kube, namespace):
    core = client.CoreV1Api(kube.api_client())
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    _wait_for(dependent_gone)


def test_minio_round_trip_survives_restart(minio, minio_bucket):
    s3 = minio.client()
    payload = b"medsft smoke payload"
    s3.put_object(minio_bucket, "a/b.bin", io.BytesIO(payload), len(payload))
    assert [o.object_name for o in s3.list_objects(minio_bucket, prefix="a/")] == ["a/b.bin"]
    minio.stop()
    with pytest.raises(urllib3.exceptions.HTTPError):  # connection refused, after retries
        s3.get_object(minio_bucket, "a/b.bin")
    minio.start()
    assert s3.get_object(minio_bucket, "a/b.bin").read() == payload


def test_kubectl_and_helm_binaries(kube, helm_bin):
    version = kube.kubectl("version", "-o", "yaml").stdout
    k8s = pinned_versions()["K8S_VERSION"]
    assert f"gitVersion: {k8s}" in version  # client and server both answer
    assert "serverVersion" in version
    helm = subprocess.run([str(helm_bin), "version", "--short"], capture_output=True, text=True)
    assert helm.returncode == 0
    assert helm.stdout.startswith(pinned_versions()["HELM_VERSION"])
