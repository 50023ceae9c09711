"""AutoSync's choices, with a fake engine: who gets a push, when a push is skipped, how many at once.

The real thing runs in tests/lan/test_gathering.py; here every decision is checked on its own.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from support import wait_for
from sync import autosync
from sync.autosync import AutoSync

ME = "dev-me"


class FakeEngine:
    """Records syncs; peers are "host:port" addresses whose member and device are derived from the host."""

    def __init__(self, strangers=(), hold_s: float = 0.0):
        self.identity = SimpleNamespace(device_id=ME)
        self.ingesting_from = None
        self.strangers = set(strangers)
        self.hold_s = hold_s
        self.syncs: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def sync_with(self, address: str, source: str = "manual") -> dict:
        host = address.rsplit(":", 1)[0]
        with self._lock:
            self.syncs.append(host)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.hold_s)
        with self._lock:
            self.running -= 1
        return {"received": 0, "sent": 0, "peer": f"m-{host}", "device": f"d-{host}",
                "shares": f"m-{host}" not in self.strangers}

    def shares_with(self, member: str) -> bool:
        return member not in self.strangers

    def retry_joins(self, addresses=None) -> None:
        pass


def entry(device: str):
    return SimpleNamespace(device=device)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(autosync, "PUSH_DELAY_S", 0.05)
    monkeypatch.setattr(autosync, "RELAY_DELAY_S", 0.1)


@pytest.fixture
def run():
    started = []

    def start(engine, hosts):
        auto = AutoSync(engine)
        started.append(auto)
        auto.start()
        for h in hosts:
            auto.found(f"inst-{h}", [h], 8471)
        # Everyone is synced with once, on discovery.
        wait_for(lambda: sorted(engine.syncs) == sorted(hosts) and not any(p.running for p in auto.peers.values()),
                 5, message=lambda: f"discovery syncs: {engine.syncs}")
        engine.syncs.clear()
        return auto

    yield start
    for auto in started:
        auto.stop()


def settle(engine, seconds=0.4):
    time.sleep(seconds)
    return sorted(engine.syncs)


def test_my_change_is_pushed_to_every_peer_sharing_something(run):
    engine = FakeEngine(strangers={"m-c"})
    auto = run(engine, ["a", "b", "c"])
    auto.changed([entry(ME)])
    assert settle(engine) == ["a", "b"]            # c, a stranger, costs nothing more


def test_entries_are_not_pushed_back_nor_relayed_when_their_author_is_here(run):
    engine = FakeEngine()
    auto = run(engine, ["a", "b", "c"])
    engine.ingesting_from = "m-a"
    auto.changed([entry("d-a")])                     # a's own entry, from a: a pushes to b and c itself
    engine.ingesting_from = None
    assert settle(engine) == []


def test_news_from_elsewhere_is_relayed_to_all_but_its_source(run):
    engine = FakeEngine()
    auto = run(engine, ["a", "b", "c"])
    engine.ingesting_from = "m-a"
    auto.changed([entry("d-a"), entry("d-absent")])  # a carries an entry by someone not here
    engine.ingesting_from = None
    assert settle(engine) == ["b", "c"]


def test_a_push_is_skipped_when_the_peer_synced_with_me_since(run):
    engine = FakeEngine()
    auto = run(engine, ["a", "b"])
    auto.changed([entry(ME)])
    auto.served("m-a", "d-a", time.monotonic(), True)  # a asked me right after my change
    assert settle(engine) == ["b"]


def test_a_change_during_a_sync_gets_its_own_push(run):
    engine = FakeEngine(hold_s=0.3)
    auto = run(engine, ["a"])
    auto.changed([entry(ME)])
    wait_for(lambda: engine.running, 2)
    auto.changed([entry(ME)])                        # while the push runs
    wait_for(lambda: len(engine.syncs) == 2, 3, message=lambda: f"syncs: {engine.syncs}")


def test_a_stranger_that_becomes_a_member_is_pushed_to(run):
    engine = FakeEngine(strangers={"m-c"})
    auto = run(engine, ["c"])
    engine.strangers.clear()                         # c was admitted (by someone else's entry)
    engine.ingesting_from = "m-x"
    auto.changed([entry("d-x")])
    engine.ingesting_from = None
    assert settle(engine) == ["c"]


def test_never_more_than_workers_syncs_at_once(run):
    engine = FakeEngine()
    hosts = [f"h{i}" for i in range(10)]
    auto = run(engine, hosts)
    engine.hold_s = 0.1
    engine.most_at_once = 0
    auto.changed([entry(ME)])
    wait_for(lambda: len(engine.syncs) == len(hosts), 5, message=lambda: f"syncs: {engine.syncs}")
    assert engine.most_at_once <= autosync.WORKERS
    assert sorted(engine.syncs) == sorted(hosts)     # each once
