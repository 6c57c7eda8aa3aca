"""The Helm chart against the real apiserver: every value set passes a server-side dry run,
every pod passes the `restricted` Pod Security admission, and a real `helm install` grants
the operator exactly what it needs (checked with the apiserver's own authorizer)."""

from __future__ import annotations

import base64
import subprocess
import threading

import pytest
import yaml
from chart.charting import (
    CHART,
    KUBE_VERSION,
    SERVICE_MONITOR_API,
    VALUE_SETS,
    helm,
    pod_specs,
    render,
    rule_set,
    template,
    value_set,
    values_file,
)
from kubernetes import client

from medsft_operator import rbac


def _create_namespaces(kube, *names: str, labels: dict[str, str] | None = None) -> None:
    core = client.CoreV1Api(kube.api_client())
    for name in names:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
        )


def _delete_namespaces(kube, *names: str) -> None:
    core = client.CoreV1Api(kube.api_client())
    for name in names:
        core.delete_namespace(name)


def _extra_namespaces(values: dict) -> list[str]:
    return [
        *values.get("operator", {}).get("watchNamespaces", []),
        *values.get("trainer", {}).get("serviceAccount", {}).get("extraNamespaces", []),
    ]


# ----------------------------------------------------------------------------- dry run


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_value_set_passes_server_side_dry_run(
    kube, medsft_crds, service_monitor_crd, helm_bin, helm_home, namespace, name
):
    values = value_set(name, namespace)
    extra_namespaces = _extra_namespaces(values)
    _create_namespaces(kube, *extra_namespaces)
    try:
        out = template(
            helm_bin, helm_home, values, namespace=namespace, release="medsft",
            extra=("--include-crds", "--api-versions", SERVICE_MONITOR_API),
        ).stdout  # fmt: skip
        result = kube.kubectl(
            "apply", "--server-side", "--dry-run=server", "--validate=strict",
            "--field-manager=medsft-chart-test", "--force-conflicts", "-f", "-",
            input=out, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        applied = result.stdout.splitlines()
        docs = [d for d in yaml.safe_load_all(out) if d]
        assert len(applied) == len(docs), result.stdout
        assert all("(server dry run)" in line for line in applied)
    finally:
        _delete_namespaces(kube, *extra_namespaces)


def test_dry_run_catches_a_broken_manifest(kube, helm_bin, helm_home, namespace):
    """The check above can fail: a Deployment with an unknown field is refused."""
    out = template(helm_bin, helm_home, {"minio": {"enabled": True}}, namespace=namespace).stdout
    broken = out.replace(
        "automountServiceAccountToken: true", "automountServiceAccountTokens: true"
    )
    assert broken != out
    result = kube.kubectl(
        "apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-",
        input=broken, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "automountServiceAccountTokens" in result.stderr


# ----------------------------------------------------------------------------- pod security


@pytest.fixture
def restricted_namespace(kube, namespace) -> str:
    """The test namespace, enforcing the `restricted` Pod Security Standard."""
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    return namespace


def _create_service_accounts(kube, docs: list[dict]) -> None:
    """Pod admission looks the pod's ServiceAccount up: create the chart's for real."""
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(accounts))


def _dry_run_pod(kube, namespace: str, name: str, template_: dict) -> subprocess.CompletedProcess:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": template_["metadata"].get("labels", {}),
        },
        "spec": template_["spec"],
    }
    return kube.kubectl(
        "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(pod), check=False
    )


@pytest.mark.parametrize(
    "name", ["quickstart-minio", "minio-ephemeral-fixed-credentials", "external-s3-digest-images"]
)
def test_every_pod_is_admitted_by_restricted_pod_security(
    kube, helm_bin, helm_home, restricted_namespace, name
):
    docs = render(
        helm_bin, helm_home, value_set(name, restricted_namespace), namespace=restricted_namespace
    )
    _create_service_accounts(kube, docs)
    pods = pod_specs(docs)
    assert {"Deployment", "Pod"} <= {where.split("/")[0] for where in pods}
    for index, (where, pod) in enumerate(sorted(pods.items())):
        result = _dry_run_pod(kube, restricted_namespace, f"check-{index}", pod)
        assert result.returncode == 0, f"{where}: {result.stderr}"


def test_restricted_pod_security_is_really_enforced(
    kube, helm_bin, helm_home, restricted_namespace
):
    """Control: the same operator pod with privilege escalation allowed is refused."""
    docs = render(helm_bin, helm_home, {"minio": {"enabled": True}}, namespace=restricted_namespace)
    _create_service_accounts(kube, docs)
    pod = pod_specs(docs)["Deployment/medsft"]
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    result = _dry_run_pod(kube, restricted_namespace, "escalating", pod)
    assert result.returncode != 0
    assert "violates PodSecurity" in result.stderr and "allowPrivilegeEscalation" in result.stderr


# ----------------------------------------------------------------------------- helm install


def _allowed(
    kube, user: str, verb: str, group: str, resource: str, namespace: str | None, name: str = ""
) -> bool:
    """The apiserver's own authorizer, asked through a SubjectAccessReview (no discovery
    involved, so kinds whose CRDs are not installed, like PyTorchJob, are asked as well)."""
    resource, _, subresource = resource.partition("/")
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, group=group, resource=resource, subresource=subresource or None,
                name=None if name in ("", "*any*") else name, namespace=namespace,
            ),
        )
    )  # fmt: skip
    answer = client.AuthorizationV1Api(kube.api_client()).create_subject_access_review(review)
    return bool(answer.status.allowed)


@pytest.fixture
def installed(kube, medsft_crds, helm_bin, helm_home, namespace, tmp_path):
    """A real `helm install` of the quick-start values into the test namespace."""
    release = "medsft"
    values = values_file({"minio": {"enabled": True}}, tmp_path)
    args = ["--kubeconfig", str(kube.kubeconfig), "--namespace", namespace]
    helm(helm_bin, "install", release, str(CHART), "-f", str(values), *args, home=helm_home)
    yield {"release": release, "namespace": namespace, "args": args, "values": values}
    helm(helm_bin, "uninstall", release, *args, home=helm_home, check=False)


def test_helm_install_creates_the_operator_and_its_rbac(kube, helm_bin, helm_home, installed):
    namespace = installed["namespace"]
    status = helm(helm_bin, "status", "medsft", *installed["args"], "-o", "json", home=helm_home)
    assert '"status":"deployed"' in status.stdout.replace(" ", "")
    apps = client.AppsV1Api(kube.api_client())
    deployment = apps.read_namespaced_deployment("medsft", namespace)
    assert deployment.spec.template.spec.service_account_name == "medsft"
    core = client.CoreV1Api(kube.api_client())
    job_account = core.read_namespaced_service_account("medsft-job", namespace)
    assert job_account.automount_service_account_token is False
    rbac_api = client.RbacAuthorizationV1Api(kube.api_client())
    role = rbac_api.read_cluster_role(f"{namespace}-medsft-operator")
    granted = rule_set([kube.api_client().sanitize_for_serialization(r) for r in role.rules])
    assert granted == rule_set(rbac.cluster_rules()) | rule_set(rbac.namespaced_rules())
    lease_role = rbac_api.read_namespaced_role("medsft-leader-election", namespace)
    granted = rule_set([kube.api_client().sanitize_for_serialization(r) for r in lease_role.rules])
    assert granted == rule_set(rbac.leader_election_rules("medsft"))


def test_installed_operator_account_can_do_exactly_what_rbac_py_lists(kube, installed):
    namespace = installed["namespace"]
    operator = f"system:serviceaccount:{namespace}:medsft"
    granted = [
        *((atom, namespace) for atom in rule_set(rbac.namespaced_rules())),
        *((atom, None) for atom in rule_set(rbac.cluster_rules())),
        *((atom, namespace) for atom in rule_set(rbac.leader_election_rules("medsft"))),
    ]
    assert granted
    for (group, resource, name, verb), where in sorted(granted, key=str):
        assert _allowed(kube, operator, verb, group, resource, where, name), (verb, resource, name)
    # Nothing beyond: a sample of what this operator must never do.
    for verb, group, resource, name in [
        ("list", "", "secrets", ""),
        ("update", "coordination.k8s.io", "leases", "someone-elses-lease"),
        ("delete", "batch", "jobs", ""),
        ("update", "medsft.io", "sftjobs", ""),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
        ("delete", "", "namespaces", ""),
        ("create", "", "pods", ""),
        ("create", "", "pods/exec", ""),
        ("update", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ]:
        assert not _allowed(kube, operator, verb, group, resource, namespace, name), (
            verb,
            resource,
        )


def test_job_pod_account_has_no_api_rights(kube, installed):
    namespace = installed["namespace"]
    job = f"system:serviceaccount:{namespace}:medsft-job"
    for verb, group, resource in [
        ("get", "", "pods"), ("list", "", "secrets"), ("get", "", "secrets"),
        ("create", "batch", "jobs"), ("get", "medsft.io", "medsftruns"),
        ("patch", "medsft.io", "sftjobs/status"), ("get", "", "configmaps"),
        ("create", "", "events"), ("get", "coordination.k8s.io", "leases"),
    ]:  # fmt: skip
        assert not _allowed(kube, job, verb, group, resource, namespace), (verb, resource)
    assert _allowed(
        kube, f"system:serviceaccount:{namespace}:medsft", "get", "", "configmaps", namespace
    )


def test_helm_upgrade_keeps_generated_minio_credentials_and_uninstall_cleans_up(
    kube, helm_bin, helm_home, installed
):
    namespace, args = installed["namespace"], installed["args"]
    core = client.CoreV1Api(kube.api_client())
    before = core.read_namespaced_secret("medsft-storage", namespace).data
    assert (
        base64.b64decode(before["secretKey"]) and len(base64.b64decode(before["secretKey"])) == 40
    )
    helm(helm_bin, "upgrade", "medsft", str(CHART), "-f", str(installed["values"]),
         "--set", "replicaCount=2", *args, home=helm_home)  # fmt: skip
    assert core.read_namespaced_secret("medsft-storage", namespace).data == before
    apps = client.AppsV1Api(kube.api_client())
    assert apps.read_namespaced_deployment("medsft", namespace).spec.replicas == 2

    helm(helm_bin, "uninstall", "medsft", *args, home=helm_home)
    with pytest.raises(client.ApiException) as gone:
        apps.read_namespaced_deployment("medsft", namespace)
    assert gone.value.status == 404
    with pytest.raises(client.ApiException):
        client.RbacAuthorizationV1Api(kube.api_client()).read_cluster_role(
            f"{namespace}-medsft-operator"
        )
    # Datasets outlive the release; so do the CRDs (and with them every run).
    assert core.read_namespaced_persistent_volume_claim("medsft-minio", namespace)
    kube.kubectl("get", "crd", "medsftruns.medsft.io")


def test_helm_test_runs_the_probe_pod(kube, helm_bin, helm_home, installed):
    """`helm test` creates its probe pod and reports its outcome. There is no kubelet here,
    so this test plays the kubelet's part: it marks the pod Succeeded through the status
    subresource once helm created it, and checks that helm reports the test as passed."""
    namespace, args = installed["namespace"], installed["args"]
    result: dict[str, subprocess.CompletedProcess] = {}
    runner = threading.Thread(
        target=lambda: result.setdefault(
            "helm",
            helm(
                helm_bin, "test", "medsft", *args, "--timeout", "90s", home=helm_home, check=False
            ),
        )
    )
    runner.start()
    core = client.CoreV1Api(kube.api_client())
    pod = _wait_for_pod(core, namespace, "medsft-test")
    container = pod.spec.containers[0]
    assert f"medsft.{namespace}.svc:8080" in container.args[0]
    assert pod.metadata.annotations["helm.sh/hook"] == "test"
    pod.status = client.V1PodStatus(phase="Succeeded")
    core.replace_namespaced_pod_status("medsft-test", namespace, pod)
    runner.join(timeout=120)
    assert not runner.is_alive()
    assert result["helm"].returncode == 0, result["helm"].stderr
    assert "Phase:          Succeeded" in result["helm"].stdout


def _wait_for_pod(core, namespace: str, name: str, timeout: float = 60.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return core.read_namespaced_pod(name, namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        time.sleep(0.2)
    raise AssertionError(f"pod {namespace}/{name} was not created within {timeout}s")


def test_install_refuses_kubernetes_older_than_the_crds_need(helm_bin, helm_home):
    result = helm(helm_bin, "template", "x", str(CHART), "--kube-version", "1.29.0",
                  "--set", "minio.enabled=true", home=helm_home, check=False)  # fmt: skip
    assert result.returncode != 0 and "kubeVersion" in result.stderr
    assert KUBE_VERSION  # the tests render for the apiserver they run
