"""Connection settings of the object store (MinIO / S3), from code or from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import StorageSpec

ENV_ENDPOINT = "MEDSFT_S3_ENDPOINT"
ENV_SECURE = "MEDSFT_S3_SECURE"
ENV_CA_FILE = "MEDSFT_S3_CA_FILE"
ENV_CREDENTIALS_DIR = "MEDSFT_S3_CREDENTIALS_DIR"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
# File names inside a mounted Kubernetes Secret (MEDSFT_S3_CREDENTIALS_DIR).
SECRET_FILE_ACCESS_KEY = "accessKey"
SECRET_FILE_SECRET_KEY = "secretKey"

MiB = 1024 * 1024


class StorageSettings(Spec):
    """How to reach an S3-compatible store. Credentials are SecretStr: never in repr or dumps."""

    endpoint: str | None = None
    """host:port of the S3 endpoint (a leading http:// or https:// also sets ``secure``)."""
    secure: bool = True
    """Use TLS."""
    ca_file: str | None = None
    """PEM bundle of the CA that signed the endpoint's certificate (default: system CAs)."""
    access_key: SecretStr | None = None
    """S3 access key id."""
    secret_key: SecretStr | None = None
    """S3 secret access key."""
    region: str = "us-east-1"
    """Region sent in signatures; fixed so that no bucket-location lookup is needed."""
    part_size: int = Field(default=16 * MiB, ge=5 * MiB)
    """Multipart part size in bytes, also the range size of parallel downloads (S3 minimum 5 MiB)."""
    parallelism: int = Field(default=4, ge=1)
    """Concurrent parts per object, and concurrent objects in checkpoint transfers."""
    retry_timeout_s: float = Field(default=120.0, ge=0)
    """How long an operation keeps retrying connection errors and 5xx answers (with backoff)."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    """TCP connect timeout of one request."""
    read_timeout_s: float = Field(default=120.0, gt=0)
    """Socket read timeout of one request."""

    @model_validator(mode="after")
    def _scheme_sets_secure(self) -> StorageSettings:
        # Accept "https://host:port" as users paste it; the SDK wants host:port and a flag.
        if self.endpoint and "://" in self.endpoint:
            scheme, _, rest = self.endpoint.partition("://")
            if scheme not in ("http", "https"):
                raise ValueError(f"endpoint scheme must be http or https, got {scheme!r}")
            self.endpoint = rest.rstrip("/")
            self.secure = scheme == "https"
        return self

    def secrets(self) -> tuple[str | None, str | None]:
        """The raw credentials, for redaction of error texts."""
        return (
            self.access_key.get_secret_value() if self.access_key else None,
            self.secret_key.get_secret_value() if self.secret_key else None,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageSettings:
        """Settings from MEDSFT_S3_* variables; credentials from AWS_* variables or, when
        MEDSFT_S3_CREDENTIALS_DIR is set, from the files ``accessKey`` and ``secretKey`` there
        (a mounted Secret, which wins over the variables)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if env.get(ENV_ENDPOINT):
            values["endpoint"] = env[ENV_ENDPOINT]
        if env.get(ENV_SECURE):
            values["secure"] = _parse_bool(env[ENV_SECURE], ENV_SECURE)
        if env.get(ENV_CA_FILE):
            values["ca_file"] = env[ENV_CA_FILE]
        access, secret = env.get(ENV_ACCESS_KEY), env.get(ENV_SECRET_KEY)
        if env.get(ENV_CREDENTIALS_DIR):
            folder = Path(env[ENV_CREDENTIALS_DIR])
            access = _read_secret_file(folder / SECRET_FILE_ACCESS_KEY)
            secret = _read_secret_file(folder / SECRET_FILE_SECRET_KEY)
        if access:
            values["access_key"] = SecretStr(access)
        if secret:
            values["secret_key"] = SecretStr(secret)
        settings = cls(**values)
        # "https://..." in the endpoint decided `secure`; an explicit variable still wins.
        if env.get(ENV_SECURE):
            settings.secure = _parse_bool(env[ENV_SECURE], ENV_SECURE)
        return settings

    @classmethod
    def for_spec(
        cls, spec: StorageSpec, environ: Mapping[str, str] | None = None
    ) -> StorageSettings:
        """How a stage reaches the storage of its job config: the spec's endpoint, TLS, CA,
        region and retry budget over :meth:`from_env` (credentials, and the endpoint when the spec names none).

        The one builder every stage and the local runner use: credentials come only from
        :meth:`from_env`, so a mounted Secret keeps winning over ``AWS_*`` variables."""
        updates: dict[str, object] = {"retry_timeout_s": float(spec.retry_timeout_seconds)}
        if spec.endpoint:
            updates.update(endpoint=spec.endpoint, secure=spec.secure)
        if spec.ca_file:
            updates["ca_file"] = spec.ca_file
        if spec.region:
            updates["region"] = spec.region
        return cls.from_env(environ).model_copy(update=updates)


def _parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _read_secret_file(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
