"""Registers the real-component fixtures (tests/harness) for every test, and keeps the
tests of the real node on one pytest-xdist worker (`make test` runs two): the node is one
per machine (tests/harness/node.py), so a second worker asking for it would only wait.
The image builds (tests/images/test_build.py) go with them: a build and the node's import
of the 7 GB trainer image at the same time once took the shared disk low enough for the
kubelet to garbage-collect the node's images."""

import pytest

pytest_plugins = ["harness.fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist registers this marker itself; a run without it (`-p no:xdist`, one
    # process) must still accept the marker under --strict-markers.
    config.addinivalue_line("markers", "xdist_group(name): tests that share one xdist worker")


# tryfirst: pytest-xdist reads the marker in its own hook of the same name, which would
# otherwise run first (the later-registered plugin's hook runs first) and see none.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        building = item.path.name == "test_build.py" and item.path.parent.name == "images"
        if building or "node" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("node"))
