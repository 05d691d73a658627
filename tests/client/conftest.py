"""Fixtures of the client tests."""

from __future__ import annotations

import pytest

from tests.conftest import start_node


@pytest.fixture
def nodes():
    """Three node processes on free ports, stopped (by pid) afterwards."""
    started = [start_node() for _ in range(3)]
    yield started
    for n in started:
        n.stop()
