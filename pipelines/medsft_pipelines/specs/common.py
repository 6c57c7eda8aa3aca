"""Building blocks shared by every stage spec: storage, references, URIs.

Pure data: nothing here knows about Kubernetes objects beyond *names* of Secrets,
which the control plane resolves and the data plane reads as env vars or files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, cast

from pydantic import ConfigDict, Field, model_validator

from medsft_pipelines.contract import Spec

#: Env vars through which a stage pod receives the storage credentials (the operator
#: fills them from ``StorageSpec.credentialsSecret``; locally, export them yourself).
#: The same names the storage layer reads (``medsft_pipelines.storage.settings``).
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"

#: A Kubernetes object name (RFC 1123 subdomain).
K8S_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
#: A short identifier used inside specs (source or benchmark name): lower-case, digits, `-`, `_`.
IDENT_PATTERN = r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$"
#: A storage location: ``s3://bucket/key...``, ``file:///abs/path``, or a plain path without
#: a scheme (relative to the working directory: local runs and files baked into an image).
URI_PATTERN = r"^(s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](/.*)?|file:///.*|[^:]+)$"

K8sName = Annotated[str, Field(min_length=1, max_length=253, pattern=K8S_NAME_PATTERN)]
Ident = Annotated[str, Field(min_length=1, max_length=63, pattern=IDENT_PATTERN)]
StorageUri = Annotated[str, Field(min_length=1, max_length=2048, pattern=URI_PATTERN)]
#: The schemes of a model location the runtime reads (``open_store``): another one
#: (``hf://``, ``https://``) would fail only when the stage's pod starts.
MODEL_LOCATION_PATTERN = r"^(s3://[^/:]+(/.*)?|file:///.*|[^:]+)$"
#: A model location: a storage URI, or a local directory path (local runs, baked images).
ModelLocation = Annotated[str, Field(min_length=1, max_length=2048, pattern=MODEL_LOCATION_PATTERN)]
ShortText = Annotated[str, Field(max_length=1024)]
LongText = Annotated[str, Field(max_length=16384)]

TaskType = Literal["mcq", "open", "classification", "report"]
"""mcq: multiple choice; open: free-text answer; classification: one label of a closed set;
report: long free text (e.g. a radiology report)."""
Modality = Literal["text", "image"]
Distribution = Literal["in", "out"]


class ObjectRef(Spec):
    """A reference to another medsft resource in the same namespace."""

    name: K8sName
    """Name of the referenced resource."""


class SecretKeyRef(Spec):
    """One key of a Secret in the resource's namespace."""

    name: K8sName
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253)]
    """Key inside the Secret."""


class StorageCredentialsRef(Spec):
    """The Secret holding S3 credentials; never copied into specs, status or logs."""

    name: K8sName
    """Name of the Secret."""
    access_key_key: Annotated[str, Field(min_length=1, max_length=253)] = "accessKey"
    """Key of the access key id inside the Secret."""
    secret_key_key: Annotated[str, Field(min_length=1, max_length=253)] = "secretKey"
    """Key of the secret access key inside the Secret."""


class StorageSpec(Spec):
    """Where a run's artifacts live: an S3-compatible object store (MinIO) or a local folder.

    With ``endpoint`` set, URIs are ``s3://<bucket>/<prefix>/...``; without it, the
    embedded default writes under ``file:///<absolute localPath>/<bucket>/<prefix>/...``.
    """

    endpoint: Annotated[str, Field(max_length=512, pattern=r"^[^/:]+(:[0-9]{1,5})?$")] | None = None
    """S3 endpoint as ``host[:port]`` (no scheme), e.g. ``minio.minio.svc:9000``. Unset: local files."""
    bucket: Annotated[
        str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][-.a-z0-9]*[a-z0-9]$")
    ] = "medsft"
    """Bucket (S3) or top-level folder (local) holding every artifact."""
    prefix: Annotated[
        str, Field(max_length=512, pattern=r"^([-_.a-zA-Z0-9]+(/[-_.a-zA-Z0-9]+)*)?$")
    ] = ""
    """Key prefix under the bucket, without leading or trailing ``/`` (may be empty)."""
    secure: bool = True
    """Use TLS (https) to reach the endpoint."""
    region: Annotated[str, Field(max_length=64)] | None = None
    """S3 region, if the store needs one."""
    ca_secret: SecretKeyRef | None = None
    """Secret key holding a PEM CA bundle to trust for TLS (mounted into pods as ``caFile``)."""
    ca_file: Annotated[str, Field(max_length=1024)] | None = None
    """Path of a PEM CA bundle inside the pod or on the local machine."""
    credentials_secret: StorageCredentialsRef | None = None
    """Secret with the S3 access and secret keys; pods receive them as env vars
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""
    retry_timeout_seconds: Annotated[int, Field(ge=0, le=86400)] = 120
    """How long each storage operation of the stages' pods keeps retrying a store that does
    not answer (connection errors, timeouts, 5xx), with backoff, before the attempt fails
    with reason ``StorageUnavailable``. An outage shorter than this costs nothing; a longer
    one spends one of the stage's ``backoffLimit`` retries, which resume from the newest
    checkpoint."""
    local_path: Annotated[str, Field(max_length=1024)] = ".medsft/storage"
    """Root folder of the ``file://`` backend when ``endpoint`` is unset (relative to the working directory)."""

    def root_uri(self) -> str:
        """The URI every artifact of this storage lives under (no trailing ``/``)."""
        if self.endpoint:
            base = f"s3://{self.bucket}"
        else:  # absolute, as the file:// backend requires
            base = (Path(self.local_path).resolve() / self.bucket).as_uri()
        return f"{base}/{self.prefix}" if self.prefix else base


def join_uri(base: str, *parts: str) -> str:
    """Join URI path segments with single slashes: ``join_uri("s3://b/p", "run", "sft")``."""
    cleaned = [base.rstrip("/")] + [p.strip("/") for p in parts if p.strip("/")]
    return "/".join(cleaned)


def require_exactly_one(model: Spec, *fields: str) -> None:
    """Raise ValueError unless exactly one of ``fields`` is set (mirrors the CRD's CEL one-of)."""
    given = [name for name in fields if getattr(model, name) is not None]
    if len(given) != 1:
        names = " or ".join(_camel(n) for n in fields)
        raise ValueError(f"exactly one of {names} must be set (got {len(given)})")


class OneOf(Spec):
    """A spec that sets exactly one of the two fields ``one_of`` names (a choice between two
    sources). The models check it here; the apiserver checks the same with the CEL rule of
    :func:`one_of_rule`, which the subclass puts in its ``model_config``."""

    one_of: ClassVar[tuple[str, str]]

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        require_exactly_one(self, *self.one_of)
        return self


def one_of_rule(fields: tuple[str, str], message: str | None = None) -> dict:
    """The CEL rule of a :class:`OneOf` (``message``: what the apiserver says, by default
    ``exactly one of a or b must be set``)."""
    first, second = (_camel(name) for name in fields)
    return cel(
        f"has(self.{first}) != has(self.{second})",
        message or f"exactly one of {first} or {second} must be set",
    )


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict:
    """One Kubernetes ``x-kubernetes-validations`` entry (a CEL rule checked by the apiserver)."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def k8s_rules(*rules: dict) -> ConfigDict:
    """Model config attaching CEL rules to the model's schema in the generated CRD.

    Each rule is mirrored by a pydantic validator on the same model, so the CLI and the
    data plane reject the same input the apiserver does.
    """
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": list(rules)})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def rules_of(model: type[Spec]) -> list[dict]:
    """The CEL rules attached to ``model`` (to extend them in a subclass's ``k8s_rules``)."""
    extra = model.model_config.get("json_schema_extra")
    if not isinstance(extra, dict):
        return []
    return list(cast("list[dict]", extra.get("x-kubernetes-validations", [])))
