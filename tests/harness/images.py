"""The trainer and operator images, built here from trainer-image/ (no Docker engine, no
registry) by ``hack/build-images.sh``: OCI archives that ``ctr -n k8s.io images import``
lists under :attr:`BuiltImage.ref`.

The first call builds (minutes; progress on the terminal and in a log under the cache);
later calls return the archive cached under ``~/.cache/medsft/images`` by the hash of the
build inputs, so an unchanged tree costs a second and a source edit rebuilds only the
project's layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .testbin import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-images.sh"
BUILD_TIMEOUT_S = 3600  # a cold trainer build on two cores is ~10 minutes (benchmarks/README.md)


@dataclass(frozen=True)
class BuiltImage:
    ref: str
    """The name the image has in the archive (and in containerd once imported)."""
    archive: Path
    """OCI archive (zstd-compressed layers)."""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "medsft" / "images"
    return Path(os.environ.get("MEDSFT_IMAGE_CACHE", default))


def builder_missing() -> str | None:
    """Why images cannot be built here, or None."""
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (run `bash hack/install-node-deps.sh`)"
    if os.geteuid() != 0:
        return "building images needs root (buildah storage and chroot)"
    return None


def _build(name: str) -> BuiltImage:
    reason = builder_missing()
    if reason:
        raise RuntimeError(f"cannot build the {name} image: {reason}")
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT), name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    # The script's progress lines go to the real terminal: pytest captures sys.stderr, and a
    # first build of ten minutes must not look hung.
    progress: list[str] = []

    def relay() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            progress.append(line)
            sys.__stderr__.write(line)
            sys.__stderr__.flush()

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    try:
        proc.wait(timeout=BUILD_TIMEOUT_S)  # stdout is one short line per image
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    relay_thread.join(timeout=5)
    assert proc.stdout is not None
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"building the {name} image failed:\n{''.join(progress[-60:])}")
    ref, archive = out.split()[-2:]
    return BuiltImage(ref=ref, archive=Path(archive))


@cache
def trainer_image() -> BuiltImage:
    """trainer-image/Dockerfile: what curation, SFT and eval pods run (uid 1000)."""
    return _build("trainer")


@cache
def operator_image() -> BuiltImage:
    """trainer-image/Dockerfile.operator: the control plane the chart deploys (uid 10001)."""
    return _build("operator")
