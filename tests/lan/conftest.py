"""Fixtures for tests across network namespaces (see netns.py).

- ``make_lan(n)``: a fresh ``Lan`` of n hosts, torn down after the test.
- ``lan``: the same with two hosts.

The first LAN test of a session also removes namespaces a crashed earlier run
left behind.
"""

from __future__ import annotations

import pytest

from .netns import Lan, cleanup_stale, list_netns


@pytest.fixture(scope="session")
def _clean_stale_netns():
    """Delete leftovers of crashed runs once, before the first LAN is built."""
    cleanup_stale()


@pytest.fixture
def make_lan(_clean_stale_netns):
    """Factory: ``make_lan(n)`` builds a Lan of n hosts; all are torn down after."""
    lans: list[Lan] = []

    def make(n: int) -> Lan:
        lan = Lan(n)
        lans.append(lan)  # before entering, so a half-built one is torn down too
        return lan.__enter__()

    yield make
    for lan in lans:
        lan.close()
    left = [ns for ns in list_netns() for lan in lans if ns.startswith(lan.prefix + "-")]
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def lan(make_lan) -> Lan:
    """A LAN of two hosts."""
    return make_lan(2)
