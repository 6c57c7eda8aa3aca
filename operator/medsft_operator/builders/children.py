"""Children of the stage kinds: ConfigMaps, batch Jobs and the PyTorchJob.

Every function takes the owner's manifest (for name, namespace, uid and labels), the
parsed spec and what the reconciler resolved (image, storage, URIs), and returns
manifests ready to create: deterministic names, owner references, labels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from medsft_operator import names
from medsft_operator.api.kinds import CurationStageSpec, EvalStageSpec, SFTStageSpec
from medsft_operator.builders.pods import (
    CONFIG_DIR,
    CONTAINER_SECURITY,
    POD_SECURITY,
    Manifest,
    PodSettings,
    base_env,
    container,
    pod_template,
    resources,
    storage_env,
    tracking_env,
    volume_mounts,
    volumes,
)
from medsft_pipelines.specs.jobconfig import (
    CurationJobConfig,
    EvalJobConfig,
    SFTJobConfig,
    dump_job_config,
)
from medsft_pipelines.specs.sft import check_batch_divisible

CURATE_COMMAND = ["medsft-curate", "--config"]
TRAIN_COMMAND = ["torchrun", "--no-python", "medsft-train", "--config"]
EVAL_COMMAND = ["medsft-eval", "--config"]
DEEPSPEED_FILE = "deepspeed.json"
PYTORCHJOB_PORT = 23456  # the training operator's default rendezvous port


@dataclass(frozen=True)
class Owner:
    """The resource whose children are being built."""

    manifest: dict[str, Any]
    component: str  # curation | sft | eval

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.manifest["metadata"]["namespace"])

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    def labels(self) -> dict[str, str]:
        """Child labels, inheriting the run and generation of a run-owned stage."""
        own = self.manifest["metadata"].get("labels") or {}
        generation = own.get(names.GENERATION)
        return names.child_labels(
            self.kind,
            self.name,
            self.component,
            run=own.get(names.RUN),
            generation=int(generation) if generation else None,
        )

    def metadata(
        self, name: str, *, annotations: dict[str, str] | None = None, **extra_labels: str
    ) -> Manifest:
        meta: Manifest = {
            "name": name,
            "namespace": self.namespace,
            "labels": {**self.labels(), **extra_labels},
            "ownerReferences": [names.owner_reference(self.manifest)],
        }
        if annotations:
            meta["annotations"] = dict(annotations)
        return meta


def content_hash(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_map(owner: Owner, files: dict[str, str]) -> Manifest:
    """The (immutable) ConfigMap with a stage's job config files."""
    meta = owner.metadata(names.config_map_name(owner.name))
    meta["annotations"] = {names.CONFIG_HASH: content_hash(files)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": files,
    }


def _queue(owner_spec: CurationStageSpec | SFTStageSpec | EvalStageSpec) -> dict[str, str]:
    queue = owner_spec.scheduling.queue_name
    return {names.KUEUE_QUEUE: queue} if queue else {}


def _batch_job(
    owner: Owner,
    name: str,
    settings: PodSettings,
    pod: Manifest,
    spec: CurationStageSpec | EvalStageSpec,
    *,
    job_spec: Manifest,
) -> Manifest:
    queued = _queue(spec)
    body: Manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owner.metadata(name, annotations=settings.annotations, **queued),
        "spec": {**job_spec, "template": pod},
    }
    if queued:
        body["spec"]["suspend"] = True  # Kueue admits the workload by unsuspending it
    return body


# ------------------------------------------------------------------------------- curation


def curation_config_map(
    owner: Owner, work: CurationJobConfig, merge: CurationJobConfig
) -> Manifest:
    return config_map(
        owner, {"work.yaml": dump_job_config(work), "merge.yaml": dump_job_config(merge)}
    )


def _curation_pod(
    owner: Owner, spec: CurationStageSpec, settings: PodSettings, config_file: str
) -> Manifest:
    env = base_env(config_file) + storage_env(settings.storage) + tracking_env(settings)
    teachers = spec.teachers
    for modality, teacher in (
        ("text", teachers and teachers.text),
        ("image", teachers and teachers.image),
    ):
        if teacher and teacher.api_key_secret is not None:
            ref = teacher.api_key_secret
            env.append(
                {
                    "name": f"MEDSFT_TEACHER_{modality.upper()}_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
    worker = container(
        "curate",
        settings,
        command=[*CURATE_COMMAND, f"{CONFIG_DIR}/{config_file}"],
        env=env,
        runtime=spec,
    )
    return pod_template(settings, [worker], spec, restart_policy="Never")


def curation_work_job(owner: Owner, spec: CurationStageSpec, settings: PodSettings) -> Manifest:
    """The Indexed Job of the workers: one pod per slice, each slice retried on its own."""
    return _batch_job(
        owner,
        names.curation_work_job_name(owner.name),
        settings,
        _curation_pod(owner, spec, settings, "work.yaml"),
        spec,
        job_spec={
            "completionMode": "Indexed",
            "completions": spec.workers,
            "parallelism": spec.workers,
            "backoffLimitPerIndex": spec.backoff_limit,
        },
    )


def curation_merge_job(owner: Owner, spec: CurationStageSpec, settings: PodSettings) -> Manifest:
    """The Job combining the workers' slices into the final shards and manifest."""
    return _batch_job(
        owner,
        names.curation_merge_job_name(owner.name),
        settings,
        _curation_pod(owner, spec, settings, "merge.yaml"),
        spec,
        job_spec={"completions": 1, "parallelism": 1, "backoffLimit": spec.backoff_limit},
    )


# ------------------------------------------------------------------------------------ SFT


def deepspeed_file(spec: SFTStageSpec) -> str:
    """The DeepSpeed config the trainer will use on this job's world size (for inspection;
    the trainer regenerates the same from its job config)."""
    from medsft_pipelines.sft.deepspeed_config import deepspeed_config

    world = spec.nodes * spec.gpus_per_node
    accumulation = check_batch_divisible(spec.training, world)
    config = deepspeed_config(spec, world_size=world, grad_accum_steps=accumulation, on_gpu=True)
    return json.dumps(config, indent=2, sort_keys=True)


def sft_config_map(owner: Owner, spec: SFTStageSpec, config: SFTJobConfig) -> Manifest:
    return config_map(
        owner, {"job.yaml": dump_job_config(config), DEEPSPEED_FILE: deepspeed_file(spec)}
    )


def pytorch_job(
    owner: Owner,
    spec: SFTStageSpec,
    settings: PodSettings,
    *,
    attempt: int,
) -> Manifest:
    """The PyTorchJob of one training attempt: Master + (nodes-1) Workers, torchrun with
    ``nprocPerNode`` = GPUs per node, a memory-backed ``/dev/shm``, gang-scheduling hints.

    Retries belong to the operator alone (docs/recipe.md, "Retries"): the PyTorchJob
    restarts nothing (``restartPolicy: Never``, ``backoffLimit: 0``) and fails at the first
    failed pod; the operator then creates attempt ``attempt + 1``, up to the stage's
    ``backoffLimit``. Every attempt reads the same job config and output location, and the
    trainer resumes from the newest checkpoint complete on every node by itself.
    """
    env = sft_env(settings, attempt=attempt)
    pod_settings = PodSettings(
        image=settings.image,
        storage=settings.storage,
        config_map=settings.config_map,
        labels={**settings.labels, names.ATTEMPT: str(attempt)},
        pull_policy=settings.pull_policy,
        service_account=settings.service_account,
        annotations=settings.annotations,
    )
    trainer = container(
        "pytorch",  # the training operator finds the trainer container by this name
        pod_settings,
        command=[*TRAIN_COMMAND, f"{CONFIG_DIR}/job.yaml"],
        env=env,
        runtime=spec,
        gpus=spec.gpus_per_node,
        shm=True,
        ports=[{"name": "pytorchjob-port", "containerPort": PYTORCHJOB_PORT, "protocol": "TCP"}],
    )
    template = pod_template(
        pod_settings, [trainer], spec, restart_policy="Never", shm_size=spec.shm_size
    )
    replicas: Manifest = {
        role: {"replicas": count, "restartPolicy": "Never", "template": template}
        for role, count in (("Master", 1), ("Worker", spec.nodes - 1))
        if count
    }
    scheduling: Manifest = {"minAvailable": spec.nodes}  # all nodes or none (gang)
    if spec.scheduling.priority_class_name:
        scheduling["priorityClass"] = spec.scheduling.priority_class_name
    queued = _queue(spec)
    run_policy: Manifest = {
        "backoffLimit": 0,  # one retry budget: the operator's attempts (see the docstring)
        # A failed attempt's survivors (a rank blocked in a collective, a Worker recreated to
        # wait for a gone Master) would hold GPUs and upload or prune beside the next one:
        # the training operator deletes the pods still Running or Pending when the job ends.
        # Not ``All``: finished pods stay, with their logs (what `kubectl logs` is for).
        "cleanPodPolicy": "Running",
        "schedulingPolicy": scheduling,
    }
    if queued:
        # Kueue admits a queued job by unsuspending it. Never write ``suspend: false``:
        # only Kueue may (Kueue's rule for integrations; an eviction re-suspends).
        run_policy["suspend"] = True
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _attempt_metadata(
            owner, names.pytorch_job_name(owner.name, attempt), settings, queued, attempt
        ),
        "spec": {
            "nprocPerNode": str(spec.gpus_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }


def _attempt_metadata(
    owner: Owner, name: str, settings: PodSettings, queued: dict[str, str], attempt: int
) -> Manifest:
    """Metadata of one training attempt's PyTorchJob or TrainJob (its queue, its number)."""
    return owner.metadata(
        name, annotations=settings.annotations, **queued, **{names.ATTEMPT: str(attempt)}
    )


TRAINJOB_PATCH_MANAGER = "medsft.io/operator"
TRAINJOB_NODE = "node"  # the torch runtime's replicated job and container


def sft_env(settings: PodSettings, *, attempt: int) -> list[Manifest]:
    """Environment of every training process (either backend)."""
    return [
        *base_env("job.yaml"),
        {"name": "MEDSFT_ATTEMPT", "value": str(attempt)},  # in the trainer's summary
        *storage_env(settings.storage),
        *tracking_env(settings),
    ]


def train_job(
    owner: Owner,
    spec: SFTStageSpec,
    settings: PodSettings,
    *,
    attempt: int,
    runtime: str,
) -> Manifest:
    """The Kubeflow Trainer v2 TrainJob of one training attempt.

    The ClusterTrainingRuntime ``runtime`` (the chart's ``medsft-torch``) holds what every
    SFT shares: the torch ML policy, the JobSet with one ``node`` replicated job and its
    scratch and ``/dev/shm`` volumes, the pod and container hardening. What is this job's
    own goes here: ``trainer`` (image, torchrun command, env, ``numNodes``, ``numProcPerNode``
    = GPUs per node, resources per node) and one ``runtimePatches`` entry owned by the
    operator (its ConfigMap, the storage CA, the shm size, labels, ServiceAccount and
    placement). Trainer's torch plugin hands torchrun the rendezvous through ``PET_*``
    variables, so the command is the PyTorchJob's.
    """
    labels = {**settings.labels, names.ATTEMPT: str(attempt)}
    mounts = volume_mounts(settings, shm=True)
    pod_spec: Manifest = {
        "volumes": volumes(settings, shm_size=spec.shm_size),
        "containers": [
            {
                "name": TRAINJOB_NODE,
                "volumeMounts": mounts,
                "securityContext": CONTAINER_SECURITY,
            }
        ],
        "securityContext": POD_SECURITY,
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    scheduling = spec.scheduling
    if scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations
        ]
    trainer: Manifest = {
        "image": settings.image,
        "command": [*TRAIN_COMMAND, f"{CONFIG_DIR}/job.yaml"],
        "env": sft_env(settings, attempt=attempt),
        "numNodes": spec.nodes,
        "numProcPerNode": spec.gpus_per_node,
        "resourcesPerNode": resources(spec, spec.gpus_per_node),
    }
    queued = _queue(spec)
    body: Manifest = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _attempt_metadata(
            owner, names.train_job_name(owner.name, attempt), settings, queued, attempt
        ),
        "spec": {
            "runtimeRef": {
                "apiGroup": "trainer.kubeflow.org",
                "kind": "ClusterTrainingRuntime",
                "name": runtime,
            },
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": TRAINJOB_PATCH_MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "metadata": {"labels": dict(labels)},
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": TRAINJOB_NODE,
                                        "template": {
                                            "metadata": {"labels": dict(labels)},
                                            "spec": {
                                                "template": {
                                                    "metadata": {"labels": dict(labels)},
                                                    "spec": pod_spec,
                                                }
                                            },
                                        },
                                    }
                                ]
                            },
                        }
                    },
                }
            ],
        },
    }
    if queued:
        body["spec"]["suspend"] = True  # as for PyTorchJob: only Kueue unsuspends
    return body


# ----------------------------------------------------------------------------------- eval


def eval_config_map(owner: Owner, config: EvalJobConfig) -> Manifest:
    return config_map(owner, {"job.yaml": dump_job_config(config)})


def eval_job(owner: Owner, spec: EvalStageSpec, settings: PodSettings) -> Manifest:
    """One evaluation pod (all its GPUs in the same pod, e.g. for tensor-parallel vLLM)."""
    evaluator = container(
        "eval",
        settings,
        command=[*EVAL_COMMAND, f"{CONFIG_DIR}/job.yaml"],
        env=base_env("job.yaml") + storage_env(settings.storage) + tracking_env(settings),
        runtime=spec,
        gpus=spec.gpus,
        shm=spec.gpus > 0,
    )
    pod = pod_template(
        settings, [evaluator], spec, restart_policy="Never", shm_size="8Gi" if spec.gpus else None
    )
    return _batch_job(
        owner,
        names.eval_job_name(owner.name),
        settings,
        pod,
        spec,
        job_spec={"completions": 1, "parallelism": 1, "backoffLimit": spec.backoff_limit},
    )
