"""`medsft validate`: every example passes; each broken manifest fails with a message that
names the field, offline and (with --server) against the real apiserver."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medsft_operator.api.k8s import quantity_value as parse_quantity
from medsft_operator.cli import app, field_path, validate_documents
from medsft_operator.validate_children import image_reference, resources_problems

REPO = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO / "examples"

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
SFT_JOB = yaml.safe_load((EXAMPLES_DIR / "sftjob.yaml").read_text())
RUN = yaml.safe_load((EXAMPLES_DIR / "quickstart.yaml").read_text())
EVAL_JOB = yaml.safe_load((EXAMPLES_DIR / "evaljob.yaml").read_text())


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
    # What Kubernetes refuses in the stage pods (issue 24): named by the field the user wrote.
    (
        "CPU request above its limit",
        _edit(SFT_JOB, "spec.resources", {"requests": {"cpu": "8"}, "limits": {"cpu": "4000m"}}),
        "spec.resources",
        "requests.cpu '8' is above limits.cpu '4000m'",
    ),
    (
        "extended resource overcommitted",
        _edit(SFT_JOB, "spec.resources", {"requests": {"example.com/fpga": 1}}),
        "spec.resources.requests.example.com/fpga",
        "cannot be overcommitted",
    ),
    (
        "GPU limit other than gpusPerNode",
        _edit(SFT_JOB, "spec.resources", {"limits": {"nvidia.com/gpu": 4}}),
        "spec",
        "resources.limits.nvidia.com/gpu must equal gpusPerNode",
    ),
    (
        "eval GPU request other than gpus",
        _edit(EVAL_JOB, "spec.resources", {"requests": {"nvidia.com/gpu": 2}}),
        "spec",
        "resources.requests.nvidia.com/gpu must equal gpus",
    ),
    (
        "toleration Exists with a value",
        _edit(
            SFT_JOB,
            "spec.scheduling.tolerations",
            [{"key": "gpu", "operator": "Exists", "value": "x"}],
        ),
        "spec.scheduling.tolerations[0]",
        "value must be empty when operator is Exists",
    ),
    (
        "tolerationSeconds with NoSchedule",
        _edit(
            SFT_JOB,
            "spec.scheduling.tolerations",
            [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 5}],
        ),
        "spec.scheduling.tolerations[0]",
        "effect must be NoExecute",
    ),
    (
        "nodeSelector key with a space",
        _edit(SFT_JOB, "spec.scheduling.nodeSelector", {"gpu pool": "a"}),
        "spec.scheduling.nodeSelector.gpu pool",
        "Kubernetes would refuse PyTorchJob/",
    ),
    (
        "upper-case image repository",
        _edit(SFT_JOB, "spec.image", "registry.example.org/ML/trainer:1"),
        "spec.image",
        "container image reference",
    ),
    (
        "run image with a space",
        _edit(RUN, "spec.image", "trainer :1"),
        "spec.image",
        "container image reference",
    ),
    (
        "run stage's extended resource overcommitted",
        _edit(RUN, "spec.sft.spec.resources", {"requests": {"example.com/fpga": 1}}),
        "spec.sft.spec.resources.requests.example.com/fpga",
        "Kubernetes would refuse PyTorchJob/quickstart-sft-g1-a0",
    ),
    (
        "run's eval nodeSelector key with two slashes",
        _edit(RUN, "spec.eval.spec.scheduling", {"nodeSelector": {"a/b/c": "x"}}),
        "spec.eval.spec.scheduling.nodeSelector.a/b/c",
        "Kubernetes would refuse Job/",
    ),
    (
        "model on the hub",
        _edit(SFT_JOB, "spec.model.uri", "hf://Qwen/Qwen2.5-VL-7B-Instruct"),
        "spec.model.uri",
        "model location",
    ),
    (
        "baseline over https",
        _edit(EVAL_JOB, "spec.baseline.uri", "https://example.org/m"),
        "spec.baseline.uri",
        "model location",
    ),
    (
        "label value with a space",
        _edit(SFT_JOB, "metadata.labels", {"team": "a b"}),
        "metadata.labels.team",
        "value 'a b'",
    ),
    (
        "annotation key with a space",
        _edit(SFT_JOB, "metadata.annotations", {"my note": "x"}),
        "metadata.annotations.my note",
        "key 'my note'",
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


def test_a_fractional_byte_value_is_a_warning():
    """The apiserver admits `memory: 500m` in a Job with a warning only the operator's log
    shows (tests/api/test_property_specs.py sees it); validate says it to the author."""
    doc = _edit(SFT_JOB, "spec.resources", {"requests": {"memory": "500m", "cpu": "500m"}})
    (problem,) = validate_documents([doc])
    assert problem.severity == "warning" and problem.path == "spec.resources.requests.memory"
    assert "fractional byte value '500m'" in problem.message


def test_unreadable_input_fails_cleanly(cli, tmp_path):
    file = tmp_path / "broken.yaml"
    file.write_text("apiVersion: [unclosed\n")
    result = cli.invoke(app, ["validate", str(file), str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1
    assert "broken.yaml" in result.stderr and "absent.yaml" in result.stderr
    assert "Traceback" not in result.output


NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml-training"}}


def test_other_kinds_in_a_file_are_passed_through_with_a_note(cli, tmp_path):
    """A GitOps file with a Namespace (and a Kueue queue) before the run: kubectl applies it
    whole, so validate passes the other kinds through and checks the run."""
    queue = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "LocalQueue",
        "metadata": {"name": "gpu", "namespace": "ml-training"},
        "spec": {"clusterQueue": "gpu"},
    }
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump_all([NAMESPACE, queue, RUN]))
    result = cli.invoke(app, ["validate", "--strict", str(file)])
    assert result.exit_code == 0, result.output
    assert "Namespace/ml-training, LocalQueue/gpu, MedSFTRun/quickstart" in result.stdout
    assert "note: Namespace/ml-training: not a medsft.io resource" in result.stderr
    assert "error" not in result.stderr
    # `medsft render` of the same file: the run's children, nothing for the other kinds.
    rendered = cli.invoke(app, ["render", str(file)])
    assert rendered.exit_code == 0, rendered.output
    assert "kind: PyTorchJob" in rendered.stdout and "kind: Namespace" not in rendered.stdout

    # ...and the run in it is still checked.
    file.write_text(yaml.safe_dump_all([NAMESPACE, _edit(RUN, "spec.retraining", {"policy": "x"})]))
    result = cli.invoke(app, ["validate", str(file)])
    assert result.exit_code == 1
    assert "MedSFTRun/quickstart: spec.retraining.policy" in result.stderr


def test_a_document_without_kind_is_still_an_error():
    (problem,) = validate_documents([{"metadata": {"name": "x"}}])
    assert problem.severity == "error" and "apiVersion and kind are required" in problem.message


def test_a_gitops_folder_is_validated_file_by_file(cli, tmp_path):
    folder = tmp_path / "runs"
    (folder / "data").mkdir(parents=True)
    (folder / "00-namespace.yaml").write_text(yaml.safe_dump(NAMESPACE))
    (folder / "quickstart.yml").write_text(yaml.safe_dump(RUN))
    (folder / "sft.json").write_text(json.dumps(SFT_JOB))
    (folder / "README.md").write_text("# not a manifest\n")
    # As `kubectl apply -f DIR` and an Argo CD directory source: not its subfolders.
    (folder / "data" / "rows.json").write_text("[1, 2]")
    result = cli.invoke(app, ["validate", str(folder)])
    assert result.exit_code == 0, result.output
    for name in ("00-namespace.yaml", "quickstart.yml", "sft.json"):
        assert name in result.stdout
    assert "README" not in result.output and "rows.json" not in result.output

    (folder / "broken.yaml").write_text(yaml.safe_dump(_edit(SFT_JOB, "spec.nodes", 0)))
    result = cli.invoke(app, ["validate", str(folder)])
    assert result.exit_code == 1
    assert "broken.yaml: error: SFTJob/vqa-sft: spec.nodes" in result.stderr
    assert "✓" in result.stdout  # the good files are still reported good

    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli.invoke(app, ["validate", str(empty)])
    assert result.exit_code == 1 and "no *.yaml, *.yml or *.json files" in result.stderr


@pytest.mark.parametrize(
    ("image", "accepted"),
    [
        ("trainer", True),
        ("registry.example.org:5000/ml/trainer:0.1.0", True),
        ("Registry.example.org/ml/trainer", True),  # a host may be upper-case, a path not
        ("localhost/trainer@sha256:" + "0" * 64, True),
        ("registry.example.org/ML/trainer", False),
        ("trainer:", False),
        ("trainer:-1", False),
        (" trainer", False),
        ("trainer@sha256:abc", False),
        ("a" * 256, False),
    ],
)
def test_image_references_as_the_kubelet_parses_them(image, accepted):
    assert (image_reference(image) is None) == accepted


def test_quantities_compare_as_kubernetes_compares_them():
    assert parse_quantity("500m") == parse_quantity("0.5") == parse_quantity("5e-1")
    assert parse_quantity("1Gi") == 1024**3 and parse_quantity("1G") == 10**9
    assert parse_quantity("lots") is None and parse_quantity(True) is None
    found = resources_problems(
        {"requests": {"memory": "1Gi", "cpu": "1"}, "limits": {"memory": "1G", "cpu": "1000m"}},
        "r",
    )
    assert found == [("r.requests.memory", "must be less than or equal to limits.memory")]


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
