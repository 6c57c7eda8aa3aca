"""`medsft status` and `medsft report` against the real apiserver and a real MinIO."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from medsft_operator.cli import age, app, report_location, status_row

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "examples"
GROUP, VERSION = "medsft.io", "v1alpha1"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES_DIR / name).read_text())


def _create(kube, namespace: str, doc: dict, plural: str, status: dict | None = None) -> dict:
    doc = {**doc, "metadata": {"name": doc["metadata"]["name"], "namespace": namespace}}
    custom = client.CustomObjectsApi(kube.api_client())
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, doc)
    if status is not None:
        created["status"] = status
        created = custom.replace_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, doc["metadata"]["name"], created
        )
    return created


def _kube_args(kube, namespace: str) -> list[str]:
    return ["--kubeconfig", str(kube.kubeconfig), "-n", namespace]


# ---------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (5, "5s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (7199, "119m"),
        (7200, "2h"),
        (2 * 86400 - 1, "47h"),
        (3 * 86400, "3d"),
    ],
)
def test_age_reads_like_kubectl(seconds, shown):
    created = (NOW - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    assert age(created, NOW) == shown


def test_status_row_shows_the_number_that_matters_per_kind():
    run = {
        "kind": "MedSFTRun",
        "metadata": {"name": "r", "namespace": "ns", "creationTimestamp": "2026-11-25T11:00:00Z"},
        "status": {
            "phase": "Running",
            "stage": "Eval",
            "currentGeneration": 3,
            "score": 0.61234,
            "promotedGeneration": 2,
            "progress": "40/100",
        },
    }
    row = status_row(run, NOW)
    assert (row.generation, row.stage, row.phase, row.progress, row.age) == (
        "3",
        "Eval",
        "Running",
        "40/100",
        "60m",
    )
    assert row.result == "score 0.612 promoted g2"
    sft = {"kind": "SFTJob", "metadata": {"name": "s"}, "status": {"loss": 1.23456}}
    assert status_row(sft, NOW).result == "loss 1.2346"
    assert status_row(sft, NOW).phase == "Pending"  # no status yet: not picked up
    curation = {"kind": "CurationJob", "metadata": {"name": "c"}, "status": {"keptSamples": 1200}}
    assert status_row(curation, NOW).result == "1200 samples"


def test_report_location_follows_a_run_to_its_generation_eval_job():
    run = {
        "metadata": {"name": "r"},
        "status": {
            "currentGeneration": 2,
            "history": [
                {"generation": 2, "evalJob": "r-eval-g2", "curationJob": "r-curation-g1"},
                {"generation": 1, "evalJob": "r-eval-g1"},
            ],
        },
    }
    current = report_location("MedSFTRun", run)
    assert (current.next_kind, current.next_name) == ("EvalJob", "r-eval-g2")
    older = report_location("MedSFTRun", run, generation=1)
    assert older.next_name == "r-eval-g1"
    curation = report_location("MedSFTRun", run, stage="curation")
    assert (curation.next_kind, curation.next_name) == ("CurationJob", "r-curation-g1")
    assert "no generation 7" in report_location("MedSFTRun", run, generation=7).missing
    pending = report_location(
        "EvalJob", {"metadata": {"name": "e"}, "status": {"phase": "Running"}}
    )
    assert pending.uri is None and "no report yet (phase Running)" in pending.missing


# ---------------------------------------------------------------------------- status


def test_status_lists_every_kind_with_phase_stage_and_score(cli, kube, medsft_crds, namespace):
    _create(
        kube,
        namespace,
        _example("quickstart.yaml"),
        "medsftruns",
        {
            "phase": "Running",
            "stage": "SFT",
            "currentGeneration": 2,
            "progress": "3/8",
            "message": "training",
        },
    )
    _create(
        kube,
        namespace,
        _example("evaljob.yaml"),
        "evaljobs",
        {
            "phase": "Succeeded",
            "meanAccuracy": 0.5,
            "results": [{"name": "vqa-rad", "accuracy": 0.5}],
        },
    )
    result = cli.invoke(app, ["status", *_kube_args(kube, namespace), "-o", "json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"quickstart", "vqa-sft-eval"}
    assert rows["quickstart"] | {"age": None} == {
        "kind": "MedSFTRun",
        "namespace": namespace,
        "name": "quickstart",
        "generation": "2",
        "stage": "SFT",
        "phase": "Running",
        "progress": "3/8",
        "result": "",
        "age": None,
        "message": "training",
    }
    assert rows["vqa-sft-eval"]["result"] == "accuracy 0.500"

    only_runs = cli.invoke(app, ["status", *_kube_args(kube, namespace), "-k", "run", "-o", "json"])
    assert [r["name"] for r in json.loads(only_runs.stdout)] == ["quickstart"]

    table = cli.invoke(app, ["status", *_kube_args(kube, namespace)])
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["KIND", "NAME", "GEN", "STAGE", "PHASE"]
    assert any(
        line.split()[:5] == ["MedSFTRun", "quickstart", "2", "SFT", "Running"] for line in lines
    )


def test_status_across_namespaces_and_of_an_empty_namespace(cli, kube, medsft_crds, namespace):
    empty = cli.invoke(app, ["status", *_kube_args(kube, namespace)])
    assert empty.exit_code == 0 and f"No medsft resources in namespace {namespace}" in empty.stdout
    _create(kube, namespace, _example("sftjob.yaml"), "sftjobs", {"phase": "Failed"})
    everywhere = cli.invoke(
        app, ["status", "--kubeconfig", str(kube.kubeconfig), "-A", "-o", "json"]
    )
    mine = [r for r in json.loads(everywhere.stdout) if r["namespace"] == namespace]
    assert [(r["kind"], r["phase"]) for r in mine] == [("SFTJob", "Failed")]


def test_status_explains_an_unreachable_cluster(cli, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    result = cli.invoke(app, ["status", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 1
    assert "cannot reach the cluster" in result.stderr
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------- report

REPORT_MD = "# Evaluation report\n\n| benchmark | accuracy |\n|---|---|\n| vqa-rad | 50.0 |\n"


def _put_report(minio, bucket: str, prefix: str) -> str:
    store = minio.client()
    files = {
        "results.json": json.dumps({"benchmarks": [{"name": "vqa-rad"}]}).encode(),
        "report.md": REPORT_MD.encode(),
        "summary.json": b"{}",
        "plots/accuracy.png": b"\x89PNG fake plot bytes",
        "generations/vqa-rad.jsonl": b'{"id": 1}\n',  # raw outputs: not part of the report
    }
    for key, data in files.items():
        store.put_object(bucket, f"{prefix}/{key}", io.BytesIO(data), len(data))
    return f"s3://{bucket}/{prefix}/results.json"


def _credentials_secret(kube, namespace: str, minio) -> str:
    core = client.CoreV1Api(kube.api_client())
    data = {"accessKey": minio.access_key, "secretKey": minio.secret_key}
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="store-creds"),
            data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        ),
    )
    return "store-creds"


@pytest.fixture
def no_storage_env(monkeypatch):
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MEDSFT_S3_ENDPOINT",
        "MEDSFT_S3_SECURE",
        "MEDSFT_S3_CREDENTIALS_DIR",
    ):
        monkeypatch.delenv(name, raising=False)


def test_report_of_a_run_is_fetched_with_the_runs_own_storage_and_credentials(
    cli, kube, medsft_crds, namespace, minio, minio_bucket, tmp_path, no_storage_env
):
    uri = _put_report(minio, minio_bucket, f"{namespace}/run/eval")
    secret = _credentials_secret(kube, namespace, minio)
    storage = {
        "endpoint": minio.endpoint,
        "bucket": minio_bucket,
        "secure": False,
        "credentialsSecret": {"name": secret},
    }
    eval_job = _example("evaljob.yaml")
    eval_job["metadata"]["name"] = "run-eval-g1"
    eval_job["spec"]["storage"] = storage
    _create(kube, namespace, eval_job, "evaljobs", {"phase": "Succeeded", "reportUri": uri})
    run = _example("quickstart.yaml")
    run["metadata"]["name"] = "run"
    _create(
        kube,
        namespace,
        run,
        "medsftruns",
        {
            "phase": "Succeeded",
            "currentGeneration": 1,
            "history": [{"generation": 1, "evalJob": "run-eval-g1"}],
        },
    )

    saved = tmp_path / "report"
    result = cli.invoke(
        app, ["report", "run", *_kube_args(kube, namespace), "--download", str(saved)]
    )
    assert result.exit_code == 0, result.output
    assert "Evaluation report" in result.stdout and "vqa-rad" in result.stdout
    assert f"Report: {uri}" in result.stdout
    assert f"s3://{minio_bucket}/{namespace}/run/eval/plots/accuracy.png" in result.stdout
    downloaded = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
    assert downloaded == ["plots/accuracy.png", "report.md", "results.json", "summary.json"]
    assert (saved / "report.md").read_text() == REPORT_MD
    assert minio.secret_key not in result.output


def test_report_of_a_stage_still_running_says_so(cli, kube, medsft_crds, namespace):
    _create(kube, namespace, _example("evaljob.yaml"), "evaljobs", {"phase": "Running"})
    result = cli.invoke(app, ["report", "vqa-sft-eval", "-k", "eval", *_kube_args(kube, namespace)])
    assert result.exit_code == 1
    assert "no report yet (phase Running)" in result.stderr


def test_report_from_a_local_folder_uri(cli, tmp_path):
    folder = tmp_path / "curation" / "report"
    (folder / "plots").mkdir(parents=True)
    (folder / "report.json").write_text('{"kept": 3}')
    (folder / "report.md").write_text("# Curation report\n\nkept 3 samples\n")
    result = cli.invoke(app, ["report", "--uri", f"file://{folder}/report.json"])
    assert result.exit_code == 0, result.output
    assert "Curation report" in result.stdout and "kept 3 samples" in result.stdout


def test_report_without_markdown_prints_the_json(cli, tmp_path):
    (tmp_path / "results.json").write_text('{"meanAccuracy": 0.25}')
    result = cli.invoke(app, ["report", "--uri", f"file://{tmp_path}/results.json"])
    assert result.exit_code == 0, result.output
    assert '"meanAccuracy": 0.25' in result.stdout


def test_report_of_a_missing_object_fails_cleanly(cli, tmp_path):
    result = cli.invoke(app, ["report", "--uri", f"file://{tmp_path}/results.json"])
    assert result.exit_code == 1
    assert "results.json" in result.stderr and "Traceback" not in result.output


def test_status_without_any_cluster_configured_says_how_to_configure_one(
    cli, tmp_path, monkeypatch
):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none")
    )
    result = cli.invoke(app, ["status"])
    assert result.exit_code == 1
    assert "no cluster configured" in result.stderr and "Traceback" not in result.output
