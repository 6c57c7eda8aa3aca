"""The images as built here (hack/build-images.sh: buildah runs trainer-image/Dockerfile*
from local Debian bases): archives that containerd imports under their names, with the user,
entry points and settings the Dockerfiles declare, and a layer split that keeps the training
stack cached when only the project changes. Running them in pods is tests/e2e and
tests/chart/test_chart_node.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.images import BUILD_SCRIPT, builder_missing, operator_image, trainer_image
from harness.testbin import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),  # a cold trainer build; `make testbin` has usually done it
    pytest.mark.skipif(builder_missing() is not None, reason=str(builder_missing())),
]

GB = 1 << 30
MB = 1 << 20


@dataclass
class Archive:
    ref_names: list[str]
    config: dict
    layers: list[dict]  # the manifest's layer descriptors, base first


def read_archive(path: Path) -> Archive:
    with tarfile.open(path) as tar:

        def blob(digest: str) -> dict:
            algo, hexdigest = digest.split(":")
            member = tar.extractfile(f"blobs/{algo}/{hexdigest}")
            assert member is not None
            return json.load(member)

        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.load(index_file)
        names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name", "") for m in index["manifests"]]  # fmt: skip
        manifest = blob(index["manifests"][0]["digest"])
        return Archive(names, blob(manifest["config"]["digest"]), manifest["layers"])


def test_trainer_image_is_named_and_runs_as_the_stage_user():
    image = trainer_image()
    archive = read_archive(image.archive)
    assert archive.ref_names == [image.ref]  # what `ctr images import` names it
    config = archive.config["config"]
    assert config["User"] == "1000:1000"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].startswith("/tmp/")
    assert config["Cmd"] == ["medsft-train", "--help"]
    assert config["Labels"]["org.opencontainers.image.title"] == "medsft-trainer"


def test_trainer_image_keeps_the_training_stack_apart_from_the_project():
    """The venv of torch/DeepSpeed/transformers is one big layer; the project on top of it
    is small, so a source edit re-ships megabytes, not gigabytes."""
    layers = read_archive(trainer_image().archive).layers
    sizes = [layer["size"] for layer in layers]
    heavy = max(range(len(sizes)), key=sizes.__getitem__)
    assert sizes[heavy] > 1 * GB  # compressed
    after = sizes[heavy + 1 :]
    assert after and sum(after) < 50 * MB, sizes


def test_operator_image_is_named_and_runs_as_the_chart_user():
    image = operator_image()
    archive = read_archive(image.archive)
    assert archive.ref_names == [image.ref]
    config = archive.config["config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["medsft"] and config["Cmd"] == ["operator"]
    assert dict(item.split("=", 1) for item in config["Env"])["HOME"] == "/tmp"
    assert sum(layer["size"] for layer in archive.layers) < 1 * GB  # no torch


def test_a_source_edit_rebuilds_only_the_project_layers(tmp_path):
    """A copy of the build inputs with one edited module builds a new image (a new ref)
    whose layers up to and including the training stack are the same as the current one's
    (same uncompressed digests): buildah's layer cache reused them, and containerd finds
    them unpacked already."""
    before = read_archive(trainer_image().archive)
    copy = tmp_path / "repo"
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("operator", "pipelines", "trainer-image", "hack"):
        shutil.copytree(REPO_ROOT / folder, copy / folder, ignore=ignore)
    edited = copy / "pipelines" / "medsft_pipelines" / "__init__.py"
    edited.write_text(edited.read_text() + "\n# an edit that changes the image\n")

    result = subprocess.run(
        ["bash", str(copy / BUILD_SCRIPT.relative_to(REPO_ROOT)), "trainer"],
        capture_output=True, text=True, timeout=1800, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    ref, path = result.stdout.split()
    assert ref != trainer_image().ref
    after = read_archive(Path(path))

    # diff_ids: digests of the uncompressed layers, what containerd unpacks by.
    layers_before = before.config["rootfs"]["diff_ids"]
    layers_after = after.config["rootfs"]["diff_ids"]
    heavy = max(range(len(before.layers)), key=lambda i: before.layers[i]["size"])
    assert layers_after[: heavy + 1] == layers_before[: heavy + 1]
    assert layers_after[heavy + 1 :] != layers_before[heavy + 1 :]
    Path(path).unlink()  # keep the cache's archive the one of the real tree
