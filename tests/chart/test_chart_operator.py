"""The operator as the chart installs it: its ServiceAccount's own token, the Deployment's
own settings, the chart's RBAC — and a MedSFTRun carried to its first workloads with no
permission missing. There is no kubelet here, so the Deployment's container is started as
a local process with exactly the Deployment's command, environment and credentials."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from chart.charting import CHART, helm, values_file
from kubernetes import client

from harness import processes

REPO = Path(__file__).resolve().parents[2]
RELEASE = "medsft"


def _wait_for(predicate, what: str, timeout: float = 90.0, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _token_kubeconfig(kube, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig holding a real token of the ServiceAccount (TokenRequest API), as the
    kubelet would mount it into the operator's pod."""
    token = kube.kubectl(
        "create", "token", account, "-n", namespace, "--duration=1h"
    ).stdout.strip()
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": account}}
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _container_env(container, namespace: str, pod_name: str) -> dict[str, str]:
    """The Deployment's env as the kubelet resolves it (values, and the downward API)."""
    field_values = {"metadata.name": pod_name, "metadata.namespace": namespace}
    env = {}
    for var in container.env:
        if var.value is not None:
            env[var.name] = var.value
        elif var.value_from and var.value_from.field_ref:
            env[var.name] = field_values[var.value_from.field_ref.field_path]
    return env


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status
    except OSError:
        return 0


@pytest.fixture
def storage_secret(kube, namespace, minio) -> str:
    data = {"accessKey": minio.access_key, "secretKey": minio.secret_key}
    client.CoreV1Api(kube.api_client()).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="object-store"),
        data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    ))  # fmt: skip
    return "object-store"


@pytest.fixture
def chart_operator(
    kube, medsft_crds, helm_bin, helm_home, namespace, minio, minio_bucket, storage_secret, tmp_path
):
    """`helm install` with the test MinIO as default storage, then the Deployment's container
    run as a local process under the chart's ServiceAccount token."""
    values = {
        "storage": {
            "endpoint": minio.endpoint,
            "bucket": minio_bucket,
            "secure": False,
            "credentialsSecret": {"name": storage_secret},
        },
        "operator": {
            "watchNamespaces": [namespace],
            "pollIntervalSeconds": 1,
            "logFormat": "plain",
        },
    }
    args = ["--kubeconfig", str(kube.kubeconfig), "--namespace", namespace]
    helm(
        helm_bin,
        "install",
        RELEASE,
        str(CHART),
        "-f",
        str(values_file(values, tmp_path)),
        *args,
        home=helm_home,
    )
    deployment = client.AppsV1Api(kube.api_client()).read_namespaced_deployment(RELEASE, namespace)
    pod = deployment.spec.template.spec
    [container] = pod.containers
    env = _container_env(container, namespace, f"{RELEASE}-0")
    port = processes.free_port()
    env |= {
        # The pod's one port (health and metrics) may be taken on this machine: by the other
        # xdist worker's operator, say, which once made this one exit at start.
        "MEDSFT_HTTP_PORT": str(port),
        "MEDSFT_METRICS_PORT": str(port),
        "KUBECONFIG": str(
            _token_kubeconfig(kube, namespace, pod.service_account_name, tmp_path / "sa.kubeconfig")
        ),
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
    }
    log = tmp_path / "operator.log"
    # The image's ENTRYPOINT is `medsft`; the Deployment gives its arguments.
    proc = processes.start(
        [str(Path(sys.executable).parent / "medsft"), *container.args], log, env=env
    )
    try:
        _wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz") == 200 or proc.poll() is not None,
                  "the operator's /healthz")  # fmt: skip
        if proc.poll() is not None:  # short, last line first: CI keeps only the output's tail
            lines = log.read_text().splitlines() or ["<empty log>"]
            raise AssertionError(
                f"the operator exited {proc.returncode} at start: {lines[-1]}\n"
                + "\n".join(lines[-20:])
            )
        yield {"port": port, "log": log, "namespace": namespace, "args": args, "proc": proc}
    finally:
        processes.stop(proc)
        helm(helm_bin, "uninstall", RELEASE, *args, home=helm_home, check=False)


def test_helm_test_probe_passes_against_the_running_operator(helm_bin, helm_home, chart_operator):
    """The `helm test` pod's own script, pointed at the operator process instead of its Service."""
    namespace, port = chart_operator["namespace"], chart_operator["port"]
    hooks = helm(helm_bin, "get", "hooks", RELEASE, *chart_operator["args"], home=helm_home).stdout
    [pod] = [d for d in yaml.safe_load_all(hooks) if d and d["kind"] == "Pod"]
    [container] = pod["spec"]["containers"]
    script = container["args"][0].replace(f"{RELEASE}.{namespace}.svc:8080", f"127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in script
    result = subprocess.run(
        [sys.executable, *container["command"][1:], script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"http://127.0.0.1:{port}/healthz 200",
        f"http://127.0.0.1:{port}/metrics 200",
    ]
    # One port, the chart's httpPort, as its Service and NetworkPolicy admit: no second one.
    assert f"health and metrics on ports [{port}];" in chart_operator["log"].read_text()


def test_operator_with_the_charts_rights_carries_a_run_to_its_workloads(kube, chart_operator):
    namespace = chart_operator["namespace"]
    run = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    run["metadata"] = {"name": "chart-run", "namespace": namespace}
    run["spec"].pop("storage", None)  # the chart's default storage
    custom = client.CustomObjectsApi(kube.api_client())
    custom.create_namespaced_custom_object("medsft.io", "v1alpha1", namespace, "medsftruns", run)

    def curation_job():
        items = custom.list_namespaced_custom_object(
            "medsft.io", "v1alpha1", namespace, "curationjobs"
        )["items"]
        return items[0] if items else None

    stage = _wait_for(curation_job, "the run's CurationJob")
    batch = client.BatchV1Api(kube.api_client())
    jobs = _wait_for(
        lambda: batch.list_namespaced_job(namespace).items, "the curation workers' Job"
    )
    pod = jobs[0].spec.template.spec
    assert pod.service_account_name == "medsft-job" and pod.automount_service_account_token is False
    assert pod.containers[0].image == "ghcr.io/medsft/medsft-trainer:0.1.0"
    config_maps = client.CoreV1Api(kube.api_client()).list_namespaced_config_map(namespace).items
    assert any(cm.metadata.name.startswith(stage["metadata"]["name"]) for cm in config_maps)

    def run_status():
        status = (
            custom.get_namespaced_custom_object(
                "medsft.io", "v1alpha1", namespace, "medsftruns", "chart-run"
            ).get("status")
            or {}
        )
        return status if status.get("stage") == "Curation" else None

    status = _wait_for(run_status, "the run's status")
    assert status["phase"] in ("Pending", "Running"), status
    events = client.CoreV1Api(kube.api_client()).list_namespaced_event(namespace).items
    assert any(e.involved_object.name == "chart-run" for e in events)
    # The Lease the chart's leader-election Role is for, held by this operator.
    lease = client.CoordinationV1Api(kube.api_client()).read_namespaced_lease(RELEASE, namespace)
    assert lease.spec.holder_identity == f"{RELEASE}-0"
    log = chart_operator["log"].read_text()
    assert "Forbidden" not in log and " 403" not in log, log[-3000:]
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{chart_operator['port']}/metrics").read().decode()
    )
    assert "medsft_reconciles_total" in metrics
    assert json.dumps(status)  # status is plain JSON, no secrets
    assert "secretKey" not in json.dumps(status)
