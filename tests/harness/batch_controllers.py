"""The real batch-scheduling controllers beside the test control plane: Kueue, Kubeflow
Trainer v2 and JobSet, each its upstream controller manager (built from its Go module by
``hack/build-testbin.sh``) with its release's own CRDs and webhooks.

Webhooks are real too: each manager serves them on 127.0.0.1 with a certificate from the
control plane's CA (``pki.py``), and the upstream ``*WebhookConfiguration`` objects are
installed with ``clientConfig.url`` pointing there instead of at an in-cluster Service
(there is no Service network here), with that CA as ``caBundle``. The managers' own
certificate rotation is off for the same reason. Kueue's CRD conversion webhooks
(v1beta1 <-> v1beta2) are wired the same way.

Webhooks that intercept objects other than the controller's own (Jobs, PyTorchJobs,
TrainJobs, pods) only see namespaces labelled :data:`BATCH_LABEL`, so the rest of the
test session never depends on these processes.

There is no node: pods of the Jobs these controllers create are never scheduled (tests
that need a pod to finish drive the Job's status as the harness does elsewhere).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from . import processes
from .controlplane import ControlPlane
from .testbin import cache_dir, pinned_versions

BATCH_LABEL = "medsft.test/batch"
KUEUE_INTEGRATIONS = ["batch/job", "kubeflow.org/pytorchjob", "trainer.kubeflow.org/trainjob"]


def upstream_dir(component: str) -> Path:
    """Where the build put a component's binary and its release's manifests."""
    v = pinned_versions()
    folder = {
        "kueue": f"kueue-{v['KUEUE_VERSION']}",
        "trainer": f"trainer-{v['TRAINER_VERSION']}",
        "jobset": f"jobset-{v['JOBSET_VERSION']}",
    }[component]
    path = cache_dir() / folder
    if not (path / "upstream").is_dir():
        raise FileNotFoundError(
            f"{component} not built at {path}; run `bash hack/build-testbin.sh {component}`"
        )
    return path


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crd_files(component: str) -> list[Path]:
    base = upstream_dir(component) / "upstream"
    folder = {
        "kueue": base / "config/components/crd/bases",
        "trainer": base / "manifests/base/crds",
        "jobset": base / "config/components/crd/bases",
    }[component]
    return sorted(p for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


def webhook_configurations(
    docs: Iterable[dict[str, Any]],
    *,
    prefix: str,
    url: str,
    ca_bundle: str,
    keep: set[tuple[str, str]],
    own_group: str,
) -> list[dict[str, Any]]:
    """Upstream webhook configurations, pointed at ``url`` (base, no path), keeping only
    the webhooks on ``keep`` (group, resource) pairs; webhooks on other groups' objects
    are limited to namespaces labelled :data:`BATCH_LABEL`."""
    out = []
    for doc in docs:
        if not doc.get("kind", "").endswith("WebhookConfiguration"):
            continue
        doc = copy.deepcopy(doc)
        doc["metadata"] = {"name": f"{prefix}-{doc['metadata']['name']}"}
        hooks = []
        for hook in doc.get("webhooks") or []:
            pairs = {
                (group, resource)
                for rule in hook.get("rules") or []
                for group in rule.get("apiGroups") or []
                for resource in rule.get("resources") or []
            }
            if not pairs & keep:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
            if any(group != own_group for group, _ in pairs):
                hook["namespaceSelector"] = {"matchLabels": {BATCH_LABEL: "true"}}
            hooks.append(hook)
        if hooks:
            doc["webhooks"] = hooks
            out.append(doc)
    return out


class Manager:
    """One controller manager process: config file, serving certificate, webhooks."""

    name: str = ""
    binary_name: str = ""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.root = plane.root / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.webhook_port = processes.free_port()
        self.health_port = processes.free_port()
        self.metrics_port = processes.free_port()
        self.url = f"https://127.0.0.1:{self.webhook_port}"
        self.log = self.root / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.installed: list[str] = []  # webhook configurations, as kubectl names

    @property
    def binary(self) -> Path:
        return upstream_dir(self.name) / self.binary_name

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.plane.pki.ca_cert.read_bytes()).decode()

    def certificates(self) -> Path:
        """tls.crt / tls.key for 127.0.0.1, signed by the control plane's CA."""
        certs = self.root / "certs"
        certs.mkdir(exist_ok=True)
        cert, key = self.plane.pki.issue(f"{self.name}-webhook", common_name=self.name, server=True)
        (certs / "tls.crt").write_bytes(cert.read_bytes())
        (certs / "tls.key").write_bytes(key.read_bytes())
        return certs

    def config(self, certs: Path) -> dict[str, Any]:
        raise NotImplementedError

    def args(self, config_file: Path) -> list[str]:
        return [f"--config={config_file}", "--zap-log-level=info"]

    def webhooks(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def command(self, args: list[str]) -> list[str | Path]:
        return [self.binary, *args]

    def env(self) -> dict[str, str]:
        return {}

    def before_start(self) -> None:
        """Install what the manager needs at start-up (its CRDs)."""

    def start(self) -> Manager:
        self.before_start()
        config_file = self.root / "config.yaml"
        config_file.write_text(yaml.safe_dump(self.config(self.certificates())))
        self.proc = processes.start(
            self.command(self.args(config_file)),
            self.log,
            env={"KUBECONFIG": str(self.plane.kubeconfig), **self.env()},
        )
        processes.wait_until(
            self._healthy, timeout=120, what=self.name, proc=self.proc, log=self.log, interval=0.5
        )
        for doc in self.webhooks():
            out = self.plane.kubectl("apply", "-f", "-", "-o", "name", input=yaml.safe_dump(doc))
            self.installed += out.stdout.split()
        processes.wait_until(
            self._serving_webhooks,
            timeout=60,
            what=f"{self.name} webhooks",
            proc=self.proc,
            log=self.log,
            interval=0.5,
        )
        return self

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        return urllib.request.urlopen(url, timeout=2).status == 200

    def _serving_webhooks(self) -> bool:
        """The webhook server answers TLS with our CA (any HTTP status will do)."""
        ctx = ssl.create_default_context(cafile=str(self.plane.pki.ca_cert))
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(f"{self.url}/", context=ctx, timeout=2)
        return True

    def stop(self) -> None:
        if self.installed:
            self.plane.kubectl(
                "delete", "--ignore-not-found", "--wait=false", *self.installed, check=False
            )
            self.installed = []
        if self.proc is not None:
            processes.stop(self.proc)
            self.proc = None

    def tail(self, lines: int = 60) -> str:
        return processes.tail(self.log, lines)


def _controller_manager_config(manager: Manager, certs: Path) -> dict[str, Any]:
    """The controller-runtime fields the three managers' configuration files share."""
    return {
        "health": {"healthProbeBindAddress": f"127.0.0.1:{manager.health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{manager.metrics_port}"},
        "webhook": {"port": manager.webhook_port, "host": "127.0.0.1", "certDir": str(certs)},
        "leaderElection": {"leaderElect": False},
        "clientConnection": {"qps": 50, "burst": 100},
    }


class Kueue(Manager):
    """Kueue with the batch/job, PyTorchJob and TrainJob integrations enabled explicitly."""

    name = "kueue"
    binary_name = "kueue"
    NAMESPACE = "kueue-system"
    CONVERTED = ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")

    def before_start(self) -> None:
        core = client.CoreV1Api(self.plane.api_client())
        try:
            core.create_namespace(
                client.V1Namespace(metadata=client.V1ObjectMeta(name=self.NAMESPACE))
            )
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        install_crds(self.plane, crd_files("kueue"), conversion=self._conversion)

    def _conversion(self, crd: dict[str, Any]) -> dict[str, Any]:
        # Upstream's kustomize patches (config/components/crd/patches/webhook_in_*.yaml)
        # turn on the conversion webhook for these CRDs; the same, by URL.
        if crd["spec"]["names"]["plural"] in self.CONVERTED:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": f"{self.url}/convert", "caBundle": self.ca_bundle},
                    "conversionReviewVersions": ["v1"],
                },
            }
        return crd

    def config(self, certs: Path) -> dict[str, Any]:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": self.NAMESPACE,
            **_controller_manager_config(self, certs),
            "manageJobsWithoutQueueName": False,
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": list(KUEUE_INTEGRATIONS)},
        }

    def args(self, config_file: Path) -> list[str]:
        # The on-demand visibility API is an aggregated apiserver of its own: not needed.
        return [*super().args(config_file), "--feature-gates=VisibilityOnDemand=false"]

    def command(self, args: list[str]) -> list[str | Path]:
        """Kueue without its internal certificate management reads the metrics server's
        certificate from a fixed path, /etc/kueue/metrics/certs (cmd/kueue/main.go). It
        gets one there in a private mount namespace whose /etc is an overlay of the host's:
        nothing on the machine changes."""
        upper, work = self.root / "etc-upper", self.root / "etc-work"
        certs = upper / "kueue" / "metrics" / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        served = self.root / "certs"
        for name in ("tls.crt", "tls.key"):
            (certs / name).write_bytes((served / name).read_bytes())
        script = (
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
            ' && exec "$@"'
        )
        return [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "kueue",
            self.binary,
            *args,
        ]

    def webhooks(self) -> list[dict[str, Any]]:
        manifests = upstream_dir("kueue") / "upstream/config/components/webhook/manifests.yaml"
        keep = {
            ("batch", "jobs"),
            ("kubeflow.org", "pytorchjobs"),
            ("trainer.kubeflow.org", "trainjobs"),
        }
        keep |= {
            ("kueue.x-k8s.io", r)
            for r in ("clusterqueues", "localqueues", "resourceflavors", "workloads", "cohorts")
        }
        return webhook_configurations(
            _docs(manifests),
            prefix="kueue",
            url=self.url,
            ca_bundle=self.ca_bundle,
            keep=keep,
            own_group="kueue.x-k8s.io",
        )


class JobSet(Manager):
    name = "jobset"
    binary_name = "jobset"

    def before_start(self) -> None:
        install_crds(self.plane, crd_files("jobset"))

    def config(self, certs: Path) -> dict[str, Any]:
        return {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            **_controller_manager_config(self, certs),
            "internalCertManagement": {"enable": False},
        }

    def webhooks(self) -> list[dict[str, Any]]:
        folder = upstream_dir("jobset") / "upstream/config/components/webhook"
        docs = _docs(folder / "manifests.yaml")
        # Upstream's kustomize patches limit the pod webhooks to JobSet's pods.
        for doc in docs:
            for hook in doc.get("webhooks") or []:
                if hook["name"] in ("mpod.kb.io", "vpod.kb.io"):
                    hook["objectSelector"] = {
                        "matchExpressions": [
                            {"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}
                        ]
                    }
        keep = {("jobset.x-k8s.io", "jobsets"), ("", "pods")}
        return webhook_configurations(
            docs,
            prefix="jobset",
            url=self.url,
            ca_bundle=self.ca_bundle,
            keep=keep,
            own_group="jobset.x-k8s.io",
        )


class Trainer(Manager):
    name = "trainer"
    binary_name = "trainer-controller-manager"

    def __init__(self, plane: ControlPlane) -> None:
        super().__init__(plane)
        self.status_port = processes.free_port()

    def before_start(self) -> None:
        install_crds(self.plane, crd_files("trainer"))

    def env(self) -> dict[str, str]:
        # Trainer's configuration has no certDir: controller-runtime's default is
        # $TMPDIR/k8s-webhook-server/serving-certs.
        return {"TMPDIR": str(self.root / "tmp")}

    def config(self, certs: Path) -> dict[str, Any]:
        serving = self.root / "tmp" / "k8s-webhook-server" / "serving-certs"
        serving.mkdir(parents=True, exist_ok=True)
        for name in ("tls.crt", "tls.key"):
            (serving / name).write_bytes((certs / name).read_bytes())
        base = _controller_manager_config(self, certs)
        del base["webhook"]["certDir"]
        base["metrics"]["secureServing"] = False
        return {
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
            "kind": "Configuration",
            **base,
            "certManagement": {"enable": False},
            "statusServer": {"port": self.status_port},
        }

    def webhooks(self) -> list[dict[str, Any]]:
        manifests = upstream_dir("trainer") / "upstream/manifests/base/webhook/manifests.yaml"
        keep = {
            ("trainer.kubeflow.org", r)
            for r in ("trainjobs", "clustertrainingruntimes", "trainingruntimes")
        }
        return webhook_configurations(
            _docs(manifests),
            prefix="trainer",
            url=self.url,
            ca_bundle=self.ca_bundle,
            keep=keep,
            own_group="trainer.kubeflow.org",
        )


def install_crds(plane: ControlPlane, files: list[Path], conversion: Any = None) -> list[str]:
    """Server-side apply upstream CRDs (unmodified but for ``conversion``) and wait until
    they are served."""
    names = []
    for path in files:
        for doc in _docs(path):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            if conversion is not None:
                doc = conversion(doc)
            out = plane.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                "-",
                "-o",
                "name",
                input=yaml.safe_dump(doc),
            )
            names += out.stdout.split()
    # A CRD created a moment ago may have no status.conditions yet, which kubectl wait
    # reports as an error rather than waiting for: ask again until it has them.
    processes.wait_until(
        lambda: (
            plane.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", *names, check=False
            ).returncode
            == 0
        ),
        timeout=90,
        what="CRDs established",
        interval=0.5,
    )
    return names
