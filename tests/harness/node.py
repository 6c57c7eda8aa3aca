"""A real single-node Kubernetes cluster for the tests that must run pods.

Next to its own control plane (etcd, kube-apiserver with the ``Node`` authorizer and
``NodeRestriction``, kube-controller-manager with its default controllers), the node runs
containerd + runc + the CNI bridge plugin, the kubelet, kube-scheduler, CoreDNS and the
real Kubeflow training operator — all built or installed once by ``make testbin``.

The network is the node's own bridge (``BRIDGE``, ``GATEWAY``/24): pods reach each other,
the gateway and what the harness binds there (the apiserver, MinIO, CoreDNS) and nothing
else — no default route in pods, no masquerade, ``ip_forward`` untouched (off), CoreDNS
without forwarding. There is no kube-proxy, so ClusterIP Services do not work; pod IPs and
headless Services (what PyTorchJob rendezvous uses) do.

One node per machine: the bridge, ``/run/containerd``, netns and the pods' cgroups are
machine-wide, so a node holds an exclusive lock (``LOCK``) from start to stop and another
test session waits for it. ``stop`` removes everything the programs created, including
what they put outside their configured roots, and restores the kernel settings the kubelet
changes.

Images survive the node (``IMAGE_STORE``), as they survive a real node's reboot: containerd's
root (content, image metadata, unpacked snapshots) lives in a cache folder, so a session
whose images did not change imports nothing (unpacking the ~7 GB trainer image took
minutes a session), and one after a source edit unpacks only the changed project layer.
Containers never survive: ``stop`` removes them, and a store that a killed session left
without its ``clean`` mark is discarded whole at the next start.

Facts of this machine the configuration depends on (measured, see issue 15): cgroup v1
(kubelet needs ``failCgroupV1: false``); no ``CAP_SYS_RESOURCE``, so containerd must not ask
for negative ``oom_score_adj`` (``restrict_oom_score_adj``); no dummy netdev, so the bridge
address is the node IP.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from . import processes
from .controlplane import ControlPlane
from .minio_server import MinioServer
from .node_images import BuiltImage, pause_image, probe_image
from .testbin import binary, cache_dir, shared_dir

BRIDGE = "medsft0"
GATEWAY = "10.244.0.1"
SUBNET = "10.244.0.0/24"
NODE_NAME = "medsft-node"
CLUSTER_DOMAIN = "cluster.local"
GPUS = 8
"""``nvidia.com/gpu`` advertised on the node (an extended resource patched into its status)
so that specs with GPU requests schedule unchanged; there is no GPU, the trainer falls
back to CPU."""
LOCK = Path(os.environ.get("MEDSFT_NODE_LOCK", "/tmp/medsft-node.lock"))
IMAGE_STORE = Path(
    os.environ.get("MEDSFT_NODE_IMAGE_STORE", cache_dir().parent / "node-containerd")
)
"""containerd's root, kept across sessions (guarded by ``LOCK``) for its images only."""
# One version per image: the trainer is ~7 GB unpacked and the disk is shared; a checkout of
# another version re-imports (minutes) rather than holding both.
IMAGES_KEPT_PER_REPOSITORY = 1
"""The most recently used images of each repository that stay in ``IMAGE_STORE`` (the
current trainer and the one before it share the heavy layer's snapshots)."""
TRAINING_NAMESPACE = "kubeflow"
CNI_BIN = Path("/usr/lib/cni")
RUNC = Path("/usr/sbin/runc")
# Everything the node's programs create outside their configured roots; removed by
# ``stop`` when it was not there before.
OUTSIDE_ROOTS = [
    Path("/run/containerd"),  # shim sockets, runc state (fixed paths in containerd)
    Path("/var/run/netns"),  # pod network namespaces (fixed in containerd's CRI)
    Path("/var/lib/cni"),  # libcni's result cache
    Path("/var/lib/kubelet"),  # device-plugins socket folder (fixed in the kubelet)
    Path("/var/log/pods"),
    Path("/var/log/containers"),
    Path("/tmp/k8s-webhook-server"),  # the training operator's webhook certificates
]
WEBHOOK_SECRET = "training-operator-webhook-cert"
WEBHOOK_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")  # fixed in the operator
# Kernel settings the kubelet writes at start (KernelTunableModify), restored by ``stop``.
SYSCTLS = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
]
CGROUP_ROOT = Path("/sys/fs/cgroup")

# The upstream init container (training-operator pkg/controller.v1/pytorch/initcontainer.go)
# with two changes, as a cluster admin makes them with --pytorch-init-container-template-file:
# a securityContext (without one, Worker pods are rejected in namespaces that enforce the
# ``restricted`` Pod Security profile), and success judged by an answer (``Name:``) rather
# than nslookup's exit code: busybox >= 1.28 (the probe image; upstream's default is alpine
# 3.10's older busybox) exits non-zero when any search-domain candidate is NXDOMAIN, even
# though the Master's name resolved.
INIT_CONTAINER_TEMPLATE = """
- name: init-pytorch
  image: {{.InitContainerImage}}
  imagePullPolicy: IfNotPresent
  resources:
    limits:
      cpu: 100m
      memory: 20Mi
    requests:
      cpu: 50m
      memory: 10Mi
  securityContext:
    allowPrivilegeEscalation: false
    capabilities:
      drop: ["ALL"]
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    runAsUser: 65534
    seccompProfile:
      type: RuntimeDefault
  command: ['sh', '-c', 'err=1;for i in $(seq {{.MaxTries}}); do if nslookup {{.MasterAddr}} | grep -q ^Name:; then err=0 && break; fi;echo waiting for master; sleep 2; done; exit $err']
"""


def sh(
    *args: str | Path, check: bool = True, input: str | None = None, timeout: float = 120
) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, input=input, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {result.stderr.strip()}")
    return result.stdout


def mount_secret(data: dict[str, bytes], folder: Path) -> None:
    """Writes a Secret's files the way the kubelet's secret volume does: all keys at once
    (a new folder swapped in by renaming the ``..data`` link), so that a reader never
    sees a certificate without its key, or half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    current = folder / "..data"
    if current.exists() and all(
        (current / k).is_file() and (current / k).read_bytes() == v for k, v in data.items()
    ):
        return
    version = Path(tempfile.mkdtemp(prefix="..", dir=folder))
    for key, value in data.items():
        (version / key).write_bytes(value)
    link = folder / "..data_tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(version.name)
    os.replace(link, current)
    for old in folder.glob("..*"):
        if old.is_dir() and not old.is_symlink() and old != version:
            shutil.rmtree(old)
    for key in data:
        if not (folder / key).is_symlink():
            (folder / key).symlink_to(f"..data/{key}")


# A container securityContext that the ``restricted`` Pod Security profile admits.
RESTRICTED: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "seccompProfile": {"type": "RuntimeDefault"},
}


class Node:
    def __init__(self, logs: Path, *, lock_timeout: float = 3600) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        # Bulk state (images, snapshots, pod volumes) in its own folder, removed by stop().
        self.root = Path(tempfile.mkdtemp(prefix="medsft-node-", dir="/var/tmp"))
        self.lock_timeout = lock_timeout
        self.procs: dict[str, subprocess.Popen] = {}
        self.socket = self.root / "containerd.sock"
        self.images: dict[str, BuiltImage] = {}
        self.image_store = IMAGE_STORE
        self._stored: dict[str, float] = {}  # ref -> last use (epoch s), of IMAGE_STORE
        self.plane: ControlPlane = None  # type: ignore[assignment]  # set by start()
        self.minio: MinioServer = None  # type: ignore[assignment]
        self._lock: Any = None
        self._before: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> Node:
        self._acquire_lock()
        try:
            self._record()
            self._network()
            # Both listen on the bridge address (pods reach them there), so after _network().
            (self.logs / "control-plane").mkdir(exist_ok=True)
            self.plane = ControlPlane(
                self.logs / "control-plane", host=GATEWAY, node_authorization=True, controllers="*"
            )
            self.plane.start()
            # Started by the tests that need storage (``node.minio.start()`` is idempotent).
            self.minio = MinioServer(self.logs / "minio", host=GATEWAY)
            self._apply_kubeflow_crds()
            self._start_containerd()
            self.pause = self.import_image(pause_image())
            self.probe = self.import_image(probe_image())
            self._start_kubelet()
            self._start_scheduler()
            self._start_coredns()
            self._start_training_operator()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            for name in ("training-operator", "coredns", "kube-scheduler"):
                if name in self.procs:
                    processes.stop(self.procs.pop(name))
            if "kubelet" in self.procs:
                self._drain()
                processes.stop(self.procs.pop("kubelet"))
            self._kill_pods()
            clean = False
            if "containerd" in self.procs:
                clean = self._close_image_store()
                processes.stop(self.procs.pop("containerd"), timeout=20)
            self._kill_shims()
            self._unmount()
            self._remove_cgroups()
            if self.minio is not None:
                self.minio.stop()
            if self.plane is not None:
                self.plane.stop()
            if self._before:
                self._restore()
            shutil.rmtree(self.root, ignore_errors=True)
            if clean:
                (self.image_store / "clean").touch()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- machine-wide state --------------------------------------------------------------
    def _acquire_lock(self) -> None:
        self._lock = LOCK.open("w")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test session holds the node ({LOCK})") from None
                time.sleep(1)

    def _record(self) -> None:
        """What exists before the node starts, so that stop() removes exactly the rest."""
        if (Path("/sys/class/net") / BRIDGE).exists():
            # Left by a session that was killed: we hold the lock, so nothing uses it.
            sh("ip", "link", "delete", BRIDGE)
        self._before = {
            "paths": {str(p) for p in OUTSIDE_ROOTS if p.exists()},
            "netns": set(os.listdir("/var/run/netns"))
            if Path("/var/run/netns").exists()
            else set(),
            "sysctls": {k: Path("/proc/sys", k).read_text() for k in SYSCTLS},
            "iptables": {
                tool: self._chains(tool) for tool in ("iptables", "ip6tables") if shutil.which(tool)
            },
            "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
        }

    @staticmethod
    def _chains(tool: str) -> set[tuple[str, str]]:
        out = sh(f"{tool}-save", check=False)
        table, chains = "", set()
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                chains.add((table, line[1:].split()[0]))
        return chains

    def _network(self) -> None:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        conf = self.root / "cni" / "net.d"
        conf.mkdir(parents=True)
        (self.root / "resolv.conf").write_text("")  # pods see CoreDNS only, not the host's
        (conf / "10-medsft.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "medsft",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            # The bridge already has the gateway address; isGateway would
                            # also switch ip_forward on, and ipMasq would NAT pods outward.
                            "isGateway": False,
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                # No `routes`: pods get the on-link /24 and no default route.
                                "ranges": [
                                    [
                                        {
                                            "subnet": SUBNET,
                                            "rangeStart": "10.244.0.10",
                                            "rangeEnd": "10.244.0.250",
                                        }
                                    ]
                                ],
                                "dataDir": str(self.root / "cni" / "ipam"),
                            },
                        }
                    ],
                },
                indent=1,
            )
        )

    def _apply_kubeflow_crds(self) -> None:
        self.plane.apply_crds(kubeflow_crd_files())
        self.plane.kubectl("create", "namespace", TRAINING_NAMESPACE)
        # The training operator's manifests ship this Secret empty; its cert rotator fills
        # it and the webhook configuration's CA bundle.
        self.plane.kubectl(
            "create",
            "secret",
            "generic",
            "training-operator-webhook-cert",
            "-n",
            TRAINING_NAMESPACE,
        )

    # -- containerd ---------------------------------------------------------------------
    def _start_containerd(self) -> None:
        pause_ref = pause_image().ref
        config = self.root / "containerd.toml"
        self._open_image_store()
        config.write_text(
            f"""version = 3
root = "{self.image_store / "root"}"
state = "{self.root / "containerd" / "state"}"
# NRI would listen on a fixed socket under /var/run; the node needs none of it.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    # Imported by the harness: no registry is reachable.
    sandbox = "{pause_ref}"

[plugins."io.containerd.cri.v1.runtime"]
  # This VM lacks CAP_SYS_RESOURCE: negative oom_score_adj makes runc fail every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{self.root / "cni" / "net.d"}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        )
        log = self.logs / "containerd.log"
        bindir = binary("containerd").parent
        self.procs["containerd"] = proc = processes.start(
            [binary("containerd"), f"--config={config}"],
            log,
            env={
                # The shim is found on PATH.
                "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
                # Images are imported, never pulled: should a pod name an image the node
                # lacks, the pull goes to a closed port on loopback and fails at once,
                # instead of sending anything off the machine.
                "HTTP_PROXY": "http://127.0.0.1:9",
                "HTTPS_PROXY": "http://127.0.0.1:9",
                "NO_PROXY": "",
            },
        )
        processes.wait_until(
            lambda: self.ctr("version", check=True) is not None,
            timeout=60,
            what="containerd",
            proc=proc,
            log=log,
            interval=0.25,
        )
        # Images of the store that no session finished importing are not trusted.
        listed = set(self.ctr("images", "list", "--quiet").split())
        for ref in sorted(listed - set(self._stored)):
            self.ctr("images", "remove", "--sync", ref, check=False)
        self._stored = {ref: used for ref, used in self._stored.items() if ref in listed}

    # -- the image store (IMAGE_STORE) ----------------------------------------------------
    def _open_image_store(self) -> None:
        """Takes the store as the last session left it, or empty if that one was killed
        (its containers, mounts or half-written images could be anywhere in it)."""
        store = self.image_store
        if store.exists() and not (store / "clean").exists():
            self._unmount_under(str(store))
            shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True, exist_ok=True)
        (store / "clean").unlink(missing_ok=True)  # until stop() has closed it again
        try:
            self._stored = json.loads((store / "images.json").read_text())
        except (OSError, ValueError):
            self._stored = {}

    def _close_image_store(self) -> bool:
        """Removes every container and sandbox (images stay), prunes images to the most
        recently used per repository, and says whether the store is fit to keep."""
        now = time.time()
        used = {**self._stored, **dict.fromkeys(self.images, now)}
        keep: set[str] = set()
        by_repository: dict[str, list[str]] = {}
        for ref in used:
            by_repository.setdefault(ref.rsplit(":", 1)[0], []).append(ref)
        for refs in by_repository.values():
            keep |= set(sorted(refs, key=lambda r: -used[r])[:IMAGES_KEPT_PER_REPOSITORY])
        try:
            for task in self._tasks():
                self.ctr("tasks", "delete", "--force", task, check=False)
            for item in self._ids("sandboxes"):
                self.ctr("sandboxes", "remove", "--force", item)
            for item in self._ids("containers"):
                self.ctr("containers", "remove", item)
            for ref in set(self.ctr("images", "list", "--quiet").split()) - keep:
                self.ctr("images", "remove", "--sync", ref)
            left = [kind for kind in ("containers", "sandboxes") if self._ids(kind)]
            if left:
                raise RuntimeError(f"{', '.join(left)} left in containerd")
        except Exception as exc:  # the store is then discarded at the next start
            (self.logs / "image-store.log").write_text(f"not kept: {exc}\n")
            return False
        (self.image_store / "images.json").write_text(
            json.dumps({ref: used[ref] for ref in sorted(keep)}, indent=1)
        )
        return True

    def _ids(self, kind: str) -> list[str]:
        """The ids of containerd's containers or sandboxes (whose ``list`` has no --quiet:
        the first column under a header)."""
        if kind == "containers":
            return self.ctr(kind, "list", "--quiet").split()
        return [line.split()[0] for line in self.ctr(kind, "list").splitlines()[1:] if line.strip()]

    def ctr(self, *args: str | Path, check: bool = True, timeout: float = 120) -> str:
        return sh(
            binary("ctr"),
            f"--address={self.socket}",
            "--namespace=k8s.io",
            *args,
            check=check,
            timeout=timeout,
        )

    def import_image(self, image: BuiltImage) -> str:
        """Imports an image archive into the node's containerd (once per session) and
        returns its reference, which pods use with ``imagePullPolicy: IfNotPresent``."""
        if image.ref not in self.images and image.ref not in self._stored:
            # The trainer's ~7 GB unpack at ~13 s/GB on an idle machine: minutes on a busy
            # one; once per version of the image, thanks to the store.
            self.ctr("images", "import", image.archive, timeout=1200)
            if image.ref not in self.ctr("images", "list", "--quiet").split():
                raise RuntimeError(f"{image.archive} imported, but not as {image.ref}")
        self.images[image.ref] = image
        return image.ref

    # -- kubelet ------------------------------------------------------------------------
    def _start_kubelet(self) -> None:
        pki = self.plane.pki
        cert, key = pki.issue("kubelet", common_name=f"system:node:{NODE_NAME}", org="system:nodes")
        serving_cert, serving_key = pki.issue(
            "kubelet-serving", common_name=NODE_NAME, server=True, ips=(GATEWAY,)
        )
        kubeconfig = self.root / "kubelet.kubeconfig"
        self.plane.write_kubeconfig(kubeconfig, cert, key)
        config = self.root / "kubelet.yaml"
        healthz = processes.free_port()
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "failCgroupV1": False,  # this machine has cgroup v1 (hybrid)
                    "cgroupDriver": "cgroupfs",
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.socket}",
                    "address": GATEWAY,
                    "port": processes.free_port(GATEWAY),
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": healthz,
                    "tlsCertFile": str(serving_cert),
                    "tlsPrivateKeyFile": str(serving_key),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(pki.ca_cert)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "clusterDNS": [GATEWAY],
                    "clusterDomain": CLUSTER_DOMAIN,
                    "resolvConf": str(self.root / "resolv.conf"),
                    "nodeStatusUpdateFrequency": "2s",
                    "syncFrequency": "10s",
                    "serializeImagePulls": False,
                    # Images are imported, never pulled: never garbage-collect them, and
                    # never evict pods (or reclaim the images) because a shared disk is
                    # fuller than a node's would be: absolute floors, not shares of a disk
                    # that other work fills (1 % of this one once took the images away).
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "256Mi",
                        "nodefs.inodesFree": "1%",
                        "imagefs.available": "256Mi",
                    },
                    "shutdownGracePeriod": "0s",
                }
            )
        )
        log = self.logs / "kubelet.log"
        self.procs["kubelet"] = proc = processes.start(
            [
                binary("kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.root / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
                "--v=1",
            ],
            log,
        )
        core = client.CoreV1Api(self.plane.api_client())

        def ready() -> bool:
            node = core.read_node(NODE_NAME)
            return any(
                c.type == "Ready" and c.status == "True" for c in node.status.conditions or []
            )

        processes.wait_until(ready, timeout=120, what="kubelet (Node Ready)", proc=proc, log=log)
        gpus = {"nvidia.com/gpu": str(GPUS)}
        core.patch_node_status(NODE_NAME, {"status": {"capacity": gpus}})
        processes.wait_until(
            lambda: (
                (core.read_node(NODE_NAME).status.allocatable or {}).get("nvidia.com/gpu")
                == str(GPUS)
            ),
            timeout=60,
            what="nvidia.com/gpu allocatable",
            proc=proc,
            log=log,
        )

    # -- scheduler, DNS, training operator ----------------------------------------------------
    def _start_scheduler(self) -> None:
        log = self.logs / "kube-scheduler.log"
        self.procs["kube-scheduler"] = processes.start(
            [
                binary("kube-scheduler"),
                f"--kubeconfig={self.plane.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={processes.free_port()}",
                "--v=0",
            ],
            log,
        )

    def _start_coredns(self) -> None:
        ready = processes.free_port()
        corefile = self.root / "Corefile"
        # Cluster names only: no `forward`, so nothing is ever asked of another server, and
        # no `cache`, so a restarted pod's new address is seen at once.
        corefile.write_text(
            f""".:53 {{
    bind {GATEWAY}
    errors
    ready 127.0.0.1:{ready}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.plane.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""
        )
        log = self.logs / "coredns.log"
        self.procs["coredns"] = proc = processes.start([binary("coredns"), "-conf", corefile], log)
        processes.wait_http(f"http://127.0.0.1:{ready}/ready", what="coredns", proc=proc, log=log)

    def _register_webhook(self, port: int) -> None:
        """The training operator's PyTorchJob validating webhook, as its manifests register
        it: Service ``training-operator`` in its namespace. The operator runs on the node,
        not in a pod, so the Service has no selector and one EndpointSlice with the node's
        address; the apiserver routes to endpoints (``--enable-aggregator-routing``: there is
        no kube-proxy for a ClusterIP)."""
        service = "training-operator"
        docs = [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": service, "namespace": TRAINING_NAMESPACE},
                "spec": {"ports": [{"name": "webhook", "port": 443, "targetPort": port}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": service,
                    "namespace": TRAINING_NAMESPACE,
                    "labels": {
                        "kubernetes.io/service-name": service,
                        "endpointslice.kubernetes.io/managed-by": "medsft-test-harness",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": True}}],
                "ports": [{"name": "webhook", "port": port, "protocol": "TCP"}],
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "validator.training-operator.kubeflow.org"},
                "webhooks": [
                    {
                        "name": "validator.pytorchjob.training-operator.kubeflow.org",
                        "admissionReviewVersions": ["v1"],
                        "sideEffects": "None",
                        "failurePolicy": "Fail",
                        "clientConfig": {
                            "service": {
                                "name": service,
                                "namespace": TRAINING_NAMESPACE,
                                "path": "/validate-kubeflow-org-v1-pytorchjob",
                                "port": 443,
                            }
                        },
                        "rules": [
                            {
                                "apiGroups": ["kubeflow.org"],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE", "UPDATE"],
                                "resources": ["pytorchjobs"],
                            }
                        ],
                    }
                ],
            },
        ]
        self.plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    def _start_training_operator(self) -> None:
        template = self.root / "init-container.yaml"
        template.write_text(INIT_CONTAINER_TEMPLATE)
        probe = processes.free_port()
        webhook = processes.free_port(GATEWAY)
        self._register_webhook(webhook)
        log = self.logs / "training-operator.log"
        self.procs["training-operator"] = proc = processes.start(
            [
                binary("training-operator.v1"),
                "--enable-scheme=pytorchjob",
                "--metrics-bind-address=0",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                f"--webhook-server-port={webhook}",
                f"--pytorch-init-container-image={self.probe}",
                f"--pytorch-init-container-template-file={template}",
                "--pytorch-init-container-max-tries=60",
            ],
            log,
            env={"KUBECONFIG": str(self.plane.kubeconfig), "MY_POD_NAMESPACE": TRAINING_NAMESPACE},
        )
        core = client.CoreV1Api(self.plane.api_client())

        def ready() -> bool:
            # What the kubelet does for the operator's pod in a cluster: the Secret its cert
            # rotator fills, mounted at the fixed folder the operator reads certificates from.
            secret = core.read_namespaced_secret(WEBHOOK_SECRET, TRAINING_NAMESPACE)
            data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
            if data.get("tls.crt") and data.get("tls.key"):
                mount_secret(data, WEBHOOK_CERT_DIR)
            return (
                urllib.request.urlopen(f"http://127.0.0.1:{probe}/readyz", timeout=1).status == 200
            )

        processes.wait_until(ready, timeout=120, what="training operator", proc=proc, log=log)

    # -- teardown -------------------------------------------------------------------------
    def _drain(self) -> None:
        """Deletes every pod while the kubelet still runs, so that it stops them through
        the runtime (CNI teardown included) rather than leaving them to the hard path."""
        with contextlib.suppress(Exception):
            core = client.CoreV1Api(self.plane.api_client())
            for pod in core.list_pod_for_all_namespaces().items:
                with contextlib.suppress(client.ApiException):
                    core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                    )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._tasks():
                time.sleep(0.5)

    def _tasks(self) -> list[str]:
        if "containerd" not in self.procs:
            return []
        out = self.ctr("tasks", "list", "--quiet", check=False)
        return out.split()

    def _kill_pods(self) -> None:
        for task in self._tasks():
            self.ctr("tasks", "kill", "--signal=SIGKILL", task, check=False)
        for cgroup in self._pod_cgroups():
            with contextlib.suppress(OSError):
                for pid in (cgroup / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)

    def _kill_shims(self) -> None:
        """Shims outlive containerd by design; ours are the ones serving our socket."""
        needle = str(self.socket).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)

    def _unmount(self) -> None:
        self._unmount_under(str(self.root), str(self.image_store), *map(str, OUTSIDE_ROOTS))

    @staticmethod
    def _unmount_under(*roots: str) -> None:
        for _ in range(3):  # a lazy unmount can uncover a mount below it
            points = []
            with contextlib.suppress(OSError):
                for line in Path("/proc/self/mountinfo").read_text().splitlines():
                    point = line.split()[4].replace("\\040", " ")
                    if any(point == r or point.startswith(r + "/") for r in roots):
                        points.append(point)
            if not points:
                return
            for point in sorted(points, key=len, reverse=True):
                subprocess.run(["umount", "-l", point], capture_output=True)

    @staticmethod
    def _pod_cgroups() -> list[Path]:
        found: list[Path] = []
        for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
            top = hierarchy / "kubepods"
            if top.is_dir():
                found += sorted(
                    (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
                )
                found.append(top)
        return found

    def _remove_cgroups(self) -> None:
        for cgroup in self._pod_cgroups():
            for _ in range(20):
                try:
                    cgroup.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)

    def _restore(self) -> None:
        before = self._before
        for name in os.listdir("/var/run/netns") if Path("/var/run/netns").exists() else []:
            if name not in before["netns"]:
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        for tool, chains in before["iptables"].items():
            new = self._chains(tool) - chains
            for table in sorted({t for t, _ in new}):
                # Jumps into a new chain from a chain that was there before.
                targets = {c for t, c in new if t == table}
                for rule in sh(tool, "-t", table, "-S", check=False).splitlines():
                    words = rule.split()
                    jump = words[words.index("-j") + 1] if "-j" in words[:-1] else None
                    if words[:1] == ["-A"] and words[1] not in targets and jump in targets:
                        subprocess.run([tool, "-t", table, "-D", *words[1:]], capture_output=True)
            for table, chain in sorted(new):
                subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            for table, chain in sorted(self._chains(tool) - chains):
                subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)
        if (Path("/sys/class/net") / BRIDGE).exists():
            subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        for key, value in before["sysctls"].items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text(value)
        for path in OUTSIDE_ROOTS:
            if str(path) not in before["paths"]:
                shutil.rmtree(path, ignore_errors=True)

    # -- helpers for tests ---------------------------------------------------------------
    def api_client(self) -> client.ApiClient:
        return self.plane.api_client()

    def why_waiting(self, namespace: str) -> str:
        """For a failure message: why the namespace's pods have not run (the scheduler's
        and the kubelet's own words), what the node says of itself and how much disk is
        left, since a shared disk filling up is what stalls pods here."""
        core = client.CoreV1Api(self.api_client())
        lines = []
        for pod in core.list_namespaced_pod(namespace).items:
            said = [
                f"{c.type}={c.status} {c.reason or ''} {c.message or ''}".strip()
                for c in pod.status.conditions or []
                if c.status != "True"
            ]
            for status in (pod.status.init_container_statuses or []) + (
                pod.status.container_statuses or []
            ):
                waiting = status.state.waiting if status.state else None
                if waiting is not None:
                    said.append(f"{status.name} waiting: {waiting.reason} {waiting.message or ''}")
                if status.restart_count:
                    said.append(f"{status.name} restarted {status.restart_count}x")
            lines.append(f"pod {pod.metadata.name} {pod.status.phase}: {'; '.join(said) or '-'}")
        node = core.read_node(NODE_NAME)
        flags = [
            f"{c.type}={c.status} ({c.message})"
            for c in node.status.conditions or []
            if (c.type == "Ready") != (c.status == "True")
        ]
        taints = [f"{t.key}:{t.effect}" for t in node.spec.taints or []]
        lines.append(f"node: {', '.join(flags) or 'Ready, no pressure'}; taints {taints or '-'}")
        for path in (self.image_store, self.root):
            lines.append(f"disk free under {path}: {shutil.disk_usage(path).free / 2**30:.1f} GiB")
        return "\n".join(lines)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None):  # type: ignore[no-untyped-def]
        return self.plane.kubectl(*args, check=check, input=input)


def kubeflow_crd_files() -> list[Path]:
    """The upstream Kubeflow CRDs (PyTorchJob v1 and Trainer v2), unmodified."""
    folder = shared_dir() / "third_party" / "kubeflow"
    return sorted(folder.glob("*.kubeflow.org_*.yaml")) + sorted(folder.glob("kubeflow.org_*.yaml"))
