"""A real MLflow tracking server (``mlflow server``) on 127.0.0.1 (or the test node's bridge): SQLite backend store, run
artifacts proxied by the server into the test MinIO; stoppable and restartable mid-test.

The server is the full ``mlflow`` package, which the project's venv cannot hold: mlflow
3.17 requires ``pyarrow<26`` (the project pins 26) and mlflow 3.18's ``mlflow-tracing``
is not published yet. So it lives in a venv of its own, built once from PyPI into the
test-binary cache (``~/.cache/medsft/testbin/mlflow-server-<version>``, ~0.9 GB) the way
the Go binaries are built once; the project itself only needs the ``mlflow-skinny``
client. Pinned here; bump ``MLFLOW_VERSION`` to test against another server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from . import processes
from .minio_server import MinioServer
from .testbin import cache_dir

MLFLOW_VERSION = "3.17.2"


def server_python() -> Path:
    """The Python of the server's venv, built on first use (under a lock: xdist workers)."""
    root = cache_dir() / f"mlflow-server-{MLFLOW_VERSION}"
    python = root / "bin" / "python"
    if python.exists():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f".mlflow-server-{MLFLOW_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists():
            return python
        building = root.with_name(root.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", building], check=True)
        subprocess.run(
            [building / "bin" / "pip", "install", "--quiet", "--progress-bar", "off",
             f"mlflow=={MLFLOW_VERSION}", "boto3"],
            check=True, timeout=1800,
        )  # fmt: skip
        # A venv's scripts name its folder; the server runs as `python -m mlflow` instead.
        building.rename(root)
    return python


class MlflowServer:
    def __init__(
        self, minio: MinioServer, bucket: str, root: Path | None = None, *, host: str = "127.0.0.1"
    ) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="medsft-mlflow-"))
        self.minio = minio
        self.bucket = bucket
        self.log = self.root / "mlflow.log"
        # On the test node's bridge address, pods reach it (mlflow's default allowed Host
        # headers take private addresses).
        self.host = host
        self.port = processes.free_port(host)
        self.url = f"http://{host}:{self.port}"
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MlflowServer:
        """Start (or restart after :meth:`stop`) on the same port with the same store."""
        if self.running:
            return self
        self.minio.start()
        if not self.minio.client().bucket_exists(self.bucket):
            self.minio.client().make_bucket(self.bucket)
        self._proc = processes.start(
            [
                server_python(), "-m", "mlflow", "server",
                "--host", self.host, "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", f"s3://{self.bucket}/mlflow",
            ],
            self.log,
            env={
                "MLFLOW_S3_ENDPOINT_URL": self.minio.url,
                "AWS_ACCESS_KEY_ID": self.minio.access_key,
                "AWS_SECRET_ACCESS_KEY": self.minio.secret_key,
            },
        )  # fmt: skip
        processes.wait_http(
            f"{self.url}/health", what="mlflow server", proc=self._proc, log=self.log
        )
        return self

    def stop(self) -> None:
        if self._proc is not None:
            processes.stop(self._proc)
            self._proc = None

    def freeze(self) -> None:
        """Stop answering at once, connections left hanging (SIGSTOP): a tracker that went
        silent mid-run, the case a client can only leave by its own timeouts."""
        assert self._proc is not None
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """Gone at once, whatever it had not yet answered lost with it (also when frozen)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(30)
            processes.stop(self._proc)  # forgets it
            self._proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)
