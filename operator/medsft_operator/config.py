"""The operator's own settings (from the Helm chart's values, via environment variables)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import StorageCredentialsRef, StorageSpec

DEFAULT_IMAGE = "ghcr.io/medsft/trainer:0.1.0"
DEFAULT_EVAL_IMAGE = "ghcr.io/medsft/eval:0.1.0"


class OperatorConfig(Spec):
    """How the operator runs and the defaults it fills into specs."""

    namespaces: list[str] = []
    """Namespaces to serve; empty: every namespace (cluster-wide)."""
    kubeconfig: str | None = None
    """Kubeconfig file; unset: ``$KUBECONFIG``, else ``~/.kube/config``, else the in-cluster
    ServiceAccount (:func:`medsft_operator.kube.load_api_client`)."""
    default_image: Annotated[str, Field(min_length=1)] = DEFAULT_IMAGE
    """Trainer image of stages whose spec and run name none."""
    eval_image: Annotated[str, Field(min_length=1)] = DEFAULT_EVAL_IMAGE
    """Image of evaluation stages that generate with vLLM and whose spec and run name none:
    vLLM pins its own torch and transformers, so it lives in an image of its own
    (trainer-image/Dockerfile.eval, docs/adr/0005-eval-image.md)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    """Pull policy of the trainer containers; unset: the Kubernetes default."""
    default_storage: StorageSpec | None = None
    """Storage of runs that name none (endpoint, bucket, credentials Secret in the run's namespace)."""
    job_service_account: str | None = None
    """ServiceAccount of the stage pods (their token is never mounted); unset: ``default``."""
    propagate_annotation_prefixes: list[str] = []
    """Annotation key prefixes copied from a run to its stage resources and from those to
    their Jobs and PyTorchJobs (e.g. ``kueue.x-k8s.io/``)."""
    default_sft_backend: Literal["PyTorchJob", "TrainJob"] = "PyTorchJob"
    """What runs SFT for specs that set no ``backend``: a Kubeflow training-operator v1
    PyTorchJob, or a Kubeflow Trainer v2 TrainJob."""
    training_runtime: Annotated[str, Field(min_length=1, max_length=253)] = "medsft-torch"
    """ClusterTrainingRuntime of TrainJobs whose spec names none (the chart installs it)."""
    poll_interval_s: Annotated[float, Field(gt=0)] = 30.0
    """How often active stages fold progress from storage and waiting stages re-check inputs."""
    stall_grace_s: Annotated[float, Field(ge=0)] = 60.0
    """How long a stage's pods may fail to pull their image, stay unschedulable or be
    refused by the apiserver before the stage reports it (condition ``Stalled``, an Event);
    shorter blips pass unreported (``medsft_operator.diagnose``)."""
    retry_backoff_s: Annotated[float, Field(gt=0)] = 2.0
    """First delay before an unexpected error is retried (doubles up to ``retryBackoffMaxS``)."""
    retry_backoff_max_s: Annotated[float, Field(gt=0)] = 120.0
    """Longest delay between retries of an unexpected error."""
    http_host: str = "0.0.0.0"
    """Address of the health and metrics endpoint."""
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8081
    """Port of ``/healthz`` and ``/readyz`` (and ``/metrics``; 0: any free port)."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = 8080
    """Port of ``/metrics`` (also served on ``httpPort``); unset: only ``httpPort``."""
    leader_election: bool = True
    """Act only while holding the Lease, so that two replicas never both act."""
    lease_name: str = "medsft-operator"
    """Name of the leader-election Lease."""
    lease_namespace: str = "default"
    """Namespace of the Lease (the operator's own namespace)."""
    lease_duration_s: Annotated[float, Field(gt=0)] = 15.0
    """How long a Lease stays valid without renewal (failover time after a crash)."""
    lease_renew_deadline_s: Annotated[float, Field(gt=0)] | None = None
    """How long the leader keeps acting without a successful renewal (it stops then, before
    any other replica may take over); unset: two thirds of ``leaseDurationS``."""
    lease_renew_s: Annotated[float, Field(gt=0)] = 2.0
    """How often the leader renews the Lease (and candidates retry)."""
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """Holder identity in the Lease (pod name in a cluster)."""
    max_concurrent_reconciles: Annotated[int, Field(ge=1, le=4096)] = 32
    """Reconciles in progress at once; more wait their turn (bounds memory under a burst
    of hundreds of new resources; 2x ``apiThreads`` keeps every API thread busy)."""
    api_threads: Annotated[int, Field(ge=1, le=256)] = 16
    """Threads carrying blocking Kubernetes and storage requests."""
    log_format: Literal["json", "plain"] = "json"
    """Structured JSON logs, or plain text for a terminal."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level."""

    @model_validator(mode="after")
    def _lease_timing(self) -> OperatorConfig:
        if not self.lease_renew_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError(
                "leader election needs leaseRenewS < leaseRenewDeadlineS < leaseDurationS"
            )
        return self

    def stage_image(self, stage: str, spec: Any) -> str:
        """The image of a stage's pods: its spec's (the run's, when the run named one),
        else the eval image for an evaluation generating with vLLM, else the trainer image."""
        if spec.image:
            return str(spec.image)
        generation = getattr(spec, "generation", None)
        if stage == "eval" and generation is not None and generation.backend == "vllm":
            return self.eval_image
        return self.default_image

    @property
    def renew_deadline_s(self) -> float:
        return self.lease_renew_deadline_s or self.lease_duration_s * 2 / 3

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorConfig:
        """Settings from ``MEDSFT_*`` variables (what the Helm chart sets)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field_name in cls.model_fields:
            if field_name == "default_storage":
                continue
            raw = env.get(f"MEDSFT_{field_name.upper()}")
            if raw is None or raw == "":
                continue
            is_list = field_name in ("namespaces", "propagate_annotation_prefixes")
            values[field_name] = [n for n in raw.split(",") if n] if is_list else raw
        if not values.get("kubeconfig") and env.get("KUBECONFIG"):
            values["kubeconfig"] = env["KUBECONFIG"]
        if not values.get("lease_namespace") and env.get("POD_NAMESPACE"):
            values["lease_namespace"] = env["POD_NAMESPACE"]
        if not values.get("identity") and env.get("POD_NAME"):
            values["identity"] = env["POD_NAME"]
        storage = _storage_from_env(env)
        if storage is not None:
            values["default_storage"] = storage
        return cls.model_validate(values)


def _storage_from_env(env: Mapping[str, str]) -> StorageSpec | None:
    """``MEDSFT_STORAGE_{ENDPOINT,BUCKET,PREFIX,SECURE,REGION,SECRET}``; None without an endpoint."""
    endpoint = env.get("MEDSFT_STORAGE_ENDPOINT")
    if not endpoint:
        return None
    values: dict[str, object] = {"endpoint": endpoint}
    for name in ("bucket", "prefix", "secure", "region"):
        raw = env.get(f"MEDSFT_STORAGE_{name.upper()}")
        if raw:
            values[name] = raw
    if env.get("MEDSFT_STORAGE_SECRET"):
        values["credentials_secret"] = StorageCredentialsRef(name=env["MEDSFT_STORAGE_SECRET"])
    return StorageSpec.model_validate(values)
