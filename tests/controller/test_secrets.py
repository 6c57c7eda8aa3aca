"""No secret leaves its Secret: after an end-to-end run with distinctive credential values
(storage keys of a MinIO user made for this test, a teacher API key, and wrong storage keys
that make the storage client fail), none of them — nor their base64, at any alignment — is
in the operator's log (at DEBUG), any Event, any status or object the operator wrote, the
children's manifests, the metrics, or the manifests ``medsft render`` produces.

No pod runs here (no kubelet), so pod logs are covered where the pods' code runs: the
storage client's errors (tests/storage/test_faults.py) and the teacher client's
(tests/curation/test_teacher.py::test_teacher_errors_never_carry_the_api_key).
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from controller.operator_harness import (
    FAKE,
    STORAGE_SECRET,
    RunDriver,
    resource,
    run_spec,
    wait_for,
)
from kubernetes import client

from medsft_operator.render import children_of

HELD = {f"{FAKE}outcome": "Running"}


def forms(value: str) -> set[str]:
    """``value`` and its base64, also as it appears inside a longer base64 text (at each of
    the three byte alignments, the characters that depend on the value alone)."""
    raw = value.encode()
    found = {value, base64.b64encode(raw).decode()}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        start = 4 if shift else 0
        end = 4 * ((shift + len(raw)) // 3)
        found.add(encoded[start:end])
    return {f for f in found if len(f) >= 12}


def leaks(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    return [
        f"{what} of {name} in {where}"
        for where, text in texts.items()
        for name, value in secrets.items()
        for what in forms(value)
        if what in text
    ]


def test_the_scan_finds_a_secret_in_any_of_its_forms():
    secret = "s3cr3t-" + uuid.uuid4().hex
    blob = base64.b64encode(b'{"user": "x", "password": "' + secret.encode() + b'"}').decode()
    assert leaks({"a blob": blob}, {"password": secret})  # inside longer base64
    assert leaks({"a line": f"key={secret}"}, {"password": secret})
    assert not leaks({"a line": "key=***"}, {"password": secret})


def _distinct_minio_user(minio) -> tuple[str, str]:
    """A MinIO user with distinctive keys and read-write rights (MinIO's admin API)."""
    from minio.credentials import StaticProvider
    from minio.minioadmin import MinioAdmin

    access, secret = f"AKMEDSFT{uuid.uuid4().hex[:12].upper()}", f"sk-{uuid.uuid4().hex}"
    endpoint = minio.endpoint
    admin = MinioAdmin(
        endpoint=endpoint,
        credentials=StaticProvider(minio.access_key, minio.secret_key),
        secure=False,
    )
    admin.user_add(access, secret)
    admin.attach_policy(["readwrite"], user=access)
    return access, secret


@pytest.fixture
def creds(cluster, minio, storage):
    access, secret = _distinct_minio_user(minio)
    teacher_key = f"sk-teacher-{uuid.uuid4().hex}"
    bogus_access, bogus_secret = f"AKBOGUS{uuid.uuid4().hex[:12].upper()}", uuid.uuid4().hex
    # The storage Secret the runs use holds the distinctive user's keys.
    cluster.core.delete_namespaced_secret(STORAGE_SECRET, cluster.namespace)
    cluster.secret(STORAGE_SECRET, {"accessKey": access, "secretKey": secret})
    cluster.secret("teacher-key", {"apiKey": teacher_key})
    cluster.secret("bogus-creds", {"accessKey": bogus_access, "secretKey": bogus_secret})
    storage.access_key, storage.secret_key = access, secret  # the test's own writes, too
    return {
        "storage access key": access,
        "storage secret key": secret,
        "teacher API key": teacher_key,
        "wrong access key": bogus_access,
        "wrong secret key": bogus_secret,
    }


def _dump(api: client.ApiClient, items) -> str:
    return json.dumps(api.sanitize_for_serialization(items))


def test_no_credential_value_leaves_its_secret(cluster, storage, creds, start_operator):
    op = start_operator("secrets", MEDSFT_LOG_LEVEL="DEBUG")
    op.wait_leading()
    ns = cluster.namespace
    spec = run_spec(storage)
    del spec["curation"]["spec"]["tracesFrom"]  # a teacher instead of imported traces
    spec["curation"]["spec"]["teachers"] = {
        "text": {
            "endpoint": "http://teacher.medsft.invalid/v1",
            "model": "teacher-x",
            "apiKeySecret": {"name": "teacher-key", "key": "apiKey"},
        }
    }
    run = resource("MedSFTRun", "s", spec, annotations=HELD)
    cluster.create(run)
    drive = RunDriver(cluster, storage, "s")
    drive.curation()
    drive.sft()
    drive.eval()
    cluster.wait_phase("MedSFTRun", "s", "Succeeded")

    # The storage client failing with wrong keys: errors logged, retried, posted.
    bogus = {**storage.spec(), "credentialsSecret": {"name": "bogus-creds"}}
    cluster.create(
        resource(
            "SFTJob",
            "bogus",
            {
                "storage": bogus,
                "model": {"uri": f"s3://{storage.bucket}/models/tiny"},
                "dataset": {"manifestUri": f"s3://{storage.bucket}/datasets/x/manifest.json"},
                "training": {"globalBatchSize": 8, "microBatchSize": 1, "maxSteps": 5},
            },
        )
    )
    failed = "reconcile of SFTJob " + f"{cluster.namespace}/bogus failed"
    wait_for(lambda: failed in op.log.read_text(), what="the operator's storage error (wrong keys)")

    api = cluster.api
    texts = {
        "the operator log": op.log.read_text(),
        "the metrics": op.metrics(),
        "Events": _dump(api, cluster.core.list_namespaced_event(ns)),
        "ConfigMaps": _dump(api, cluster.core.list_namespaced_config_map(ns)),
        "Jobs": _dump(api, cluster.batch.list_namespaced_job(ns)),
        "PyTorchJobs": json.dumps(cluster.pytorchjobs()),
        "the rendered manifests": json.dumps(
            children_of({**run, "metadata": {**run["metadata"], "namespace": ns}})
        ),
    }
    for kind in ("MedSFTRun", "CurationJob", "SFTJob", "EvalJob"):
        texts[f"{kind}s"] = json.dumps(cluster.list(kind))
    assert "teacher-key" in texts["the rendered manifests"]  # by reference, it is there
    assert "StorageError" in texts["the operator log"]  # the error path was taken

    # The scan works: the Secrets themselves hold the values (base64).
    secrets = _dump(api, cluster.core.list_namespaced_secret(ns))
    assert len(leaks({"Secrets": secrets}, creds)) >= len(creds)

    assert leaks(texts, creds) == []
