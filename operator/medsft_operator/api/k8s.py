"""Kubernetes-only parts of the custom resources: resources, scheduling, conditions, metadata."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from medsft_pipelines.contract import Spec
from medsft_pipelines.specs.common import K8sName, StorageSpec, cel, k8s_rules
from medsft_pipelines.specs.tracking import TrackingSpec

GROUP = "medsft.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: A non-negative Kubernetes resource quantity ("500m", "16Gi", 2), as kubebuilder renders it
#: without the sign: pods refuse negative requests and limits, so the CRD refuses them first.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    Annotated[int, Field(ge=0)] | Annotated[str, Field(max_length=64, pattern=QUANTITY_PATTERN)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "minimum": 0,
            # bounds the cost the apiserver estimates for the CEL quantity comparisons
            "maxLength": 64,
            "x-kubernetes-int-or-string": True,
        }
    ),
]

_BINARY_SUFFIX = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIX = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15}
_DECIMAL_SUFFIX["E"] = 18
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
)


def quantity_value(value: Any) -> Decimal | None:
    """A Kubernetes quantity ("500m", "16Gi", 2) as a number, None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    match = _QUANTITY.match(str(value))
    if match is None:
        return None
    base, suffix = Decimal(match.group(1)), match.group(2) or ""
    if suffix in _BINARY_SUFFIX:
        return base * (1024 ** _BINARY_SUFFIX[suffix])
    if suffix in _DECIMAL_SUFFIX:
        return base.scaleb(_DECIMAL_SUFFIX[suffix])
    return base.scaleb(int(suffix[1:]))


def extended_resource(name: str) -> bool:
    """An extended resource (``nvidia.com/gpu``): whole units, never overcommitted."""
    return "/" in name and not name.startswith(("kubernetes.io/", "hugepages-", "requests."))


#: A label value (also what Kueue reads from ``kueue.x-k8s.io/queue-name``).
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A label key or resource name: an optional DNS-subdomain prefix and ``/``, then a name.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"
)
#: A Kueue LocalQueue name: an object name (RFC 1123 subdomain) that also fits a label value.
QUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
#: A container image reference as the kubelet parses it (distribution/reference): an optional
#: registry host[:port], a lower-case repository path, an optional tag and digest. Anything
#: else makes every pod of the stage fail with ``InvalidImageName``.
_PATH_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?"
IMAGE_PATTERN = (
    rf"^({_DOMAIN_COMPONENT}(\.{_DOMAIN_COMPONENT})*(:[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(/{_PATH_COMPONENT})*"
    r"(:[A-Za-z0-9_][-A-Za-z0-9_.]{0,127})?"
    r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
Image = Annotated[str, Field(min_length=1, max_length=512, pattern=IMAGE_PATTERN)]
# Map keys are checked for length only: a CEL regex over a map key (whose length the
# apiserver's cost estimate cannot bound) would make the CRD exceed its rule cost budget.
ResourceName = Annotated[str, Field(min_length=1, max_length=253)]
LabelKey = Annotated[str, Field(min_length=1, max_length=316, pattern=QUALIFIED_NAME_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
QueueName = Annotated[str, Field(min_length=1, max_length=63, pattern=QUEUE_NAME_PATTERN)]


class ResourceRequirements(Spec):
    """CPU, memory, GPU and other resources of each pod (as in a container's ``resources``)."""

    # The pod's rule (core/v1 validation), which the apiserver applies to the Job the operator
    # creates, not to this resource: checked here so `kubectl apply` refuses it. Extended
    # resources must equal their limit instead (validate checks that in the rendered pods:
    # the stage's GPU count fills in nvidia.com/gpu).
    model_config = k8s_rules(
        cel(
            "self.requests.all(k, !(k in self.limits) || "
            "(k.contains('/') && !k.startsWith('kubernetes.io/')) || "
            "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
            "each request must be less than or equal to its limit "
            "(resources.requests.X <= resources.limits.X)",
            field_path=".requests",
        )
    )

    requests: Annotated[dict[ResourceName, Quantity], Field(max_length=16)] = {}
    """Minimum resources, e.g. ``{cpu: "8", memory: 64Gi}``."""
    limits: Annotated[dict[ResourceName, Quantity], Field(max_length=16)] = {}
    """Maximum resources, e.g. ``{nvidia.com/gpu: 8}``; GPUs are set from ``gpusPerNode`` when absent."""

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourceRequirements:
        for name, request in self.requests.items():
            if name not in self.limits or extended_resource(name):
                continue
            low, high = quantity_value(request), quantity_value(self.limits[name])
            if low is not None and high is not None and low > high:
                raise ValueError(
                    f"each request must be less than or equal to its limit: requests.{name} "
                    f"{request!r} is above limits.{name} {self.limits[name]!r}"
                )
        return self


class Toleration(Spec):
    """A pod toleration (same fields as core/v1 Toleration)."""

    # The pod's own rules (core/v1 validation), which the apiserver applies to the Job the
    # operator creates, not to this resource: checked here so `kubectl apply` refuses them.
    model_config = k8s_rules(
        cel(
            "has(self.key) || self.operator == 'Exists'",
            "operator must be Exists when key is unset",
            field_path=".operator",
        ),
        cel(
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists",
            field_path=".value",
        ),
        cel(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "effect must be NoExecute when tolerationSeconds is set",
            field_path=".effect",
        ),
    )

    key: LabelKey | None = None
    """Taint key the toleration applies to; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """How key and value are compared."""
    value: LabelValue | None = None
    """Taint value to match (operator Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; unset: every effect."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated before eviction."""

    @model_validator(mode="after")
    def _pod_rules(self) -> Toleration:
        if self.key is None and self.operator != "Exists":
            raise ValueError("operator must be Exists when key is unset")
        if self.operator == "Exists" and self.value:
            raise ValueError("value must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("effect must be NoExecute when tolerationSeconds is set")
        return self


class Scheduling(Spec):
    """Where and in which order pods run: Kueue queue, priority, node placement."""

    queue_name: QueueName | None = None
    """Kueue LocalQueue; sets the ``kueue.x-k8s.io/queue-name`` label and creates the workload suspended."""
    priority_class_name: K8sName | None = None
    """PriorityClass of the pods."""
    node_selector: Annotated[
        dict[Annotated[str, Field(max_length=316)], LabelValue], Field(max_length=32)
    ] = {}
    """Node labels the pods must match."""
    tolerations: Annotated[list[Toleration], Field(max_length=32)] = []
    """Taints the pods tolerate (e.g. ``nvidia.com/gpu``)."""


class StageRuntime(Spec):
    """How a stage's pods run (everything that does not change the stage's result)."""

    image: Image | None = None
    """Pod image; unset: the run's, else the operator's (vLLM eval: the eval image, else trainer)."""
    resources: ResourceRequirements = ResourceRequirements()
    """Resources of each pod."""
    scheduling: Scheduling = Scheduling()
    """Queue, priority and placement."""
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Retries of a failed pod/job before the stage is Failed (SFT resumes from the last checkpoint)."""
    storage: StorageSpec | None = None
    """Object storage; unset: the MedSFTRun's storage, else the operator's default storage."""
    tracking: TrackingSpec | None = None
    """Experiment tracking of this stage; unset: the MedSFTRun's, else none."""


Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]
"""``Queued``: the workload waits for Kueue to admit it (quota, priority), also after an
eviction until it is re-admitted."""


class Condition(Spec):
    """A Kubernetes-convention condition (as metav1.Condition)."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Condition type in CamelCase, e.g. ``Ready``, ``Succeeded``, ``InputsReady``."""
    status: Literal["True", "False", "Unknown"]
    """Status of the condition."""
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    """Machine-readable CamelCase reason of the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details (never secrets)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """``metadata.generation`` the condition was computed for."""
    last_transition_time: datetime
    """When the status last changed."""


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=32,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    ),
]


class QueueStatus(Spec):
    """Kueue's view of a stage's workload (stages with ``scheduling.queueName``)."""

    local_queue: LabelValue
    """The LocalQueue the workload was submitted to."""
    workload: Annotated[str, Field(max_length=253)] | None = None
    """Name of Kueue's Workload object for the current job."""
    cluster_queue: Annotated[str, Field(max_length=253)] | None = None
    """The ClusterQueue that admitted the workload (while admitted)."""
    evictions: Annotated[int, Field(ge=0)] = 0
    """Times Kueue evicted the workload (preemption, stopped queue, ...); each resumes
    when re-admitted and never counts against ``backoffLimit``."""


class StatusBase(Spec):
    """Fields every medsft status has."""

    phase: Phase | None = None
    """Coarse lifecycle phase: Pending, Queued, Running, Succeeded or Failed."""
    conditions: Conditions = []
    """Detailed conditions (Ready, Succeeded, Failed, InputsReady, ...)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """``metadata.generation`` the operator last acted on."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """Human summary of the current state."""
    progress: Annotated[str, Field(max_length=64)] | None = None
    """Progress for ``kubectl get``, e.g. ``1200/3000`` or ``40%``."""
    spec_hash: Annotated[str, Field(max_length=128)] | None = None
    """Content hash of the effective spec the current work was started from."""
    start_time: datetime | None = None
    """When work started."""
    completion_time: datetime | None = None
    """When work finished (succeeded or failed)."""
    queue: QueueStatus | None = None
    """Kueue admission of the stage's current workload (stage kinds, with a queue)."""
    tracking_url: Annotated[str, Field(max_length=2048)] | None = None
    """The MLflow run the numbers go to (``spec.tracking``; a MedSFTRun's: the current
    generation's), once the tracking server has opened it."""


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta medsft reads; everything else passes through."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str | None = None
    namespace: str | None = None
    generation: int | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


def name_length_message(limit: int) -> str:
    """The error for a too-long name (the CRD's CEL rule says the same)."""
    return (
        f"metadata.name must be at most {limit} characters "
        "(names of child resources append a suffix to it)"
    )


class Resource(Spec):
    """Base of the top-level kinds: apiVersion, kind, metadata, spec, status."""

    api_version: Literal["medsft.io/v1alpha1"] = "medsft.io/v1alpha1"
    """``medsft.io/v1alpha1``."""
    metadata: ObjectMeta = ObjectMeta()
    """Standard object metadata."""

    @model_validator(mode="after")
    def _name_fits(self) -> Resource:
        limit = getattr(getattr(type(self), "info", None), "max_name_length", None)
        name = self.metadata.name
        if limit is not None and name is not None and len(name) > limit:
            raise ValueError(name_length_message(limit))
        return self

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], *, strict: bool = False) -> Any:
        """Parse a manifest dict (as ``kubectl get -o json`` or a YAML file gives it);
        ``strict``: no coercion (``"2"`` is not an integer), as the apiserver's schema."""
        return cls.model_validate(manifest, strict=strict)
