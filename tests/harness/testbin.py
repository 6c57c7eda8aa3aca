"""Where the real test binaries live.

Versions are pinned in ``hack/testbin.env`` (read here and by
``hack/build-testbin.sh``, which builds them into ``~/.cache/medsft/testbin``).
``$KUBEBUILDER_ASSETS`` wins for the binaries setup-envtest ships (etcd,
kube-apiserver, kubectl), so a user who already has envtest needs nothing else.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVTEST_BINARIES = {"etcd", "kube-apiserver", "kubectl"}


@cache
def pinned_versions() -> dict[str, str]:
    versions = {}
    for line in (REPO_ROOT / "hack" / "testbin.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            versions[key] = value
    return versions


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "medsft" / "testbin"
    return Path(os.environ.get("MEDSFT_TESTBIN_CACHE", default))


def _cached_location(name: str) -> Path:
    v = pinned_versions()
    folder = {
        "etcd": f"etcd-{v['ETCD_VERSION']}",
        "kube-apiserver": f"k8s-{v['K8S_VERSION']}",
        "kube-controller-manager": f"k8s-{v['K8S_VERSION']}",
        "kubectl": f"k8s-{v['K8S_VERSION']}",
        "helm": f"helm-{v['HELM_VERSION']}",
        "minio": f"minio-{v['MINIO_VERSION']}",
        "kube-score": f"kube-score-{v['KUBE_SCORE_VERSION']}",
        "kubelet": f"k8s-node-{v['K8S_VERSION']}",
        "kube-scheduler": f"k8s-node-{v['K8S_VERSION']}",
        "containerd": f"containerd-{v['CONTAINERD_VERSION']}",
        "containerd-shim-runc-v2": f"containerd-{v['CONTAINERD_VERSION']}",
        "ctr": f"containerd-{v['CONTAINERD_VERSION']}",
        "coredns": f"coredns-{v['COREDNS_VERSION']}",
        "training-operator.v1": f"training-operator-{v['TRAINING_OPERATOR_VERSION']}",
    }[name]
    return cache_dir() / folder / name


def binary(name: str) -> Path:
    """Path of a real binary, or a clear error saying how to get it."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and name in ENVTEST_BINARIES and (Path(assets) / name).is_file():
        return Path(assets) / name
    path = _cached_location(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"test binary {name!r} not found at {path}; run `make testbin` "
            f"(or bash hack/build-testbin.sh) to build it once"
        )
    return path


def shared_dir() -> Path:
    """The project's ../shared folder (benchmark samples, upstream CRDs)."""
    return Path(os.environ.get("MEDSFT_SHARED_DIR", REPO_ROOT.parent / "shared"))
