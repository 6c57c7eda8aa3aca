"""The Helm chart rendered by the real helm binary: lint, values schema, what it renders."""

from __future__ import annotations

import json

import pytest
import yaml
from chart.charting import (
    CHART,
    KUBE_VERSION,
    REPO,
    SERVICE_MONITOR_API,
    VALUE_SETS,
    helm,
    of_kind,
    pod_specs,
    render,
    rule_set,
    template,
    value_set,
    values_file,
)

from medsft_operator import names, rbac
from medsft_operator.cli import LEASE_NAME_PLACEHOLDER, rbac_document
from medsft_operator.config import OperatorConfig
from medsft_operator.render import children_of

MINIO = {"minio": {"enabled": True}}


def _env(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


# ----------------------------------------------------------------------------- in sync


def test_chart_crds_are_the_generated_crds():
    """charts/medsft/crds is a copy of crds/ (`medsft crds --write crds/ --write charts/medsft/crds/`)."""
    chart = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    generated = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    assert chart == generated, "run: medsft crds --write crds/ --write charts/medsft/crds/"


def test_chart_rbac_file_is_generated_from_rbac_py():
    expected = rbac_document(
        rbac.cluster_rules(),
        rbac.namespaced_rules(),
        rbac.leader_election_rules(LEASE_NAME_PLACEHOLDER),
    )
    actual = (CHART / "files" / "rbac.yaml").read_text()
    assert actual == expected, "run: medsft rbac --write charts/medsft/files/rbac.yaml"


# ----------------------------------------------------------------------------- lint


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_is_clean(helm_bin, helm_home, tmp_path, name):
    values = values_file(value_set(name, "medsft"), tmp_path)
    result = helm(
        helm_bin, "lint", str(CHART), "--strict", "-f", str(values), home=helm_home, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    # lint reports a template's `fail` as [INFO] only: none of these value sets may hit one
    # (the ServiceMonitor check needs the cluster's API list, which lint does not have).
    failures = [line for line in result.stdout.splitlines() if "Fail:" in line]
    assert failures == [] or (name == "production" and all("ServiceMonitor" in f for f in failures))


# ----------------------------------------------------------------------------- values schema

# (value that is wrong, words the error must contain: the path of the value and why)
BAD_VALUES = [
    ({"replicaCount": -1}, "/replicaCount", "minimum"),
    ({"replicaCount": "two"}, "/replicaCount", "want integer"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "must be one of"),
    ({"image": {"tag": 1.5}}, "/image/tag", "want string"),
    ({"image": {"repository": ""}}, "/image/repository", "minLength"),
    ({"minio": {"enabled": True, "enable": True}}, "/minio", "'enable' not allowed"),
    ({"storag": {}}, "additional properties 'storag' not allowed", ""),
    ({"runAsUser": 0}, "/runAsUser", "minimum"),
    ({"storage": {"endpoint": "https://s3.example:443"}}, "/storage/endpoint", "does not match"),
    ({"storage": {"bucket": "My_Bucket"}}, "/storage/bucket", "does not match"),
    ({"storage": {"prefix": "/runs/"}}, "/storage/prefix", "does not match"),
    (
        {"operator": {"watchNamespaces": ["Team_A"]}},
        "/operator/watchNamespaces/0",
        "does not match",
    ),
    ({"operator": {"logLevel": "verbose"}}, "/operator/logLevel", "must be one of"),
    ({"operator": {"httpPort": 80}}, "/operator/httpPort", "minimum"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory", "does not match"),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval", "does not match"),
    ({"minio": {"rootPassword": "short"}}, "/minio/rootPassword", "does not match"),
    ({"trainer": {"image": {"tag": "bad tag!"}}}, "/trainer/image/tag", "does not match"),
]


@pytest.mark.parametrize(
    ("bad", "where", "why"), BAD_VALUES, ids=[json.dumps(b[0]) for b in BAD_VALUES]
)
def test_values_schema_rejects_bad_values_naming_them(helm_bin, helm_home, bad, where, why):
    values = {**MINIO, **bad} if "minio" not in bad else bad
    result = template(helm_bin, helm_home, values, check=False)
    assert result.returncode != 0, f"accepted {bad}"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert where in result.stderr and why in result.stderr, result.stderr


# (values that cannot work together, the sentence helm must fail with)
BAD_COMBINATIONS = [
    ({}, "no default storage: set storage.endpoint"),
    (
        {"minio": {"enabled": True}, "storage": {"endpoint": "s3.example:443"}},
        "storage.endpoint and minio.enabled are both set",
    ),
    (
        {"minio": {"enabled": True}, "storage": {"credentialsSecret": {"name": "mine"}}},
        "minio.enabled creates its own credentials Secret",
    ),
    (
        {**MINIO, "serviceMonitor": {"enabled": True}},
        "serviceMonitor.enabled needs the Prometheus Operator's ServiceMonitor CRD",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"), BAD_COMBINATIONS, ids=[m[:40] for _, m in BAD_COMBINATIONS]
)
def test_values_that_cannot_work_together_fail_with_a_sentence(
    helm_bin, helm_home, values, message
):
    result = template(helm_bin, helm_home, values, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# ----------------------------------------------------------------------------- what renders


def test_operator_deployment_runs_restricted(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, MINIO)
    [deployment] = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "medsft"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert probe["port"] == "http" and container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    ]
    assert container["args"] == ["operator"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_pod_the_chart_starts_is_restricted(helm_bin, helm_home, name):
    extra = ("--api-versions", SERVICE_MONITOR_API)
    pods = pod_specs(render(helm_bin, helm_home, value_set(name, "medsft"), extra=extra))
    assert pods
    for where, pod in pods.items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert container["resources"]["limits"]["memory"], where


def test_operator_settings_parse_as_the_operator_reads_them(helm_bin, helm_home):
    """The env the chart sets is exactly what OperatorConfig.from_env understands."""
    docs = render(
        helm_bin,
        helm_home,
        value_set("production", "ops"),
        namespace="ops",
        extra=("--api-versions", SERVICE_MONITOR_API),
    )
    [deployment] = of_kind(docs, "Deployment")
    env = _env(deployment) | {"POD_NAMESPACE": "ops", "POD_NAME": "medsft-abc"}
    config = OperatorConfig.from_env(env)
    assert config.namespaces == []
    assert config.http_port == 8080
    assert config.default_image == "ghcr.io/medsft/medsft-trainer:0.1.0"
    assert config.image_pull_policy == "IfNotPresent"
    assert config.job_service_account == "medsft-job"
    assert config.lease_name == "medsft" and config.lease_namespace == "ops"
    assert (config.log_level, config.log_format, config.poll_interval_s) == ("DEBUG", "plain", 5.0)
    storage = config.default_storage
    assert storage is not None
    assert (storage.endpoint, storage.bucket, storage.prefix, storage.region, storage.secure) == (
        "s3.storage.example:443",
        "team-a-models",
        "medsft/runs",
        "eu-west-1",
        True,
    )
    assert (
        storage.credentials_secret is not None
        and storage.credentials_secret.name == "s3-credentials"
    )
    # Unknown MEDSFT_ variables would be ignored silently: every one the chart sets must be read.
    read = {f"MEDSFT_{f.upper()}" for f in OperatorConfig.model_fields} | {
        f"MEDSFT_STORAGE_{n}"
        for n in ("ENDPOINT", "BUCKET", "PREFIX", "SECURE", "REGION", "SECRET")
    }
    assert {k for k in env if k.startswith("MEDSFT_")} <= read


def _stage_images(children: list[dict]) -> dict[str, set[str]]:
    """Stage kind (the owner-kind label) -> the images of its Jobs' and PyTorchJobs' pods."""
    images: dict[str, set[str]] = {}
    for child in children:
        if child["kind"] == "Job":
            templates = [child["spec"]["template"]]
        elif child["kind"] == "PyTorchJob":
            templates = [r["template"] for r in child["spec"]["pytorchReplicaSpecs"].values()]
        else:
            continue
        stage = child["metadata"]["labels"][names.OWNER_KIND]
        for pod in templates:
            images.setdefault(stage, set()).update(c["image"] for c in pod["spec"]["containers"])
    return images


def test_flagship_example_runs_every_stage_on_the_image_the_chart_names(helm_bin, helm_home):
    """The chart's defaults, read by the operator as it reads them, render
    examples/medsft-run.yaml with its vLLM evaluation on the eval image (the image with vLLM,
    trainer-image/Dockerfile.eval) and curation and SFT on the trainer image: the user sets
    nothing for eval to find vLLM."""
    docs = render(helm_bin, helm_home, MINIO, namespace="ml", release="medsft")
    config = OperatorConfig.from_env(_env(of_kind(docs, "Deployment")[0]))
    run = yaml.safe_load((REPO / "examples" / "medsft-run.yaml").read_text())
    assert run["spec"]["eval"]["spec"]["generation"]["backend"] == "vllm"
    images = _stage_images(children_of(run, config=config))
    trainer, evaluation = "ghcr.io/medsft/medsft-trainer:0.1.0", "ghcr.io/medsft/medsft-eval:0.1.0"
    assert images == {"CurationJob": {trainer}, "SFTJob": {trainer}, "EvalJob": {evaluation}}

    # The transformers backend needs no vLLM: it stays on the trainer image.
    run["spec"]["eval"]["spec"]["generation"]["backend"] = "transformers"
    assert _stage_images(children_of(run, config=config))["EvalJob"] == {trainer}
    # An image the eval stage names wins over both.
    run["spec"]["eval"]["spec"]["generation"]["backend"] = "vllm"
    run["spec"]["eval"]["spec"]["image"] = "registry.example/team/eval:7"
    assert _stage_images(children_of(run, config=config))["EvalJob"] == {
        "registry.example/team/eval:7"
    }


def test_in_chart_minio_is_the_default_storage(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, MINIO, namespace="ml", release="demo")
    config = OperatorConfig.from_env(_env(of_kind(docs, "Deployment")[0]))
    storage = config.default_storage
    assert storage is not None
    assert storage.endpoint == "demo-medsft-minio.ml.svc:9000" and storage.secure is False
    secrets = of_kind(docs, "Secret")
    assert [s["metadata"]["name"] for s in secrets] == ["demo-medsft-storage"]
    assert storage.credentials_secret is not None
    assert storage.credentials_secret.name == "demo-medsft-storage"
    assert set(secrets[0]["data"]) == {"accessKey", "secretKey"}
    services = {s["metadata"]["name"] for s in of_kind(docs, "Service")}
    assert "demo-medsft-minio" in services
    [job] = of_kind(docs, "Job")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == ["mc", "mb", "--ignore-existing", "medsft/medsft"]
    # Credentials reach mc through the environment, never through its arguments.
    assert not any("$(MINIO_ROOT_PASSWORD)" in part for part in command)


def test_job_pods_get_a_service_account_without_token_or_rights(helm_bin, helm_home):
    values = value_set("watch-two-namespaces", "x")
    docs = render(helm_bin, helm_home, values, namespace="ops")
    accounts = {
        (a["metadata"]["namespace"], a["metadata"]["name"]): a
        for a in of_kind(docs, "ServiceAccount")
    }
    job_accounts = {k: a for k, a in accounts.items() if k[1] == "medsft-job"}
    assert set(job_accounts) == {
        ("ops", "medsft-job"),
        ("x-team-a", "medsft-job"),
        ("x-team-b", "medsft-job"),
        ("x-team-c", "medsft-job"),
    }
    assert all(a["automountServiceAccountToken"] is False for a in job_accounts.values())
    bound = {
        s["name"]
        for b in of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding")
        for s in b["subjects"]
    }
    assert bound == {"medsft"}


@pytest.mark.parametrize(
    "namespaces", [[], ["team-a", "team-b"]], ids=["all-namespaces", "two-namespaces"]
)
def test_rendered_rbac_is_exactly_rbac_py(helm_bin, helm_home, namespaces):
    values = {**MINIO, "operator": {"watchNamespaces": namespaces}}
    docs = render(helm_bin, helm_home, values, namespace="ops", release="ml")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(docs, "Role")}
    # Leader election: a Role in the operator's namespace, for the Lease the operator uses.
    [deployment] = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == "ml-medsft"]
    lease = _env(deployment)["MEDSFT_LEASE_NAME"]
    leader = roles.pop(("ops", "ml-medsft-leader-election"))
    assert rule_set(leader["rules"]) == rule_set(rbac.leader_election_rules(lease))
    # The medsft kinds and their children: cluster-wide, or a Role per watched namespace.
    expected_cluster = rule_set(rbac.cluster_rules())
    if namespaces:
        assert set(roles) == {(ns, "ml-medsft-operator") for ns in namespaces}
        for role in roles.values():
            assert rule_set(role["rules"]) == rule_set(rbac.namespaced_rules())
    else:
        assert roles == {}
        expected_cluster |= rule_set(rbac.namespaced_rules())
    cluster = of_kind(docs, "ClusterRole")
    assert rule_set([rule for role in cluster for rule in role["rules"]]) == expected_cluster
    # Every role is bound to the operator's ServiceAccount, and only to it.
    bindings = of_kind(docs, "RoleBinding") + of_kind(docs, "ClusterRoleBinding")
    assert len(bindings) == len(cluster) + len(namespaces) + 1
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "ml-medsft", "namespace": "ops"}
        ]


def test_without_rbac_and_accounts_the_chart_creates_none(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, value_set("bring-your-own-accounts", "x"))
    kinds = {d["kind"] for d in docs}
    assert not kinds & {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    pod = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-medsft"
    assert _env(of_kind(docs, "Deployment")[0])["MEDSFT_JOB_SERVICE_ACCOUNT"] == "training-pods"


def test_image_digest_and_default_tag(helm_bin, helm_home):
    docs = render(helm_bin, helm_home, value_set("external-s3-digest-images", "x"))
    image = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/medsft/medsft-operator@sha256:" + "a" * 64
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    docs = render(helm_bin, helm_home, MINIO)
    image = of_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/medsft/medsft-operator:{chart['appVersion']}"


def test_service_monitor_scrapes_the_operator_service(helm_bin, helm_home):
    docs = render(
        helm_bin,
        helm_home,
        value_set("production", "x"),
        extra=("--api-versions", SERVICE_MONITOR_API),
    )
    [monitor] = of_kind(docs, "ServiceMonitor")
    [service] = of_kind(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert not of_kind(render(helm_bin, helm_home, MINIO), "ServiceMonitor")


# ----------------------------------------------------------------------------- packaging


def test_packaged_chart_renders_like_the_source(helm_bin, helm_home, tmp_path):
    """`helm package` keeps everything the templates read (files/rbac.yaml, crds/)."""
    helm(helm_bin, "package", str(CHART), "--destination", str(tmp_path), home=helm_home)
    [archive] = tmp_path.glob("medsft-*.tgz")
    values = values_file(MINIO, tmp_path)
    packaged = helm(
        helm_bin, "template", "medsft", str(archive), "--include-crds",
        "--kube-version", KUBE_VERSION, "-f", str(values), home=helm_home,
    ).stdout  # fmt: skip
    source = helm(
        helm_bin, "template", "medsft", str(CHART), "--include-crds",
        "--kube-version", KUBE_VERSION, "-f", str(values), home=helm_home,
    ).stdout  # fmt: skip
    assert _without_random(packaged) == _without_random(source)
    assert "kind: CustomResourceDefinition" in packaged and "kind: ClusterRole" in packaged


def _without_random(text: str) -> list[dict]:
    """Rendered documents minus the generated MinIO credentials (random per render)."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    for doc in docs:
        if doc["kind"] == "Secret":
            doc["data"] = sorted(doc["data"])
    return docs


def test_chart_app_version_is_the_package_version():
    import tomllib

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
