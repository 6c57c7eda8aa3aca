"""Kubernetes' own rules for what the operator creates, as small pure functions.

A MedSFTRun's schema cannot hold every rule Kubernetes applies to the *children* of a run:
the apiserver checks a Job's pod template (requests <= limits, GPUs not overcommitted,
toleration and label syntax) and the kubelet an image reference, but only once the operator
creates them — hours into a run, or as a Job that never gets a pod. ``medsft validate``
renders the children with the operator's own builders (:mod:`medsft_operator.render`) and
runs these checks on them. Each returns ``(path, message)`` pairs, ``path`` relative to what
it was given; the rules and wording follow ``k8s.io/kubernetes/pkg/apis/core/validation``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

from medsft_operator.api.k8s import (
    IMAGE_PATTERN,
    LABEL_VALUE_PATTERN,
    extended_resource,
    quantity_value,
)

Found = list[tuple[str, str]]
Manifest = dict[str, Any]

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
_IMAGE = re.compile(IMAGE_PATTERN)

#: Resources a container may name without a domain prefix.
STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage", "storage"}


def qualified_name(value: str) -> str | None:
    """Why ``value`` is not a qualified name (label key, resource name), else None."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            return "prefix part must be non-empty"
        if len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix):
            return (
                f"prefix {prefix!r} must be a DNS subdomain "
                "(lower-case letters, digits, '-' and '.')"
            )
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be at most 63 characters"
    if not _NAME.match(name):
        return (
            "name part must consist of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value(value: Any) -> str | None:
    """Why ``value`` is not a label value, else None."""
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > 63:
        return "must be at most 63 characters"
    if not _LABEL_VALUE.match(value):
        return (
            "must be empty or letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_problems(labels: Mapping[str, Any], path: str) -> Found:
    """Keys and values of ``labels`` (metadata.labels, nodeSelector)."""
    found: Found = []
    for key, value in labels.items():
        if (why := qualified_name(str(key))) is not None:
            found.append((f"{path}.{key}", f"key {key!r}: {why}"))
        if (why := label_value(value)) is not None:
            found.append((f"{path}.{key}", f"value {value!r}: {why}"))
    return found


def annotation_problems(annotations: Mapping[str, Any], path: str) -> Found:
    """Annotation keys (qualified names) and the 256 KiB limit on all of them together."""
    found: Found = [
        (f"{path}.{key}", f"key {key!r}: {why}")
        for key in annotations
        if (why := qualified_name(str(key))) is not None
    ]
    size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
    if size > 256 * 1024:
        found.append((path, f"must have at most 262144 bytes in all (got {size})"))
    return found


def object_name(name: Any, *, max_length: int = 253) -> str | None:
    """Why ``name`` is not an object name (DNS subdomain of at most ``max_length``)."""
    if not isinstance(name, str) or not name:
        return "is required"
    if len(name) > max_length:
        return f"must be at most {max_length} characters (got {len(name)})"
    if not DNS_SUBDOMAIN.match(name):
        return "must be lower-case letters, digits, '-' or '.', starting and ending alphanumeric"
    return None


def image_reference(image: Any) -> str | None:
    """Why Kubernetes refuses ``image`` (the apiserver: whitespace; the kubelet:
    ``InvalidImageName`` for anything its reference parser refuses), else None."""
    if not isinstance(image, str) or not image:
        return "is required"
    if image != image.strip():
        return "must not have leading or trailing whitespace"
    if not _IMAGE.match(image):
        return (
            "is not a valid image reference (the kubelet refuses it with InvalidImageName): "
            "[registry[:port]/]repository[:tag][@digest], the repository in lower case, "
            "e.g. registry.example.org/ml/medsft-trainer:0.1.0"
        )
    repository = image.split("@", 1)[0]
    head, _, last = repository.rpartition("/")
    repository = f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]
    if len(repository) > 255:
        return "repository name must be at most 255 characters"
    return None


def resources_problems(resources: Mapping[str, Any], path: str) -> Found:
    """A container's ``resources`` as the apiserver judges them."""
    requests = resources.get("requests") or {}
    limits = resources.get("limits") or {}
    found: Found = []
    amounts: dict[str, dict[str, Decimal]] = {}
    for part, values in (("requests", requests), ("limits", limits)):
        amounts[part] = {}
        for resource, raw in values.items():
            where = f"{path}.{part}.{resource}"
            why = qualified_name(resource)
            if (
                why is None
                and "/" not in resource
                and resource not in STANDARD_RESOURCES
                and not resource.startswith("hugepages-")
            ):
                why = (
                    "must be a standard resource (cpu, memory, ephemeral-storage) "
                    "or fully qualified (e.g. nvidia.com/gpu)"
                )
            if why is not None:
                found.append((where, f"resource name {resource!r}: {why}"))
            amount = quantity_value(raw)
            if amount is None:
                found.append((where, f"{raw!r} is not a resource quantity"))
                continue
            if amount < 0:
                found.append((where, "must be greater than or equal to 0"))
            elif extended_resource(resource) and amount != amount.to_integral_value():
                found.append((where, "must be a whole number (an extended resource)"))
            amounts[part][resource] = amount
    for resource, request in amounts["requests"].items():
        where = f"{path}.requests.{resource}"
        limit = amounts["limits"].get(resource)
        if extended_resource(resource):
            if resource not in limits:
                found.append(
                    (where, f"{resource} cannot be overcommitted: limits.{resource} must be set")
                )
            elif limit is not None and request != limit:
                found.append((where, f"must equal limits.{resource} ({limits[resource]})"))
        elif limit is not None and request > limit:
            found.append((where, f"must be less than or equal to limits.{resource}"))
    return found


def toleration_problems(toleration: Mapping[str, Any], path: str) -> Found:
    """One pod toleration as the apiserver judges it."""
    found: Found = []
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    value = toleration.get("value") or ""
    if key and (why := qualified_name(key)) is not None:
        found.append((f"{path}.key", why))
    if not key and operator != "Exists":
        found.append((f"{path}.operator", "must be Exists when key is empty"))
    if operator == "Exists" and value:
        found.append((f"{path}.value", "must be empty when operator is Exists"))
    elif operator == "Equal" and (why := label_value(value)) is not None:
        found.append((f"{path}.value", why))
    seconds = toleration.get("tolerationSeconds")
    if seconds is not None and toleration.get("effect") != "NoExecute":
        found.append((f"{path}.effect", "must be NoExecute when tolerationSeconds is set"))
    return found


def pod_spec_problems(spec: Mapping[str, Any], path: str) -> Found:
    """Placement, images and resources of a pod spec (possibly a partial one, a patch)."""
    found = label_problems(spec.get("nodeSelector") or {}, f"{path}.nodeSelector")
    for index, toleration in enumerate(spec.get("tolerations") or []):
        found += toleration_problems(toleration, f"{path}.tolerations[{index}]")
    for index, ctr in enumerate(spec.get("containers") or []):
        where = f"{path}.containers[{index}]"
        if "image" in ctr and (why := image_reference(ctr["image"])) is not None:
            found.append((f"{where}.image", why))
        found += resources_problems(ctr.get("resources") or {}, f"{where}.resources")
    return found


def pod_template_problems(template: Mapping[str, Any], path: str) -> Found:
    metadata = template.get("metadata") or {}
    return label_problems(metadata.get("labels") or {}, f"{path}.metadata.labels") + (
        pod_spec_problems(template.get("spec") or {}, f"{path}.spec")
    )


def pod_templates(child: Manifest) -> Iterator[tuple[str, Manifest]]:
    """The pod templates of a Job, PyTorchJob or TrainJob (a TrainJob's patch is a partial
    one), with their paths."""
    spec = child.get("spec") or {}
    kind = child.get("kind")
    if kind == "Job":
        yield "spec.template", spec.get("template") or {}
    elif kind == "PyTorchJob":
        for role, replica in (spec.get("pytorchReplicaSpecs") or {}).items():
            yield f"spec.pytorchReplicaSpecs.{role}.template", replica.get("template") or {}
    elif kind == "TrainJob":
        for i, patch in enumerate(spec.get("runtimePatches") or []):
            jobs = (
                ((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}
            ).get("replicatedJobs") or []
            for j, job in enumerate(jobs):
                template = ((job.get("template") or {}).get("spec") or {}).get("template") or {}
                yield (
                    f"spec.runtimePatches[{i}].trainingRuntimeSpec.template.spec."
                    f"replicatedJobs[{j}].template.spec.template",
                    template,
                )


def child_problems(child: Manifest) -> Found:
    """Everything Kubernetes would refuse in one rendered child (paths in the child)."""
    metadata = child.get("metadata") or {}
    # A Job's name becomes the value of its pods' job-name label: at most 63 characters.
    max_length = 63 if child.get("kind") == "Job" else 253
    found: Found = []
    if (why := object_name(metadata.get("name"), max_length=max_length)) is not None:
        found.append(("metadata.name", why))
    found += label_problems(metadata.get("labels") or {}, "metadata.labels")
    found += annotation_problems(metadata.get("annotations") or {}, "metadata.annotations")
    for path, template in pod_templates(child):
        found += pod_template_problems(template, path)
    if child.get("kind") == "TrainJob":
        trainer = (child.get("spec") or {}).get("trainer") or {}
        if "image" in trainer and (why := image_reference(trainer["image"])) is not None:
            found.append(("spec.trainer.image", why))
        found += resources_problems(
            trainer.get("resourcesPerNode") or {}, "spec.trainer.resourcesPerNode"
        )
    return found
