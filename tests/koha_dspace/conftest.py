"""Fixtures shared by the koha-dspace pipeline tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shelfwork.sandbox.peers import Peers, start_peers


@pytest.fixture
def peers() -> Iterator[Peers]:
    """The emulated Koha and DSpace, served on loopback for one test."""
    running = start_peers()
    yield running
    running.stop()
