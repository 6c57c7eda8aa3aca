"""A real MinIO server on 127.0.0.1 (or on the test node's bridge address, where pods
reach it), stoppable and restartable mid-test."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from minio import Minio

from . import processes
from .testbin import binary


class MinioServer:
    def __init__(self, root: Path | None = None, *, host: str = "127.0.0.1") -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="medsft-minio-"))
        self._owns_root = root is None
        self.data_dir = self.root / "data"
        self.log = self.root / "minio.log"
        self.host = host
        self.port = processes.free_port(host)
        self.console_port = processes.free_port(host)
        self.endpoint = f"{host}:{self.port}"
        self.url = f"http://{self.endpoint}"
        self.access_key = "medsft-test"
        self.secret_key = secrets.token_hex(16)
        self._proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MinioServer:
        """Start (or restart after :meth:`stop`) on the same port with the same data."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._proc = processes.start(
            [
                binary("minio"),
                "server",
                self.data_dir,
                f"--address={self.endpoint}",
                f"--console-address={self.host}:{self.console_port}",
                "--quiet",
            ],
            self.log,
            env={
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
            },
        )
        processes.wait_http(
            f"{self.url}/minio/health/ready",
            what="minio",
            proc=self._proc,
            log=self.log,
            timeout=60,
        )
        return self

    def stop(self) -> None:
        if self._proc is not None:
            processes.stop(self._proc)
            self._proc = None

    def close(self) -> None:
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def client(self) -> Minio:
        return Minio(self.endpoint, self.access_key, self.secret_key, secure=False)

    def env(self) -> dict[str, str]:
        """Environment variables the medsft storage layer reads for this server."""
        return {
            "MEDSFT_S3_ENDPOINT": self.endpoint,
            "MEDSFT_S3_SECURE": "false",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
