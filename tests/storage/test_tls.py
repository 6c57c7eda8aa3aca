"""TLS with a custom CA against a real MinIO serving a certificate from a throwaway PKI."""

from __future__ import annotations

import shutil
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from minio import Minio

from harness import processes
from harness.pki import PKI
from harness.testbin import binary
from medsft_pipelines.storage import StorageError, StorageSettings, open_store

ACCESS, SECRET = "medsft-tls", "tls-secret-4d1c9a7e"


class TlsMinio:
    def __init__(self, root: Path) -> None:
        pki = PKI(root / "pki")
        cert, key = pki.issue("minio", common_name="127.0.0.1", server=True)
        certs = root / "certs"
        certs.mkdir()
        shutil.copy(cert, certs / "public.crt")
        shutil.copy(key, certs / "private.key")
        self.ca_file = pki.ca_cert
        self.endpoint = f"127.0.0.1:{processes.free_port()}"
        self.proc = processes.start(
            [
                binary("minio"),
                "server",
                root / "data",
                f"--address={self.endpoint}",
                f"--console-address=127.0.0.1:{processes.free_port()}",
                f"--certs-dir={certs}",
                "--quiet",
            ],
            root / "minio.log",
            env={"MINIO_ROOT_USER": ACCESS, "MINIO_ROOT_PASSWORD": SECRET, "MINIO_BROWSER": "off"},
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://{self.endpoint}/minio/health/ready"
        processes.wait_until(
            lambda: urllib.request.urlopen(url, timeout=1, context=context).status == 200,
            timeout=60,
            what="minio (tls)",
            proc=self.proc,
            log=root / "minio.log",
        )


@pytest.fixture(scope="module")
def tls_minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMinio]:
    server = TlsMinio(tmp_path_factory.mktemp("minio-tls"))
    try:
        yield server
    finally:
        processes.stop(server.proc)


def settings(server: TlsMinio, **overrides) -> StorageSettings:
    values = {"endpoint": f"https://{server.endpoint}", "access_key": ACCESS, "secret_key": SECRET}
    return StorageSettings(**{**values, **overrides})


def test_tls_with_custom_ca(tls_minio: TlsMinio) -> None:
    http = urllib3.PoolManager(ca_certs=str(tls_minio.ca_file))
    Minio(tls_minio.endpoint, ACCESS, SECRET, secure=True, http_client=http).make_bucket("tls")
    store = open_store("s3://tls/x", settings=settings(tls_minio, ca_file=str(tls_minio.ca_file)))
    store.put_bytes("hello", b"over tls")
    assert store.get_bytes("hello") == b"over tls"


def test_untrusted_certificate_fails_without_retrying(tls_minio: TlsMinio, retry_signal) -> None:
    # System CAs do not know the test CA: a certificate error, which waiting cannot fix.
    store = open_store("s3://tls/x", settings=settings(tls_minio, retry_timeout_s=60))
    with pytest.raises(StorageError, match=r"SSL|certificate"):
        store.put_bytes("hello", b"x")
    assert not retry_signal.retried.is_set()
