"""StorageSettings: environment, mounted Secret files, and credentials kept out of text."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from medsft_pipelines.specs.common import StorageSpec
from medsft_pipelines.storage import StorageError, StorageSettings, open_store

ACCESS = "AKIA-test-access-7f3e"
SECRET = "s3cr3t-value-9c1d2b"


def test_from_env_reads_endpoint_tls_ca_and_credentials() -> None:
    settings = StorageSettings.from_env(
        {
            "MEDSFT_S3_ENDPOINT": "minio.storage.svc:9000",
            "MEDSFT_S3_SECURE": "false",
            "MEDSFT_S3_CA_FILE": "/etc/medsft/ca.pem",
            "AWS_ACCESS_KEY_ID": ACCESS,
            "AWS_SECRET_ACCESS_KEY": SECRET,
        }
    )
    assert settings.endpoint == "minio.storage.svc:9000"
    assert settings.secure is False
    assert settings.ca_file == "/etc/medsft/ca.pem"
    assert settings.secrets() == (ACCESS, SECRET)


def test_mounted_secret_files_win_over_variables(tmp_path: Path) -> None:
    (tmp_path / "accessKey").write_text(ACCESS + "\n")
    (tmp_path / "secretKey").write_text(SECRET + "\n")
    settings = StorageSettings.from_env(
        {
            "MEDSFT_S3_ENDPOINT": "minio:9000",
            "MEDSFT_S3_CREDENTIALS_DIR": str(tmp_path),
            "AWS_ACCESS_KEY_ID": "other",
            "AWS_SECRET_ACCESS_KEY": "other-secret",
        }
    )
    assert settings.secrets() == (ACCESS, SECRET)


def test_for_spec_takes_endpoint_tls_ca_and_region_from_the_spec() -> None:
    # The one builder of every stage and of the local runner (eval and the local runner used
    # to have their own, which dropped the region).
    spec = StorageSpec(
        endpoint="minio.minio:9000", secure=False, ca_file="/etc/ca.pem", region="eu-central-1"
    )
    env = {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}
    settings = StorageSettings.for_spec(spec, env)
    assert (settings.endpoint, settings.secure) == ("minio.minio:9000", False)
    assert (settings.ca_file, settings.region) == ("/etc/ca.pem", "eu-central-1")
    assert settings.secrets() == (ACCESS, SECRET)
    assert SECRET not in repr(settings)
    # Without an endpoint in the spec the environment's stands, and so does the default region.
    from_env = StorageSettings.for_spec(StorageSpec(), {"MEDSFT_S3_ENDPOINT": "other:9000"})
    assert (from_env.endpoint, from_env.region) == ("other:9000", "us-east-1")
    # The retry budget: 120 s unless the spec says otherwise (an outage past it fails the
    # attempt with StorageUnavailable: tests/storage/test_faults.py).
    assert from_env.retry_timeout_s == 120.0
    short = StorageSpec(endpoint="minio:9000", retryTimeoutSeconds=5)
    assert StorageSettings.for_spec(short, {}).retry_timeout_s == 5.0


def test_for_spec_keeps_the_mounted_secret_over_variables(tmp_path: Path) -> None:
    (tmp_path / "accessKey").write_text(ACCESS)
    (tmp_path / "secretKey").write_text(SECRET)
    env = {
        "MEDSFT_S3_CREDENTIALS_DIR": str(tmp_path),
        "AWS_ACCESS_KEY_ID": "stale",
        "AWS_SECRET_ACCESS_KEY": "stale-secret",
    }
    settings = StorageSettings.for_spec(StorageSpec(endpoint="minio:9000"), env)
    assert settings.secrets() == (ACCESS, SECRET)


def test_endpoint_scheme_sets_tls() -> None:
    assert StorageSettings(endpoint="https://s3.example:443/").secure is True
    plain = StorageSettings(endpoint="http://127.0.0.1:9000")
    assert (plain.endpoint, plain.secure) == ("127.0.0.1:9000", False)
    assert StorageSettings.from_env({"MEDSFT_S3_ENDPOINT": "https://x:1"}).secure is True
    with pytest.raises(ValidationError):
        StorageSettings(endpoint="ftp://x:1")
    with pytest.raises(ValueError, match="MEDSFT_S3_SECURE"):
        StorageSettings.from_env({"MEDSFT_S3_SECURE": "maybe"})


def test_credentials_never_in_repr_str_or_dumps() -> None:
    settings = StorageSettings(endpoint="minio:9000", access_key=ACCESS, secret_key=SECRET)
    texts = [repr(settings), str(settings), str(settings.to_wire()), settings.model_dump_json()]
    store = open_store("s3://bucket/prefix", settings=settings)
    texts += [repr(store), store.uri, repr(store._backend)]
    for text in texts:
        assert SECRET not in text
        assert ACCESS not in text


def test_s3_without_endpoint_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="MEDSFT_S3_ENDPOINT"):
        open_store("s3://bucket/x", settings=StorageSettings())
