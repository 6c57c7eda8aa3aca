"""Registers the real-component fixtures (tests/harness) for every test."""

pytest_plugins = ["harness.fixtures"]
