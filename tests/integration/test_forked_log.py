"""A forked device log with real nodes (issue 6): Bo's home folder is copied while his node is
stopped, and both copies serve at once. They share Bo's device key, so each writes its own
entry at the same seq: two signed entries, same device, same seq, different content. Synced
through other members' nodes, every node must show the fork (both entries as evidence), keep
the same branch by the fixed rule, and converge to one state.
"""
from __future__ import annotations

import shutil
import sqlite3

from node.entries import decode_entry
from nodes import found, join, me, sync, sync_all, view


def held(node, doc) -> list:
    """(hash, status) of every entry the node holds in `doc`, read from its store."""
    conn = sqlite3.connect(f"file:{node.home / 'crewnode.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT hash, status FROM entries WHERE doc = ? ORDER BY hash", [doc]).fetchall()
    finally:
        conn.close()


def raw_of(node, entry_hash) -> bytes:
    conn = sqlite3.connect(f"file:{node.home / 'crewnode.db'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT raw FROM entries WHERE hash = ?", [entry_hash]).fetchone()[0]
    finally:
        conn.close()


def comparable(node, cid) -> dict:
    seen = view(node, cid)
    seen.pop("my_status")
    return seen


def test_a_copied_home_forks_the_log_and_every_node_converges(node_factory):
    ada, bo, cy = (node_factory.start(name=n) for n in ("Ada", "Bo", "Cy"))
    cid = found(ada)
    join(bo, ada, cid)
    join(cy, ada, cid)
    sync_all(ada, bo, cy)
    device = bo.api("GET", "/api/me", expect=200)[1]["device"]

    # Bo's home is copied while his node is stopped; both copies serve, with one device key.
    bo.stop()
    shutil.copytree(bo.home, bo.home.parent / "bo-copy")
    bo.restart()
    twin = node_factory.start(home=bo.home.parent / "bo-copy", name=None)
    assert twin.api("GET", "/api/me", expect=200)[1]["device"] == device

    kitchen = bo.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Kitchen rota"}, expect=201)[1]
    garden = twin.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Garden rota"}, expect=201)[1]
    sync(bo, ada)
    sync(twin, cy)
    nodes = [ada, bo, twin, cy]
    sync_all(*nodes, skip=(bo, twin))                # the copies never meet: news goes through others

    # Both entries are held everywhere; one counts, the same one on every node.
    holdings = [held(n, cid) for n in nodes]
    assert all(h == holdings[0] for h in holdings)
    forks = [view(n, cid)["forks"] for n in nodes]
    assert all(f == forks[0] for f in forks), forks
    assert len(forks[0]) == 1
    fork = forks[0][0]
    assert fork["device"] == device and fork["member_name"] == "Bo"
    evidence = {e["hash"]: e for e in fork["entries"]}
    assert len(evidence) == 2 and fork["kept"] in evidence and fork["dropped"] == [h for h in evidence
                                                                                    if h != fork["kept"]]
    assert fork["kept"] == min(evidence)            # the fixed rule: the lowest hash is kept
    titles = set()
    for entry_hash, shown in evidence.items():
        entry = decode_entry(raw_of(ada, entry_hash))
        assert (entry.device, entry.seq) == (device, fork["seq"]) and shown["seq"] == fork["seq"]
        titles.add(entry.op["title"])
    assert titles == {"Kitchen rota", "Garden rota"}
    status = dict(holdings[0])
    assert status[fork["kept"]] == "accepted" and status[fork["dropped"][0]] == "void"
    kept_title = decode_entry(raw_of(ada, fork["kept"])).op["title"]
    dropped_id = garden["id"] if kept_title == "Kitchen rota" else kitchen["id"]
    for node in nodes:
        shown = {a["title"] for a in view(node, cid)["agreements"]}
        assert kept_title in shown and ({"Kitchen rota", "Garden rota"} - {kept_title}).isdisjoint(shown)
        # Both proposals sit at the same place of the same log, so they share the id that
        # place gives: it names the kept one.
        assert node.api("GET", f"/api/agreements/{dropped_id}", expect=200)[1]["title"] == kept_title
    states = [comparable(n, cid) for n in nodes]
    assert all(s == states[0] for s in states)
    # Members answer the kept proposal: their answers count on every node.
    assert kitchen["id"] == garden["id"]
    for node in (ada, cy):
        node.api("POST", f"/api/agreements/{kitchen['id']}/responses", {"response": "consent"}, expect=200)
    sync_all(*nodes, skip=(bo, twin))
    for node in nodes:
        answered = node.api("GET", f"/api/agreements/{kitchen['id']}", expect=200)[1]["responses"]
        assert {member for member, r in answered.items() if r["response"] == "consent"} == {me(ada), me(cy)}

    # Both copies carry on (each from the kept branch), and now also sync with each other.
    bo.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Bo again"}, expect=201)
    twin.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Twin again"}, expect=201)
    ada.api("POST", f"/api/congregations/{cid}/agreements", {"title": "Ada meanwhile"}, expect=201)
    sync(bo, twin)
    sync(twin, bo)
    sync_all(*nodes)
    holdings = [held(n, cid) for n in nodes]
    assert all(h == holdings[0] for h in holdings)
    states = [comparable(n, cid) for n in nodes]
    assert all(s == states[0] for s in states)
    assert "Ada meanwhile" in {a["title"] for a in states[0]["agreements"]}
    assert len({a["title"] for a in states[0]["agreements"]} & {"Bo again", "Twin again"}) == 1
    assert len(states[0]["forks"]) == 2           # the copies forked again at the next seq
    assert len({e["hash"] for f in states[0]["forks"] for e in f["entries"]}) == 4
