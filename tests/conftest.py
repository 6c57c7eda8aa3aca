"""Registers the real-component fixtures (tests/harness) for every test, and keeps the
tests of the real node on one pytest-xdist worker (`make test` runs two): the node is one
per machine (tests/harness/node.py), so a second worker asking for it would only wait."""

import pytest

pytest_plugins = ["harness.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "node" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("node"))
