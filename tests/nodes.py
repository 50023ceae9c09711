"""Helpers for tests that drive real node processes (conftest's `node_factory`) through their API.

Import them as ``from nodes import sync, me``: tests/conftest.py puts this folder on ``sys.path``.
Each call asserts the status a member would get when all goes well.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def found(node, name: str = "Riverside", purpose: str = "Neighbours who share tools.") -> str:
    """Start a congregation on `node`; returns its id."""
    return node.api("POST", "/api/congregations", {"name": name, "purpose": purpose}, expect=201)[1]["id"]


def invite(node, cid: str) -> str:
    """A fresh invite code of `node` for congregation `cid`."""
    return node.api("POST", f"/api/congregations/{cid}/invites", {"note": "welcome"}, expect=201)[1]["code"]


def join(newcomer, inviter, cid: str, code: str | None = None) -> None:
    """`newcomer` joins `cid` with a code of `inviter` (a new one unless given), at its sync address."""
    code = code or invite(inviter, cid)
    answer = newcomer.api("POST", "/api/join", {"code": code, "address": inviter.sync_address}, expect=202)[1]
    assert answer == {"congregation_id": cid, "status": "joined"}


def me(node) -> str:
    """The member id of `node`'s person."""
    return node.api("GET", "/api/me", expect=200)[1]["id"]


def sync(node, peer) -> dict:
    """One exchange of `node` with `peer`, by address; the answer's counts."""
    return node.api("POST", "/api/sync", {"address": peer.sync_address}, expect=200)[1]


def sync_all(*nodes, skip: tuple = ()) -> None:
    """Everyone with everyone (but the pair `skip`), until a full round moves nothing."""
    for _ in range(6):
        moved = 0
        for a in nodes:
            for b in nodes:
                if a is not b and {a, b} != set(skip):
                    answer = sync(a, b)
                    moved += answer["received"] + answer["sent"]
        if not moved:
            return
    raise AssertionError("sync did not become quiet")


def view(node, cid: str) -> dict:
    """The congregation as `node` shows it."""
    return node.api("GET", f"/api/congregations/{cid}", expect=200)[1]


def crew_view(node, crew: str) -> dict:
    """The crew as `node` shows it."""
    return node.api("GET", f"/api/crews/{crew}", expect=200)[1]


def titles(node, cid: str) -> set:
    """Titles of the congregation's agreements on `node`."""
    return {a["title"] for a in view(node, cid)["agreements"]}


def propose(node, scope: str, scope_id: str, title: str, text: str = "", expect: int = 201):
    """Propose an agreement in `scope` ("congregations" or "crews") `scope_id`."""
    return node.api("POST", f"/api/{scope}/{scope_id}/agreements", {"title": title, "text": text}, expect=expect)[1]


def respond(node, aid: str, response: str = "consent", expect: int = 200):
    """Respond to agreement `aid`."""
    return node.api("POST", f"/api/agreements/{aid}/responses", {"response": response}, expect=expect)[1]


def db_rows(node, sql: str, args=()) -> list:
    """Rows from the node's store, read-only while the node runs (WAL allows readers)."""
    conn = sqlite3.connect(f"file:{node.home / 'crewnode.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def store_bytes(home: Path) -> bytes:
    """The bytes of every file of the store (crewnode.db, -wal, -shm)."""
    return b"".join(p.read_bytes() for p in sorted(home.glob("crewnode.db*")) if p.is_file())
