"""Helpers of the operator tests: the operator as a real process, the cluster objects, and
stand-ins for what cannot run here.

These tests check the operator's decisions, stage by stage and under faults, with no pod
running (real pods and the real training operator: tests/node, tests/e2e): what
the pods would do is played by the test, with the real components, so that each state is
reached at once and on cue: a Job's outcome is written
through the real apiserver's status subresource (as the Job controller would), the
PyTorchJob is moved by the harness's fake training operator (steered by its annotations),
and the artifacts a stage writes (dataset manifest, progress, checkpoints, model export,
eval summary) are written to the real MinIO with the data plane's own storage API.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from harness import processes
from harness.controlplane import ControlPlane
from medsft_operator import rbac
from medsft_pipelines.storage import StorageSettings, open_store
from medsft_pipelines.storage.checkpoints import CheckpointStore
from medsft_pipelines.storage.progress import ProgressReporter
from medsft_pipelines.storage.shards import ShardWriter

T = TypeVar("T")
GROUP, VERSION = "medsft.io", "v1alpha1"
PLURALS = {
    "CurationJob": "curationjobs",
    "SFTJob": "sftjobs",
    "EvalJob": "evaljobs",
    "MedSFTRun": "medsftruns",
}
REPO = Path(__file__).resolve().parents[2]
OPERATOR_SA = "medsft-operator"
STORAGE_SECRET = "storage-creds"
FAKE = "fake.medsft.io/"
LEASE_DURATION_S = 6  # of the test operators: how long a standby waits out a silent leader


def wait_for(predicate: Callable[[], T], *, timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy (no bare sleeps in tests)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except ApiException as exc:
            if exc.status != 404:
                raise
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """Admin access to one test namespace."""

    kube: ControlPlane
    namespace: str
    api: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = self.kube.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)

    # medsft kinds
    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        plural = PLURALS[manifest["kind"]]
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, manifest
        )

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[kind], name
        )

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            return self.get(kind, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[kind], label_selector=selector
        )["items"]

    def patch(self, kind: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[kind], name, patch
        )

    def delete(self, kind: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[kind], name
        )

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return self.get(kind, name).get("status") or {}

    def wait_phase(self, kind: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(kind, name)).get("phase") == phase and s,
            timeout=timeout,
            what=f"{kind} {name} phase {phase}",
        )

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        return next(
            (c for c in self.status(kind, name).get("conditions") or [] if c["type"] == type_), None
        )

    # children
    def job(self, name: str) -> client.V1Job:
        return self.batch.read_namespaced_job(name, self.namespace)

    def jobs(self) -> list[str]:
        return sorted(j.metadata.name for j in self.batch.list_namespaced_job(self.namespace).items)

    def pytorchjobs(self) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(
            "kubeflow.org", "v1", self.namespace, "pytorchjobs"
        )["items"]

    def pytorchjob(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            "kubeflow.org", "v1", self.namespace, "pytorchjobs", name
        )

    def steer(self, pytorchjob: str, outcome: str) -> None:
        """Tell the fake training operator where this PyTorchJob goes next."""
        self.custom.patch_namespaced_custom_object(
            "kubeflow.org",
            "v1",
            self.namespace,
            "pytorchjobs",
            pytorchjob,
            {"metadata": {"annotations": {f"{FAKE}outcome": outcome}}},
        )

    def finish_job(
        self, name: str, *, succeeded: bool = True, reason: str = "BackoffLimitExceeded"
    ) -> None:
        """What the Job controller writes when the pods of ``name`` are done."""
        job = self.job(name)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def condition(type_: str, why: str) -> dict[str, str]:
            return {
                "type": type_,
                "status": "True",
                "reason": why,
                "message": f"{type_} ({why})",
                "lastTransitionTime": now,
                "lastProbeTime": now,
            }

        completions = job.spec.completions or 1
        status: dict[str, Any] = {"startTime": now}
        if succeeded:
            status |= {
                "succeeded": completions,
                "completionTime": now,
                "conditions": [
                    condition("SuccessCriteriaMet", "CompletionsReached"),
                    condition("Complete", "CompletionsReached"),
                ],
            }
            if job.spec.completion_mode == "Indexed":
                status["completedIndexes"] = f"0-{completions - 1}" if completions > 1 else "0"
        else:
            status |= {
                "failed": 1,
                "conditions": [condition("FailureTarget", reason), condition("Failed", reason)],
            }
            if job.spec.completion_mode == "Indexed":
                status["failedIndexes"] = "0"
        self.batch.patch_namespaced_job_status(name, self.namespace, {"status": status})

    def events(self, name: str) -> list[tuple[str, str]]:
        items = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [(e.reason, e.message) for e in items]

    def wait_events(self, name: str, *reasons: str, mentioning: str = "") -> list[tuple[str, str]]:
        """The object's events once each reason is there (with ``mentioning`` in its message).

        kopf posts events from a background queue, so they can arrive after the status
        write a test has just waited for.
        """

        def arrived() -> list[tuple[str, str]] | None:
            events = self.events(name)
            seen = {r for r, m in events if mentioning in m}
            return events if set(reasons) <= seen else None

        return wait_for(arrived, what=f"{', '.join(reasons)} events on {name}")

    def secret(self, name: str, data: dict[str, str]) -> None:
        self.core.create_namespaced_secret(
            self.namespace,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name=name),
                data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
            ),
        )


# --------------------------------------------------------------- the operator, for real


def install_medsft_crds(kube: ControlPlane) -> None:
    """The CRDs generated from the models (what ``crds/`` holds), server-side applied."""
    from medsft_operator.api.crdgen import crd_manifests

    for crd in crd_manifests():
        kube.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(crd)
        )
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{c['metadata']['name']}" for c in crd_manifests()),
    )


def grant_operator(
    kube: ControlPlane, namespace: str, *, clusterwide: bool = False, suffix: str = ""
) -> str:
    """The ServiceAccount and the RBAC of ``rbac.py``, as the Helm chart grants them: a
    Role in the watched namespace (or a ClusterRole), plus the leader-election Role."""
    api = kube.api_client()
    core, rbac_api = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": OPERATOR_SA}})
    subject = [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": namespace}]
    ref = {"apiGroup": "rbac.authorization.k8s.io"}
    if clusterwide:
        name = f"medsft-operator-{namespace}{suffix}"
        rbac_api.create_cluster_role(
            {"metadata": {"name": name}, "rules": rbac.cluster_rules() + rbac.namespaced_rules()}
        )
        rbac_api.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {**ref, "kind": "ClusterRole", "name": name},
                "subjects": subject,
            }
        )
    else:
        rbac_api.create_namespaced_role(
            namespace, {"metadata": {"name": "medsft-operator"}, "rules": rbac.namespaced_rules()}
        )
        rbac_api.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "medsft-operator"},
                "roleRef": {**ref, "kind": "Role", "name": "medsft-operator"},
                "subjects": subject,
            },
        )
    rbac_api.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "medsft-leader"},
            "rules": rbac.leader_election_rules("medsft-operator"),
        },
    )
    rbac_api.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "medsft-leader"},
            "roleRef": {**ref, "kind": "Role", "name": "medsft-leader"},
            "subjects": subject,
        },
    )
    return f"system:serviceaccount:{namespace}:{OPERATOR_SA}"


def service_account_kubeconfig(kube: ControlPlane, namespace: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount with a bound token
    (TokenRequest), exactly as the in-cluster Deployment would."""
    core = client.CoreV1Api(kube.api_client())
    token = core.create_namespaced_service_account_token(
        OPERATOR_SA, namespace, {"spec": {"expirationSeconds": 7200}}
    ).status.token
    admin = yaml.safe_load(Path(kube.kubeconfig).read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    admin["contexts"] = [
        {
            "name": "operator",
            "context": {"cluster": admin["clusters"][0]["name"], "user": "operator"},
        }
    ]
    admin["current-context"] = "operator"
    path.write_text(yaml.safe_dump(admin))
    return path


#: The operator's two front doors, one command behind both (medsft_operator.cli.operator):
#: what a checkout runs, and what the Helm chart's Deployment runs (the image's entrypoint).
FRONT_DOORS = {
    "python -m medsft_operator": (sys.executable, "-m", "medsft_operator"),
    "medsft operator": (str(Path(sys.executable).parent / "medsft"), "operator"),
}


class OperatorProcess:
    """The operator as a subprocess (``python -m medsft_operator`` unless ``front_door``
    names the other), with the flags and settings of a Deployment."""

    def __init__(
        self,
        kubeconfig: Path,
        lease_namespace: str,
        log: Path,
        *,
        namespaces: list[str] | None,
        identity: str,
        env: dict[str, str] | None = None,
        front_door: str = "python -m medsft_operator",
    ) -> None:
        self.command = FRONT_DOORS[front_door]
        self.kubeconfig = kubeconfig
        self.lease_namespace = lease_namespace
        self.namespaces = namespaces
        self.identity = identity
        self.log = log
        self.env = env or {}
        self.port = processes.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        args = [
            *self.command,
            "--kubeconfig",
            str(self.kubeconfig),
            "--http-port",
            str(self.port),
            "--metrics-port",
            str(self.port),
            "--lease-namespace",
            self.lease_namespace,
            "--identity",
            self.identity,
        ]
        for ns in self.namespaces or []:
            args += ["--namespace", ns]
        env = {
            "MEDSFT_POLL_INTERVAL_S": "1",
            "MEDSFT_RETRY_BACKOFF_S": "0.5",
            "MEDSFT_RETRY_BACKOFF_MAX_S": "2",
            "MEDSFT_LEASE_DURATION_S": str(LEASE_DURATION_S),
            "MEDSFT_LEASE_RENEW_S": "1",
            # A busy test machine can take seconds to answer: room for a few renewals.
            "MEDSFT_LEASE_RENEW_DEADLINE_S": "4",
            "MEDSFT_PROPAGATE_ANNOTATION_PREFIXES": FAKE,
            "MEDSFT_DEFAULT_IMAGE": "registry.example/medsft/trainer:test",
            "MEDSFT_EVAL_IMAGE": "registry.example/medsft/eval:test",
            "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("operator", "pipelines")),
            **self.env,
        }
        self.proc = processes.start(args, self.log, env=env)
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return None

    def wait_leading(self, timeout: float = 60) -> None:
        def leading() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
            return bool((self.health() or {}).get("leader"))

        wait_for(leading, timeout=timeout, what=f"operator {self.identity} to lead")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        from prometheus_client.parser import text_string_to_metric_families

        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is not None:
            processes.stop(self.proc)
            return self.proc.returncode
        return None

    def tail(self, lines: int = 60) -> str:
        return processes.tail(self.log, lines)


# --------------------------------------------------------------- specs and storage


@dataclass
class Storage:
    """The test's bucket on the real MinIO, as specs and the data plane see it."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def spec(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "secure": False,
            "credentialsSecret": {"name": STORAGE_SECRET},
        }

    def settings(self) -> StorageSettings:
        from pydantic import SecretStr

        return StorageSettings(
            endpoint=self.endpoint,
            secure=False,
            access_key=SecretStr(self.access_key),
            secret_key=SecretStr(self.secret_key),
            retry_timeout_s=5,
        )

    def store(self, uri: str) -> Any:
        return open_store(uri, self.settings())

    def root(self, namespace: str, run: str, generation: int = 1) -> str:
        return f"s3://{self.bucket}/{namespace}/{run}/g{generation}"

    def keys(self, prefix: str = "") -> list[str]:
        return self.store(f"s3://{self.bucket}").list(prefix)

    # What the stages' pods would write.
    def write_dataset(self, output_uri: str, rows: int = 12) -> None:
        store = self.store(output_uri)
        with ShardWriter(store, target_shard_bytes=1024) as writer:
            writer.write([{"id": f"q{i}", "n_tokens": 10 + i} for i in range(rows)])
            writer.close(
                extra={
                    "counts": {
                        "read/src": rows + 3,
                        "traces/src/mcq/generated": 2 * rows,
                        "traces/src/mcq/accepted": rows,
                        "removed/duplicate_exact/src": 3,
                    },
                    "token_stats": {"total_tokens": 1000, "response_tokens": 600},
                }
            )
        store.put_json(
            "report/report.json", {"totals": {"unique_questions": rows, "unique_images": 0}}
        )

    def write_progress(self, output_uri: str, step: int, total: int, **extra: Any) -> None:
        ProgressReporter(self.store(output_uri), "test", min_interval_s=0).update(
            step=step, total=total, force=True, **extra
        )

    def write_training(self, sft_output: str, step: int, total: int, loss: float) -> None:
        """progress.json and a metrics line, as the trainer writes them every step."""
        reporter = ProgressReporter(
            self.store(sft_output), "sft", min_interval_s=0, metrics_flush_s=0
        )
        reporter.log_metrics({"loss": loss, "lr": 4e-5, "tokens_per_s": 1234.5}, step=step)
        reporter.update(step=step, total=total, force=True, epoch=0.5, loss=loss)
        reporter.flush()

    def write_checkpoint(self, sft_output: str, step: int, nodes: int = 1) -> str:
        """Checkpoint ``step`` of every node (a step is complete when all nodes wrote it)."""
        with tempfile.TemporaryDirectory() as folder:
            Path(folder, "model.bin").write_bytes(b"weights")
            for node in range(nodes):
                CheckpointStore(self.store(f"{sft_output}/checkpoints/node-{node:03d}")).upload(
                    folder, step
                )
        return f"{sft_output}/checkpoints/node-000/step-{step:09d}"

    def write_model(self, sft_output: str) -> None:
        store = self.store(f"{sft_output}/model")
        store.put_bytes("model.safetensors", b"weights")
        store.put_json("export.json", {"complete": True})

    def write_eval_summary(self, eval_output: str, scores: dict[str, float]) -> None:
        """The eval harness's summary.json (medqa plays the out-of-distribution benchmark)."""
        self.store(eval_output).put_json(
            "summary.json",
            {
                "results": [
                    {
                        "name": n,
                        "distribution": "out" if n == "medqa" else "in",
                        "accuracy": a,
                        "items": 10,
                    }
                    for n, a in scores.items()
                ],
                "meanAccuracy": round(sum(scores.values()) / len(scores), 6),
                "reportUri": f"{eval_output}/results.json",
            },
        )


def curation_spec(storage: Storage, /, **overrides: Any) -> dict[str, Any]:
    spec = {
        "storage": storage.spec(),
        "workers": 2,
        "sources": [{"name": "src", "uri": f"s3://{storage.bucket}/raw/src.jsonl", "task": "mcq"}],
        "tracesFrom": {"uri": f"s3://{storage.bucket}/raw/traces.jsonl"},
        "processor": {"model": f"s3://{storage.bucket}/models/tiny"},
    }
    return spec | overrides


def sft_spec(storage: Storage, /, **overrides: Any) -> dict[str, Any]:
    spec = {
        "storage": storage.spec(),
        "model": {"uri": f"s3://{storage.bucket}/models/tiny"},
        "nodes": 2,
        "gpusPerNode": 4,
        "backoffLimit": 2,
        "training": {"globalBatchSize": 64, "microBatchSize": 2, "maxSteps": 10},
    }
    return spec | overrides


def eval_spec(storage: Storage, /, **overrides: Any) -> dict[str, Any]:
    spec = {
        "storage": storage.spec(),
        "benchmarks": [
            {"name": "pubmedqa", "distribution": "in"},
            {"name": "medqa", "distribution": "out"},
        ],
    }
    return spec | overrides


def resource(kind: str, name: str, spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind,
        "metadata": {"name": name, **metadata},
        "spec": spec,
    }


def run_spec(
    storage: Storage, /, *, seeds: int = 5, learning_rate: float = 5e-5, **overrides: Any
) -> dict[str, Any]:
    """A small MedSFTRun: curate (1 worker), fine-tune (1 node), evaluate two benchmarks."""
    bucket = storage.bucket
    protected = [{"name": "pubmedqa"}, {"name": "medqa"}]
    spec = {
        "storage": storage.spec(),
        "curation": {
            "spec": {
                "workers": 1,
                "sources": [{"name": "src", "uri": f"s3://{bucket}/raw/src.jsonl", "task": "mcq"}],
                "tracesFrom": {"uri": f"s3://{bucket}/raw/traces.jsonl"},
                "decontamination": {"benchmarks": protected},
            }
        },
        "sft": {
            "spec": {
                "model": {"uri": f"s3://{bucket}/models/tiny"},
                "nodes": 1,
                "gpusPerNode": 1,
                "training": {
                    "globalBatchSize": 8,
                    "microBatchSize": 1,
                    "maxSteps": 5,
                    "learningRate": learning_rate,
                },
            }
        },
        "eval": {
            "spec": {
                "benchmarks": [
                    {"name": "pubmedqa", "distribution": "in"},
                    {"name": "medqa", "distribution": "out"},
                ],
                "generation": {"seeds": seeds},
            }
        },
        "promotion": {"thresholds": [{"metric": "mean", "min": 0.5}]},
    }
    return spec | overrides


@dataclass
class RunDriver:
    """Plays the pods of a MedSFTRun's stages: finishes Jobs, steers PyTorchJobs and writes
    what each stage would have written, stage by stage, as the operator creates them."""

    cluster: Cluster
    storage: Storage
    run: str

    def output(self, generation: int, stage: str) -> str:
        return f"{self.storage.root(self.cluster.namespace, self.run, generation)}/{stage}"

    def curation(self, generation: int = 1) -> None:
        name = f"{self.run}-curation-g{generation}"
        wait_for(lambda: self.cluster.job(f"{name}-work"), what=f"{name}-work")
        self.cluster.finish_job(f"{name}-work")
        wait_for(lambda: self.cluster.job(f"{name}-merge"), what=f"{name}-merge")
        self.storage.write_dataset(self.output(generation, "curation"))
        self.cluster.finish_job(f"{name}-merge")
        self.cluster.wait_phase("CurationJob", name, "Succeeded")

    def sft(self, generation: int = 1, *, finish: bool = True) -> None:
        name = f"{self.run}-sft-g{generation}"
        wait_for(lambda: self.cluster.pytorchjob(f"{name}-a0"), what=f"{name}-a0")
        if not finish:
            self.cluster.wait_phase("SFTJob", name, "Running")
        else:
            self.storage.write_model(self.output(generation, "sft"))
            self.cluster.steer(f"{name}-a0", "Succeeded")
            self.cluster.wait_phase("SFTJob", name, "Succeeded")

    def eval(self, generation: int = 1, scores: dict[str, float] | None = None) -> None:
        name = f"{self.run}-eval-g{generation}"
        wait_for(lambda: self.cluster.job(f"{name}-eval"), what=f"{name}-eval")
        self.storage.write_eval_summary(
            self.output(generation, "eval"), scores or {"pubmedqa": 0.6, "medqa": 0.7}
        )
        self.cluster.finish_job(f"{name}-eval")
        self.cluster.wait_phase("EvalJob", name, "Succeeded")
