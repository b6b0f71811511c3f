"""Reuse the aggregator federation fixtures for the hostile-input tests."""

from tests.aggregator.conftest import digits, federation  # noqa: F401
