"""The repository carries what its README runs.

The project's own machines have a ``../shared`` folder beside the checkout (larger public
benchmark files, upstream CRDs) that tests may read; nobody else has it. So no product file
(everything outside ``tests/``) may refer to it, and every local path an example reads must
be inside the repository.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml

from harness.testbin import REPO_ROOT

FORBIDDEN = "../shared"
VENDORED = REPO_ROOT / "examples" / "data"


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files")
    return [name for name in out.decode().split("\0") if name]


def test_no_product_file_refers_to_the_shared_folder():
    offenders = []
    for name in tracked_files():
        if name.startswith("tests/"):
            continue
        path = REPO_ROOT / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        data = path.read_bytes()
        if FORBIDDEN.encode() in data:
            lines = data.decode(errors="replace").splitlines()
            offenders += [f"{name}:{i}" for i, line in enumerate(lines, 1) if FORBIDDEN in line]
    assert not offenders, f"product files refer to {FORBIDDEN}: {', '.join(offenders)}"


def local_uris(node: object) -> list[str]:
    """Every ``uri`` value in a document that is a path (not s3://, file://, http...)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "uri" and isinstance(value, str) and "://" not in value:
                found.append(value)
            else:
                found += local_uris(value)
    elif isinstance(node, list):
        for value in node:
            found += local_uris(value)
    return found


def test_every_local_path_an_example_reads_is_in_the_repository():
    checked = 0
    for example in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(example.read_text(encoding="utf-8")):
            for uri in local_uris(doc or {}):
                if uri.startswith(".medsft/"):
                    continue  # built by `medsft run --local` (the tiny model), not read
                path = (REPO_ROOT / uri).resolve()
                assert path.is_relative_to(REPO_ROOT), f"{example.name}: {uri} is outside the repo"
                assert path.exists(), f"{example.name}: {uri} does not exist in the repository"
                checked += 1
    assert checked >= 3  # the quickstart's training source and its two benchmarks


def test_vendored_samples_carry_their_licences_and_stay_small():
    for dataset in ("pubmedqa", "vqa-rad"):
        licence = VENDORED / dataset / "LICENSE"
        assert licence.is_file() and licence.stat().st_size > 500, f"{dataset}: no licence text"
    # The provenance note names every vendored file (what it is, where it came from).
    note = (VENDORED / "README.md").read_text(encoding="utf-8")
    for path in VENDORED.glob("*/*.json"):
        assert path.name in note, f"examples/data/README.md does not describe {path.name}"
    size = sum(p.stat().st_size for p in VENDORED.rglob("*") if p.is_file())
    # Trimmed to what the demo needs; the complete files stay outside the repository.
    assert size < 3 * 2**20, f"examples/data is {size / 2**20:.1f} MiB"
