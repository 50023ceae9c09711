"""Snapshots of facts (node/snapshots.py): a start from them shows what a full replay shows, and a
snapshot that is damaged, planted or made by other code is never trusted."""
import pickle
import sqlite3

import pytest

from factories import congregation
from node import snapshots
from node.service import Service


def views(svc: Service, cid: str, crew: str) -> dict:
    cong = svc.congregation_view(cid)
    return {"congregation": cong, "crew": svc.crew_view(crew), "history": svc.history(cid),
            "agreements": {a["id"]: svc.agreement_view(a["id"]) for a in cong["agreements"]},
            "vectors": {d: dict(s.vector) for d, s in svc.states.items()},
            "counts": {d: s.count for d, s in svc.states.items()}}


@pytest.fixture
def world(tmp_path):
    (ada, bea, cy), cid = congregation(tmp_path, ("Ada", "Bea", "Cy"))
    crew = ada.create_crew(cid, "Kitchen", "we cook", [bea.me])["id"]
    agreement = ada.propose(cid, "Quiet after ten", "No music after 22:00")
    bea.close()
    cy.close()
    ada.respond(agreement["id"], "consent")
    ada.commit(crew, "Buy rice", "2026-12-31")
    ada._write(cid, {"t": "meta"}, {"purpose": "neighbours, and friends"})
    return ada, cid, crew


@pytest.fixture
def decoded(monkeypatch):
    """Counts the entries a start decodes from the store (replays)."""
    import node.store
    count = {"n": 0}
    real = node.store.decode_held

    def counting(raw, entry_hash):
        count["n"] += 1
        return real(raw, entry_hash)

    monkeypatch.setattr(node.store, "decode_held", counting)
    return count


def facts_of(svc: Service) -> dict:
    conn = sqlite3.connect(svc.home / "crewnode.db")
    try:
        return dict(conn.execute("SELECT doc, facts FROM snapshots").fetchall())
    finally:
        conn.close()


def replayed(home) -> Service:
    """A Service that replays every entry (its snapshots' facts removed)."""
    conn = sqlite3.connect(home / "crewnode.db")
    conn.execute("UPDATE snapshots SET facts = ''")
    conn.commit()
    conn.close()
    return Service(home)


def test_a_start_from_facts_shows_what_a_full_replay_shows(world, decoded):
    ada, cid, crew = world
    expected = views(ada, cid, crew)
    home = ada.home
    ada.close()
    assert all(facts_of(ada).values()), "a clean stop keeps every document's facts"
    decoded["n"] = 0
    from_facts = Service(home)
    assert decoded["n"] == 0, "a start after a clean stop replays nothing"
    assert views(from_facts, cid, crew) == expected
    assert from_facts.congregation_view(cid)["purpose"] == "neighbours, and friends"
    # It goes on working: a write after a start from facts, then a start that replays only it,
    # and a full replay, all agree.
    from_facts.propose(crew, "Fridge shelves", "")
    expected = views(from_facts, cid, crew)
    from_facts.store.close()                     # no snapshot: the next start replays after the facts
    decoded["n"] = 0
    again = Service(home)
    assert decoded["n"] == 1
    assert views(again, cid, crew) == expected
    again.store.close()
    assert views(replayed(home), cid, crew) == expected


@pytest.mark.parametrize("damage", ["planted", "garbage", "other code", "truncated"])
def test_a_snapshot_that_cannot_be_trusted_is_replayed_instead(world, damage, tmp_path, decoded):
    ada, cid, crew = world
    expected = views(ada, cid, crew)
    home = ada.home
    ada.close()
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    good = facts_of(ada)[cid]
    blob = {"planted": pickle.dumps((snapshots.fingerprint(), 10**9, {"x": Planted()})),
            "garbage": b"\x80\x05not a pickle at all",
            "other code": pickle.dumps((b"another fingerprint", 10**9, {})),
            "truncated": good[:len(good) // 2]}[damage]
    conn = sqlite3.connect(home / "crewnode.db")
    conn.execute("UPDATE snapshots SET facts = ? WHERE doc = ?", [blob, cid])
    conn.commit()
    conn.close()
    decoded["n"] = 0
    svc = Service(home)
    assert not marker.exists(), "a planted snapshot ran code"
    assert decoded["n"] >= 8, "the congregation was replayed"
    assert views(svc, cid, crew) == expected
    svc.store.close()


def test_facts_that_cannot_be_pickled_do_not_stop_a_clean_stop(world, decoded):
    ada, cid, crew = world
    expected = views(ada, cid, crew)
    home = ada.home
    ada.states[cid].something_new = lambda: None        # a future attribute pickle cannot take
    ada.close()                                         # must not raise
    decoded["n"] = 0
    svc = Service(home)
    assert decoded["n"] >= 8, "the congregation was replayed"
    assert views(svc, cid, crew) == expected
    svc.store.close()
