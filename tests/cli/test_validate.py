"""`medsft validate`: every example passes; each broken manifest fails with a message that
names the field, offline and (with --server) against the real apiserver."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medsft_operator.cli import app, field_path, validate_documents

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "examples"

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
SFT_JOB = yaml.safe_load((EXAMPLES_DIR / "sftjob.yaml").read_text())
RUN = yaml.safe_load((EXAMPLES_DIR / "quickstart.yaml").read_text())


def test_there_are_examples_to_validate():
    assert {p.name for p in EXAMPLES} >= {"quickstart.yaml", "medsft-run.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(cli, path):
    result = cli.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "✓" in result.stdout and path.name in result.stdout


def _edit(doc: dict, dotted: str, value: object) -> dict:
    """A copy of ``doc`` with ``a.b.c`` set to ``value`` (``...`` deletes the key)."""
    out = copy.deepcopy(doc)
    *parents, last = dotted.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


# (what is broken, the manifest, the field path the message must name, words it must contain)
BROKEN = [
    (
        "negative learning rate",
        _edit(SFT_JOB, "spec.training.learningRate", -1),
        "spec.training.learningRate",
        "greater than 0",
    ),
    (
        "misspelt field",
        _edit(SFT_JOB, "spec.training.schedular", "cosine"),
        "spec.training.schedular",
        "unknown field",
    ),
    (
        "unknown ZeRO stage",
        _edit(SFT_JOB, "spec.deepspeed.zeroStage", 4),
        "spec.deepspeed.zeroStage",
        "got 4",
    ),
    (
        "quantity that is not one",
        _edit(SFT_JOB, "spec.resources.limits", {"cpu": "lots"}),
        "spec.resources.limits.cpu",
        "quantity",
    ),
    (
        "batch not divisible by world size",
        _edit(SFT_JOB, "spec.training.globalBatchSize", 100),
        "spec",
        "divisible",
    ),
    ("wrong type", _edit(SFT_JOB, "spec.nodes", "two"), "spec.nodes", "integer"),
    ("missing required model", _edit(SFT_JOB, "spec.model", ...), "spec.model", "required"),
    (
        "standalone SFTJob without dataset",
        _edit(SFT_JOB, "spec.dataset", ...),
        "spec",
        "dataset is required",
    ),
    (
        "bad storage endpoint",
        _edit(SFT_JOB, "spec.storage.endpoint", "http://minio:9000"),
        "spec.storage.endpoint",
        "host[:port] without a scheme",
    ),
    ("upper-case name", _edit(SFT_JOB, "metadata.name", "VQA_SFT"), "metadata.name", "lower-case"),
    (
        "name too long for children",
        _edit(SFT_JOB, "metadata.name", "x" * 57),
        "metadata.name",
        "at most 56",
    ),
    ("no name", _edit(SFT_JOB, "metadata.name", ...), "metadata.name", "required"),
    ("wrong apiVersion", _edit(SFT_JOB, "apiVersion", "medsft.io/v1"), "apiVersion", "v1alpha1"),
    ("unknown kind", _edit(SFT_JOB, "kind", "TrainJob"), "kind", "unknown kind"),
    (
        "run stage with neither ref nor spec",
        _edit(RUN, "spec.sft", {}),
        "spec.sft",
        "exactly one of ref or spec",
    ),
    (
        "run without a dataset for SFT",
        _edit(RUN, "spec.curation", ...),
        "spec",
        "exactly one dataset",
    ),
    (
        "unknown retraining policy",
        _edit(RUN, "spec.retraining", {"policy": "Always"}),
        "spec.retraining.policy",
        "OnSpecChange",
    ),
    (
        "benchmark name with spaces",
        _edit(RUN, "spec.eval.spec.benchmarks", [{"name": "Pub Med", "uri": "x", "split": "test"}]),
        "spec.eval.spec.benchmarks[0].name",
        "identifier",
    ),
]


@pytest.mark.parametrize(
    ("doc", "path", "words"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_broken_manifest_is_rejected_naming_the_field(cli, tmp_path, doc, path, words):
    file = tmp_path / "broken.yaml"
    file.write_text(yaml.safe_dump(doc))
    result = cli.invoke(app, ["validate", str(file)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    named = [line for line in errors if f": {path}: " in line]
    assert named, f"no error names {path}:\n{result.stderr}"
    assert any(words in line for line in named), result.stderr


def test_problems_of_every_document_are_reported_and_good_ones_are_not(tmp_path):
    good = yaml.safe_load((EXAMPLES_DIR / "evaljob.yaml").read_text())
    bad = _edit(SFT_JOB, "spec.nodes", 0)
    worse = _edit(_edit(good, "spec.gpus", -1), "metadata.name", "other")
    problems = validate_documents([good, bad, worse])
    documents = {p.document for p in problems if p.severity == "error"}
    assert documents == {f"SFTJob/{SFT_JOB['metadata']['name']}", "EvalJob/other"}
    assert {p.path for p in problems if p.severity == "error"} == {"spec.nodes", "spec.gpus"}


def test_the_same_name_twice_in_one_file_is_an_error():
    problems = validate_documents([SFT_JOB, SFT_JOB])
    assert [(p.path, p.message) for p in problems] == [
        ("metadata.name", "defined twice in this file")
    ]


def test_endpoint_without_credentials_is_a_warning_and_strict_makes_it_an_error(cli, tmp_path):
    doc = _edit(SFT_JOB, "spec.storage", {"endpoint": "minio:9000", "secure": False})
    file = tmp_path / "anon.yaml"
    file.write_text(yaml.safe_dump(doc))
    relaxed = cli.invoke(app, ["validate", str(file)])
    assert relaxed.exit_code == 0
    assert "warning:" in relaxed.stderr and "spec.storage.credentialsSecret" in relaxed.stderr
    strict = cli.invoke(app, ["validate", "--strict", str(file)])
    assert strict.exit_code == 1


def test_unreadable_input_fails_cleanly(cli, tmp_path):
    file = tmp_path / "broken.yaml"
    file.write_text("apiVersion: [unclosed\n")
    result = cli.invoke(app, ["validate", str(file), str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1
    assert "broken.yaml" in result.stderr and "absent.yaml" in result.stderr
    assert "Traceback" not in result.output


def test_field_path_skips_union_members_and_names_missing_fields():
    doc = {"spec": {"resources": {"limits": {"cpu": "lots"}}, "items": [{"a": 1}]}}
    assert field_path(doc, ("spec", "resources", "limits", "cpu", "constrained-str")) == (
        "spec.resources.limits.cpu"
    )
    assert field_path(doc, ("spec", "items", 0, "b")) == "spec.items[0].b"
    assert field_path(doc, ("spec", "function-after[check(), Model]", "model")) == "spec.model"


def test_console_script_is_installed_and_validates_from_stdin():
    script = Path(sys.executable).parent / "medsft"
    text = (EXAMPLES_DIR / "quickstart.yaml").read_text()
    result = subprocess.run(
        [str(script), "validate", "-"], input=text, capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert "MedSFTRun/quickstart" in result.stdout


# --------------------------------------------------------------------- against the apiserver


def test_server_dry_run_accepts_examples_and_rejects_what_the_apiserver_rejects(
    cli, kube, medsft_crds, namespace, tmp_path
):
    good = EXAMPLES_DIR / "evaljob.yaml"
    doc = yaml.safe_load(good.read_text())
    doc["metadata"]["namespace"] = namespace
    ok_file = tmp_path / "ok.yaml"
    ok_file.write_text(yaml.safe_dump(doc))
    base = ["--kubeconfig", str(kube.kubeconfig), "-n", namespace, "--server"]
    accepted = cli.invoke(app, ["validate", *base, str(ok_file)])
    assert accepted.exit_code == 0, accepted.output
    # Dry run: nothing was created.
    listed = kube.kubectl("get", "evaljobs", "-n", namespace, "-o", "name")
    assert listed.stdout.strip() == ""

    # The apiserver's own answer for a name only it checks here: a namespace that is absent.
    doc["metadata"]["namespace"] = f"{namespace}-absent"
    missing_ns = tmp_path / "missing-ns.yaml"
    missing_ns.write_text(yaml.safe_dump(doc))
    rejected = cli.invoke(app, ["validate", *base, str(missing_ns)])
    assert rejected.exit_code == 1
    assert "not found" in rejected.stderr


# --------------------------------------------------------------------- run and operator flags


def test_run_without_local_points_to_kubectl(cli):
    result = cli.invoke(app, ["run", str(EXAMPLES_DIR / "quickstart.yaml")])
    assert result.exit_code == 2
    assert "kubectl apply -f" in result.stderr and "--local" in result.stderr


def test_run_local_refuses_an_invalid_manifest_before_running_anything(cli, tmp_path):
    run = _edit(RUN, "spec.sft", {})
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(run))
    result = cli.invoke(app, ["run", "--local", "--workdir", str(tmp_path / "work"), str(file)])
    assert result.exit_code == 1
    assert "spec.sft: exactly one of ref or spec" in result.stderr
    assert "nothing was run" in result.stderr
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--namespace", "a", "--all-namespaces"], "not both"),
        (["--log-format", "xml"], "json or plain"),
        (["--log-level", "loud"], "debug, info"),
    ],
)
def test_operator_flags_are_checked_before_starting(cli, args, words):
    result = cli.invoke(app, ["operator", *args])
    assert result.exit_code == 2
    assert words in result.output
