"""The two small images the test node itself needs, written as image archives here
(no registry is reachable): the pod sandbox (Kubernetes' own ``pause``, built statically
by hack/build-testbin.sh) and a probe image with Debian's static busybox (``sh``,
``nslookup``, ``nc``) for pods that only check the node — and for the training operator's
``init-pytorch`` container, which waits for the master's DNS name with ``nslookup``.

An archive is the ``docker save`` layout (``manifest.json`` + config + one layer tar),
which ``ctr images import`` reads and names from ``RepoTags``. Archives are cached under
``~/.cache/medsft/node-images`` by the hash of what goes into them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

from .images import BuiltImage
from .testbin import cache_dir, pinned_versions

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static (hack/install-node-deps.sh)
# Applets the probe pods and the init container use. Not wget: Debian's static busybox
# wget crashes in its NSS lookups.
APPLETS = ("sh", "nslookup", "nc", "sleep", "seq", "echo", "cat", "ls", "env", "ip", "id")


def _layer(files: dict[str, tuple[bytes, int]], links: dict[str, str]) -> bytes:
    """One uncompressed layer; every entry owned by root, fixed mtime (reproducible)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in [*files, *links]} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        for name, target in sorted(links.items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
    return buf.getvalue()


def write_archive(
    path: Path,
    ref: str,
    files: dict[str, tuple[bytes, int]],
    *,
    links: dict[str, str] | None = None,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
) -> None:
    """A single-layer linux/amd64 image named ``ref``, in ``docker save`` format."""
    layer = _layer(files, links or {})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": entrypoint,
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/harness/node_images.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, data in (
            (config_name, config_bytes),
            ("layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)


def _cached(name: str, inputs: list[bytes], build) -> BuiltImage:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256(b"\0".join([Path(__file__).read_bytes(), *inputs])).hexdigest()[:16]
    ref = f"medsft.local/{name}:{digest}"
    folder = Path(os.environ.get("MEDSFT_IMAGE_CACHE", cache_dir().parent / "node-images"))
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{name}-{digest}.tar"
    if not archive.is_file():
        build(archive, ref)
    return BuiltImage(ref, archive)


def pause_image() -> BuiltImage:
    binary = cache_dir() / f"pause-{pinned_versions()['K8S_VERSION']}" / "pause"
    if not binary.is_file():
        raise FileNotFoundError(f"{binary} missing; run `make testbin` to build it once")
    data = binary.read_bytes()
    return _cached(
        "pause",
        [data],
        lambda path, ref: write_archive(path, ref, {"pause": (data, 0o755)}, entrypoint=["/pause"]),
    )


def probe_image() -> BuiltImage:
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} missing; run hack/install-node-deps.sh")
    data = BUSYBOX.read_bytes()

    def build(path: Path, ref: str) -> None:
        links = {f"bin/{a}": "busybox" for a in APPLETS}
        files = {
            "bin/busybox": (data, 0o755),
            # Name lookups of users and groups, so `id` works for any numeric uid.
            "etc/passwd": (b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n", 0o644),
            "etc/group": (b"root:x:0:\nnogroup:x:65534:\n", 0o644),
            "tmp/.keep": (b"", 0o644),
        }
        write_archive(path, ref, files, links=links, cmd=["/bin/sh"])

    return _cached("probe", [data, ",".join(APPLETS).encode()], build)
