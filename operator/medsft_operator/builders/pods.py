"""Pod-template pieces shared by every stage: environment, volumes, security, placement.

Stage pods get storage credentials from the referenced Secret as env vars (never copied
into a spec, ConfigMap or status), run as non-root with a read-only root filesystem
under the ``restricted`` Pod Security profile, and never mount a Kubernetes API token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medsft_operator.api.k8s import StageRuntime
from medsft_pipelines.specs.common import ACCESS_KEY_ENV, SECRET_KEY_ENV, StorageSpec
from medsft_pipelines.specs.tracking import MLflowSpec

CONFIG_DIR = "/etc/medsft"
CA_DIR = "/etc/medsft/ca"
CA_FILE = f"{CA_DIR}/ca.crt"
SCRATCH_DIR = "/scratch"
JOB_CONFIG_ENV = "MEDSFT_JOB_CONFIG"
# A numeric non-root user, so ``runAsNonRoot`` holds whatever USER the image declares.
RUN_AS_USER = 1000

Manifest = dict[str, Any]


@dataclass(frozen=True)
class PodSettings:
    """What every pod of a stage shares."""

    image: str
    storage: StorageSpec
    config_map: str
    labels: dict[str, str]
    pull_policy: str | None = None
    service_account: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    """Annotations of the workload object (Job / PyTorchJob) itself."""
    tracking: MLflowSpec | None = None
    """The MLflow server the stage's pods send to (its credentials come by reference)."""


def storage_env(storage: StorageSpec) -> list[Manifest]:
    """How the data plane reaches storage (``StorageSettings.from_env``); keys by reference."""
    env: list[Manifest] = [
        {"name": "MEDSFT_S3_ENDPOINT", "value": storage.endpoint or ""},
        {"name": "MEDSFT_S3_SECURE", "value": "true" if storage.secure else "false"},
    ]
    if storage.ca_secret is not None:
        env.append({"name": "MEDSFT_S3_CA_FILE", "value": CA_FILE})
    elif storage.ca_file:
        env.append({"name": "MEDSFT_S3_CA_FILE", "value": storage.ca_file})
    creds = storage.credentials_secret
    if creds is not None:
        for name, key in (
            (ACCESS_KEY_ENV, creds.access_key_key),
            (SECRET_KEY_ENV, creds.secret_key_key),
        ):
            env.append(
                {"name": name, "valueFrom": {"secretKeyRef": {"name": creds.name, "key": key}}}
            )
    return env


def tracking_env(settings: PodSettings) -> list[Manifest]:
    """The MLflow client's credentials from the stage's ``credentialsSecret``, by reference;
    each key optional (a Secret may hold a token, or a user name and password)."""
    ref = settings.tracking.credentials_secret if settings.tracking else None
    if ref is None:
        return []
    return [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key, "optional": True}},
        }
        for name, key in (
            ("MLFLOW_TRACKING_USERNAME", ref.username_key),
            ("MLFLOW_TRACKING_PASSWORD", ref.password_key),
            ("MLFLOW_TRACKING_TOKEN", ref.token_key),
        )
    ]


def base_env(config_file: str) -> list[Manifest]:
    """Where the job config is, and scratch space for everything the process writes."""
    return [
        {"name": JOB_CONFIG_ENV, "value": f"{CONFIG_DIR}/{config_file}"},
        {"name": "HOME", "value": SCRATCH_DIR},
        {"name": "TMPDIR", "value": SCRATCH_DIR},
        {"name": "MEDSFT_WORK_DIR", "value": f"{SCRATCH_DIR}/work"},
        {"name": "MEDSFT_CACHE", "value": f"{SCRATCH_DIR}/cache"},
        {"name": "HF_HOME", "value": f"{SCRATCH_DIR}/hf"},
        {"name": "TORCH_EXTENSIONS_DIR", "value": f"{SCRATCH_DIR}/torch_extensions"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def volumes(settings: PodSettings, *, shm_size: str | int | None = None) -> list[Manifest]:
    out: list[Manifest] = [
        {"name": "config", "configMap": {"name": settings.config_map}},
        {"name": "scratch", "emptyDir": {}},
    ]
    if shm_size is not None:
        out.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(shm_size)}})
    ca = settings.storage.ca_secret
    if ca is not None:
        out.append(
            {
                "name": "storage-ca",
                "secret": {"secretName": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]},
            }
        )
    return out


def volume_mounts(settings: PodSettings, *, shm: bool = False) -> list[Manifest]:
    mounts: list[Manifest] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
    ]
    if shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if settings.storage.ca_secret is not None:
        mounts.append({"name": "storage-ca", "mountPath": CA_DIR, "readOnly": True})
    return mounts


CONTAINER_SECURITY: Manifest = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
POD_SECURITY: Manifest = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS_USER,
    "runAsGroup": RUN_AS_USER,
    "fsGroup": RUN_AS_USER,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def resources(runtime: StageRuntime, gpus: int = 0) -> Manifest:
    """The container's resources; ``nvidia.com/gpu`` from the stage's GPU count unless the
    spec sets it (requests must equal limits for extended resources)."""
    limits = {k: str(v) for k, v in runtime.resources.limits.items()}
    requests = {k: str(v) for k, v in runtime.resources.requests.items()}
    if gpus and "nvidia.com/gpu" not in limits:
        limits["nvidia.com/gpu"] = str(gpus)
    if "nvidia.com/gpu" in limits:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"]
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def container(
    name: str,
    settings: PodSettings,
    *,
    command: list[str],
    env: list[Manifest],
    runtime: StageRuntime,
    gpus: int = 0,
    shm: bool = False,
    ports: list[Manifest] | None = None,
) -> Manifest:
    spec: Manifest = {
        "name": name,
        "image": settings.image,
        "command": command,
        "env": env,
        "resources": resources(runtime, gpus),
        "volumeMounts": volume_mounts(settings, shm=shm),
        "securityContext": CONTAINER_SECURITY,
        # The stages write why they failed to /dev/termination-log (medsft_pipelines.
        # termination); a crash that wrote nothing leaves its log's tail there instead.
        # Either way the operator names the cause in the stage's condition.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.pull_policy:
        spec["imagePullPolicy"] = settings.pull_policy
    if ports:
        spec["ports"] = ports
    return spec


def pod_template(
    settings: PodSettings,
    containers: list[Manifest],
    runtime: StageRuntime,
    *,
    restart_policy: str,
    shm_size: str | int | None = None,
) -> Manifest:
    """A pod template with placement from the stage's ``scheduling``."""
    scheduling = runtime.scheduling
    spec: Manifest = {
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": False,  # stage pods need no Kubernetes API access
        "securityContext": POD_SECURITY,
        "containers": containers,
        "volumes": volumes(settings, shm_size=shm_size),
        "enableServiceLinks": False,
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if scheduling.node_selector:
        spec["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations
        ]
    if scheduling.priority_class_name:
        spec["priorityClassName"] = scheduling.priority_class_name
    return {"metadata": {"labels": dict(settings.labels)}, "spec": spec}
