"""Deterministic names and labels of everything the operator creates.

A restarted operator must find what it already created instead of creating it twice, so
every child's name is a pure function of its parent's name and the stage, generation or
attempt it belongs to (``<run>-sft-g2``, ``<sftjob>-a1``). The apiserver's name uniqueness
then makes creation exactly-once.
"""

from __future__ import annotations

import hashlib

from medsft_operator.api.k8s import API_VERSION, GROUP

OPERATOR_NAME = "medsft-operator"

# Labels on every child (selectable; values <= 63 characters).
MANAGED_BY = "app.kubernetes.io/managed-by"
PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
OWNER_KIND = f"{GROUP}/owner-kind"
OWNER_NAME = f"{GROUP}/owner-name"
RUN = f"{GROUP}/run"  # the MedSFTRun a stage resource (or its children) belongs to
GENERATION = f"{GROUP}/generation"
STAGE_HASH = f"{GROUP}/stage-hash"  # first 32 hex digits of the stage's content hash
ATTEMPT = f"{GROUP}/attempt"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"  # Kueue's label on a job's Workload

# Annotations.
STAGE_HASH_FULL = f"{GROUP}/stage-hash"
CONFIG_HASH = f"{GROUP}/config-hash"

# Kubernetes limits that bind child names: a label value (and a DNS-1123 label, which the
# training operator's per-replica Services and the pods' hostnames must be) is <= 63.
LABEL_MAX = 63
# PyTorchJob pods and Services are ``<job>-worker-<index>``: keep room for that suffix.
PYTORCHJOB_NAME_MAX = 48
# A TrainJob's JobSet names its Jobs ``<trainjob>-node-<index>`` and their pods
# ``<job>-<index>-<random>``; JobSet requires those to stay DNS labels.
TRAINJOB_NAME_MAX = 40
# Indexed Job pods' hostnames are ``<job>-<index>``.
JOB_NAME_MAX = 56

HASH_LABEL_LENGTH = 32


def bounded_name(base: str, suffix: str, max_length: int = LABEL_MAX) -> str:
    """``base + suffix`` if it fits in ``max_length``, else ``base`` shortened and made
    unique again with 8 hex digits of its hash (still deterministic)."""
    name = f"{base}{suffix}"
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = max_length - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-.')}-{digest}{suffix}"


def hash_label(stage_hash: str) -> str:
    """The label form of a content hash (label values are limited to 63 characters)."""
    return stage_hash[:HASH_LABEL_LENGTH]


# --------------------------------------------------------------------- stage resources


def run_stage_name(run: str, stage: str, generation: int) -> str:
    """Name of the CurationJob / SFTJob / EvalJob a MedSFTRun creates for a generation."""
    return f"{run}-{stage}-g{generation}"


# ---------------------------------------------------------------- children of the kinds


def config_map_name(owner: str) -> str:
    """The ConfigMap holding a stage's job config (and DeepSpeed config)."""
    return bounded_name(owner, "-config", 253)


def curation_work_job_name(curation_job: str) -> str:
    """The Indexed Job running the curation workers."""
    return bounded_name(curation_job, "-work", JOB_NAME_MAX)


def curation_merge_job_name(curation_job: str) -> str:
    """The Job running the merge step after every worker succeeded."""
    return bounded_name(curation_job, "-merge", JOB_NAME_MAX)


def pytorch_job_name(sft_job: str, attempt: int) -> str:
    """The PyTorchJob of one attempt (a failed attempt is retried as the next one)."""
    return bounded_name(sft_job, f"-a{attempt}", PYTORCHJOB_NAME_MAX)


def train_job_name(sft_job: str, attempt: int) -> str:
    """The TrainJob of one attempt (backend ``TrainJob``)."""
    return bounded_name(sft_job, f"-a{attempt}", TRAINJOB_NAME_MAX)


def eval_job_name(eval_job: str) -> str:
    """The batch Job running an evaluation."""
    return bounded_name(eval_job, "-eval", JOB_NAME_MAX)


def child_labels(
    owner_kind: str,
    owner_name: str,
    component: str,
    *,
    run: str | None = None,
    generation: int | None = None,
) -> dict[str, str]:
    """Labels every child carries: who manages it, whose it is, which run and generation."""
    labels = {
        MANAGED_BY: OPERATOR_NAME,
        PART_OF: "medsft",
        COMPONENT: component,
        OWNER_KIND: owner_kind,
        OWNER_NAME: owner_name,
    }
    if run:
        labels[RUN] = run
    if generation is not None:
        labels[GENERATION] = str(generation)
    return labels


def run_and_generation(manifest: dict) -> tuple[str, int]:
    """The run a stage resource belongs to (itself when standalone) and its generation,
    from the labels a MedSFTRun puts on its stage resources."""
    labels = manifest["metadata"].get("labels") or {}
    run = labels.get(RUN) or manifest["metadata"]["name"]
    value = str(labels.get(GENERATION, "1"))
    return run, max(1, int(value)) if value.isdigit() else 1


def propagated_annotations(manifest: dict, prefixes: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The owner's annotations whose keys start with one of ``prefixes`` (configured on the
    operator), copied onto what it creates: a run's onto its stage resources, a stage
    resource's onto its Jobs and PyTorchJobs (e.g. for schedulers or cost attribution)."""
    annotations = manifest["metadata"].get("annotations") or {}
    return {k: v for k, v in annotations.items() if prefixes and k.startswith(tuple(prefixes))}


def owned_by(obj: dict, owner: dict) -> bool:
    """Whether ``obj`` carries an ownerReference to exactly ``owner`` (by UID: a name can be
    reused by another object, a UID cannot)."""
    uid = owner["metadata"].get("uid")
    refs = obj["metadata"].get("ownerReferences") or []
    return bool(uid) and any(ref.get("uid") == uid for ref in refs)


def owner_reference(owner: dict, *, controller: bool = True) -> dict:
    """An ownerReference to ``owner`` (a manifest with kind, metadata.name and uid):
    children go with their owner by garbage collection."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }
