"""The eval image's Python environment, without the image: a venv holding exactly
trainer-image/eval.lock, installed the way trainer-image/Dockerfile.eval installs it
(``pip install --no-deps --require-hashes -r eval.lock``), on the platform the lock is
resolved for (CPython 3.11, manylinux x86_64, as the image's base).

Why not the image: vLLM with its CUDA torch is ~10 GB; buildah's layers, the OCI archive and
containerd's unpacked copy would hold that three times on a shared disk, and nothing here has
a GPU to run it on. What the image adds over this venv is its base, a compiler and the
project's wheel (the tests put the source on ``PYTHONPATH`` instead).

One venv under ``~/.cache/medsft/eval-env/venv`` (``MEDSFT_EVAL_ENV_CACHE``), synced to the
lock: a new lock installs only the wheels that changed and uninstalls what the lock no longer
lists. Measured here: a cold build 8 min 19 s, leaving 11 GB (the downloaded wheels, roughly
5 GB more, sit in the cache's tmp/ until pip finishes); a lock bump of 14 small packages 27 s;
an unchanged lock, nothing. The tests check that what is installed is exactly the lock, so a
sync cannot drift from what the Dockerfile's fresh install holds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

from .testbin import REPO_ROOT

LOCK = REPO_ROOT / "trainer-image" / "eval.lock"
BUILD_TIMEOUT_S = 3600
SYNCED = "medsft-eval-env.lock-sha256"  # the hash of the lock last installed completely
OWN_TOOLS = {"pip", "setuptools"}  # the venv's own, not the lock's


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "medsft" / "eval-env"
    return Path(os.environ.get("MEDSFT_EVAL_ENV_CACHE", default))


def _log(message: str) -> None:
    print(f"[eval-env {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return name.lower().replace("_", "-").replace(".", "-")


def installed(python: Path) -> dict[str, str]:
    """Normalized name -> version of every distribution in the venv of ``python``."""
    code = (
        "import importlib.metadata as m, json;"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return {normalized(name): version for name, version in json.loads(out.stdout).items()}


def locked() -> dict[str, str]:
    """Normalized name -> version of every package in the lock."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        requirement = line.split(" ", 1)[0]
        name, sep, version = requirement.partition("==")
        if sep:
            pins[normalized(name)] = version
    return pins


def eval_env() -> Path:
    """The venv synced to the committed lock (its folder; the interpreter is ``bin/python``)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / "venv"
    python = target / "bin" / "python"
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    # One sync per cache: two pytest workers (or sessions) asking at once wait for it.
    with open(root / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        marker = target / SYNCED
        if marker.exists() and marker.read_text() == digest:
            return target
        start = time.monotonic()
        if not python.exists():
            _log(f"creating {target} (first time: ~5 GB download, minutes)")
            venv.EnvBuilder(with_pip=True).create(target)
        marker.unlink(missing_ok=True)  # an interrupted sync is re-run, never trusted
        _log(f"installing {LOCK.relative_to(REPO_ROOT)} into {target}")
        # pip's temporary downloads under the cache (not /tmp), and no copy in pip's cache:
        # the venv is the cache. Installed pins that match are skipped.
        tmp = root / "tmp"
        tmp.mkdir(exist_ok=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes",
             "--no-cache-dir", "--disable-pip-version-check", "-r", str(LOCK)],
            check=True, timeout=BUILD_TIMEOUT_S, env={**os.environ, "TMPDIR": str(tmp)},
        )  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)
        extra = sorted(set(installed(python)) - set(locked()) - OWN_TOOLS)
        if extra:  # what an earlier lock had and this one does not
            subprocess.run(
                [str(python), "-m", "pip", "uninstall", "--quiet", "--yes", *extra],
                check=True, timeout=600,
            )  # fmt: skip
        marker.write_text(digest)
        _log(f"synced in {time.monotonic() - start:.0f} s")
        return target


if __name__ == "__main__":  # `make test` syncs it beside the other build phases
    _log(f"ready: {eval_env()}")
