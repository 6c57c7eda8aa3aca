"""A real Kubernetes control plane on 127.0.0.1, envtest style.

etcd + kube-apiserver (TLS, client-certificate auth, RBAC authorization) +
kube-controller-manager running only the garbage-collector, namespace and
service-account controllers — enough for ownerReference cascades, namespace
deletion and the default ServiceAccount, without pods ever being scheduled.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import yaml
from kubernetes import client, config

from . import processes
from .pki import PKI
from .testbin import binary

CONTROLLERS = "garbage-collector-controller,namespace-controller,serviceaccount-controller"

# Who changed what, and when: every write (not reads) at Metadata level (no bodies, so no
# Secret data in the log). Tests prove with it that a replica did nothing in a window.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl, with what kubectl said (CalledProcessError alone hides it)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


class ControlPlane:
    """``host``/``node_authorization``/``controllers`` are what a real node needs
    (tests/harness/node.py): an apiserver its pods can reach on the node's bridge address,
    kubelets authorized as nodes (``Node`` authorizer + ``NodeRestriction``), and the
    controllers that pods depend on (Jobs, EndpointSlices behind headless DNS, ...)."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        host: str = "127.0.0.1",
        node_authorization: bool = False,
        controllers: str = CONTROLLERS,
    ) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="medsft-kube-"))
        self._owns_root = root is None
        self.procs: dict[str, subprocess.Popen] = {}
        self.host = host
        self.node_authorization = node_authorization
        self.controllers = controllers
        self.etcd_port = processes.free_port()
        self.port = processes.free_port(host)
        self.server = f"https://{host}:{self.port}"
        self.kubeconfig = self.root / "admin.kubeconfig"
        self.audit_log = self.root / "audit.log"
        self.kubectl_path = binary("kubectl")

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> ControlPlane:
        try:
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            if name in self.procs:
                processes.stop(self.procs.pop(name))
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{processes.free_port()}"
        client_url = f"http://127.0.0.1:{self.etcd_port}"
        log = self.root / "etcd.log"
        self.procs["etcd"] = proc = processes.start(
            [
                binary("etcd"),
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # test data: durability is not the point, speed is
                "--log-level=warn",
            ],
            log,
        )
        processes.wait_until(
            lambda: urllib.request.urlopen(f"{client_url}/health", timeout=1).status == 200,
            timeout=60,
            what="etcd",
            proc=proc,
            log=log,
        )

    def _start_apiserver(self) -> None:
        pki = PKI(self.root / "pki")
        self.pki = pki
        serving_cert, serving_key = pki.issue(
            "apiserver", common_name="kube-apiserver", server=True, ips=(self.host,)
        )
        admin_cert, admin_key = pki.issue("admin", common_name="admin", org="system:masters")
        self.admin_cert, self.admin_key = admin_cert, admin_key
        sa_key, sa_pub = pki.service_account_keys()
        self.sa_key = sa_key
        self.write_kubeconfig(self.kubeconfig, admin_cert, admin_key)
        log = self.root / "kube-apiserver.log"
        node_flags: list[str] = []
        authorization = "RBAC"
        if self.node_authorization:
            authorization = "Node,RBAC"
            # The apiserver's client identity towards kubelets (logs, exec).
            kubelet_cert, kubelet_key = pki.issue(
                "apiserver-kubelet-client", common_name="kube-apiserver", org="system:masters"
            )
            node_flags = [
                "--enable-admission-plugins=NodeRestriction",
                f"--kubelet-client-certificate={kubelet_cert}",
                f"--kubelet-client-key={kubelet_key}",
                "--kubelet-preferred-address-types=InternalIP",
                # Webhooks and aggregated APIs by their Service's endpoints: a node without
                # kube-proxy has no ClusterIP routing.
                "--enable-aggregator-routing=true",
            ]
        policy = self.root / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.procs["kube-apiserver"] = proc = processes.start(
            [
                binary("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self.port}",
                f"--cert-dir={self.root / 'certs'}",
                f"--tls-cert-file={serving_cert}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--authorization-mode={authorization}",
                *node_flags,
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--v=0",
            ],
            log,
        )
        ctx = self._ssl_context(admin_cert, admin_key)
        processes.wait_until(
            lambda: (
                urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=2).status
                == 200
            ),
            timeout=120,
            what="kube-apiserver",
            proc=proc,
            log=log,
            interval=0.25,
        )

    def _start_controller_manager(self) -> None:
        log = self.root / "kube-controller-manager.log"
        self.procs["kube-controller-manager"] = processes.start(
            [
                binary("kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                f"--controllers={self.controllers}",
                f"--root-ca-file={self.pki.ca_cert}",
                f"--service-account-private-key-file={self.sa_key}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={processes.free_port()}",
                f"--cert-dir={self.root / 'kcm-certs'}",
                "--authentication-skip-lookup=true",
                "--use-service-account-credentials=false",
                "--v=0",
            ],
            log,
        )
        proc = self.procs["kube-controller-manager"]
        # Ready once the service-account controller has made `default` in `default`.
        core = client.CoreV1Api(self.api_client())
        processes.wait_until(
            lambda: core.read_namespaced_service_account("default", "default") is not None,
            timeout=120,
            what="kube-controller-manager",
            proc=proc,
            log=log,
            interval=0.25,
        )

    # -- clients -------------------------------------------------------------------
    def _ssl_context(self, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def write_kubeconfig(self, path: Path, cert: Path, key: Path) -> None:
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "medsft-test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki.ca_cert),
                    },
                }
            ],
            "users": [
                {"name": "admin", "user": {"client-certificate": str(cert), "client-key": str(key)}}
            ],
            "contexts": [
                {"name": "medsft-test", "context": {"cluster": "medsft-test", "user": "admin"}}
            ],
            "current-context": "medsft-test",
        }
        path.write_text(yaml.safe_dump(doc))

    def apply_crds(self, files: list[Path]) -> list[str]:
        """Applies CRD files and waits until they are served."""
        names = []
        for path in files:
            # Server-side apply: some CRDs are larger than the client-side annotation limit.
            out = self.kubectl("apply", "--server-side", "-f", str(path), "-o", "name")
            names += out.stdout.split()
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
        return names

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def impersonating(self, user: str, groups: list[str] | None = None) -> client.ApiClient:
        """An admin client that acts as ``user`` (e.g. a ServiceAccount) via impersonation."""
        api = self.api_client()
        api.set_default_header("Impersonate-User", user)
        for group in groups or []:
            api.set_default_header("Impersonate-Group", group)
        return api

    def audit_events(self, *, user: str | None = None) -> list[dict]:
        """The writes the apiserver has answered so far (optionally: of ``user``)."""
        events = []
        text = self.audit_log.read_text() if self.audit_log.exists() else ""
        for line in text.splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # a line still being written
                continue
            if user is None or event.get("user", {}).get("username") == user:
                events.append(event)
        return events

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, result.args, result.stdout, result.stderr)
        return result
