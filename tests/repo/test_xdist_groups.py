"""`make test` keeps the real node's tests on one pytest-xdist worker (tests/conftest.py):
the node is one per machine, so a node test on the other worker waits for the first
worker's whole session to end. That grouping failed silently, for two reasons at once
(the suite's hook ran after xdist's; pytest 9.2 ignores xdist's group suffix), and runs
spent much of their node tests with one worker idle. This runs the suite's own hook with
hack/test.sh's xdist flags on a small project and checks where the tests ran."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

CONFTEST = f"""
import importlib.util

import pytest

_spec = importlib.util.spec_from_file_location("medsft_conftest", {str(TESTS / "conftest.py")!r})
_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_suite)
pytest_collection_modifyitems = _suite.pytest_collection_modifyitems


@pytest.fixture
def node():
    return "a stand-in for the real node: only its name matters to the grouping"
"""

TESTS_FILE = """
import os
import time
from pathlib import Path


def _record(name):
    time.sleep(0.2)  # both workers stay busy, so plain load balancing would split the tests
    out = Path(os.environ["RECORD"]) / name
    out.write_text(os.environ["PYTEST_XDIST_WORKER"])


def test_node_1(node): _record("node_1")
def test_node_2(node): _record("node_2")
def test_node_3(node): _record("node_3")
def test_node_4(node): _record("node_4")
def test_other_1(): _record("other_1")
def test_other_2(): _record("other_2")
def test_other_3(): _record("other_3")
def test_other_4(): _record("other_4")
"""


def test_the_node_tests_run_on_one_worker(tmp_path: Path) -> None:
    project, record = tmp_path / "project", tmp_path / "record"
    project.mkdir()
    record.mkdir()
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_grouping.py").write_text(textwrap.dedent(TESTS_FILE))
    # The same flags as hack/test.sh.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2",
         "--dist", "loadgroup", "-o", "addopts=", "--rootdir", str(project), str(project)],
        capture_output=True, text=True, timeout=300, cwd=project,
        env={"RECORD": str(record), "PATH": str(Path(sys.executable).parent)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {path.name: path.read_text() for path in record.iterdir()}
    assert len(workers) == 8, workers
    node_workers = {workers[f"node_{i}"] for i in range(1, 5)}
    assert len(node_workers) == 1, f"the node's tests ran on {sorted(node_workers)}: {workers}"
