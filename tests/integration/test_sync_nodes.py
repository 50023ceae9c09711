"""Peer sync end to end (issue 3): real `crewnode serve` processes on loopback.

Joining by invite code and address, refusals of used, unknown and expired codes, two-way
sync, news relayed through a third member's node, crew privacy down to the bytes on disk, a
stranger's node that learns nothing, and the peers list.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest
from conftest import NodeFactory

from node.errors import Conflict, NotFound
from node.identity import raw_public
from node.ids import b32
from node.service import Service, invite_key, new_invite_code
from nodes import db_rows, found, invite, join, me, propose, store_bytes, sync, titles


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class World:
    ada: object
    bo: object
    cy: object
    stranger: object
    cid: str
    used_code: str


def member_ids(node, cid) -> set:
    return {m["id"] for m in node.api("GET", f"/api/congregations/{cid}", expect=200)[1]["members"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared by this file's tests (each writes its own, distinct things): Ada founds a
    congregation, Bo and Cy join it with her codes at her address; a stranger's node never
    joins anything."""
    with NodeFactory.for_module(tmp_path_factory.mktemp("sync-nodes")) as factory:
        ada, bo, cy = (factory.start(name=n) for n in ("Ada", "Bo", "Cy"))
        stranger = factory.start(name="Stranger")
        cid = found(ada)
        code = invite(ada, cid)
        # The code as a person might type it: lower case, spaces instead of dashes.
        status, answer = bo.api("POST", "/api/join", {"code": code.lower().replace("-", " "),
                                                      "address": ada.sync_address})
        assert (status, answer) == (202, {"congregation_id": cid, "status": "joined"})
        join(cy, ada, cid)
        yield World(ada, bo, cy, stranger, cid, code)


@pytest.fixture
def trio(world):
    return world.ada, world.bo, world.cy, world.cid


# -- joining -----------------------------------------------------------------------------------


def test_join_by_invite_with_address(world):
    ada, bo, cid = world.ada, world.bo, world.cid
    view = bo.api("GET", f"/api/congregations/{cid}", expect=200)[1]
    assert view["name"] == "Riverside"
    names = {m["name"]: m["status"] for m in view["members"]}
    assert names["Ada"] == names["Bo"] == "active"
    # Ada's node wrote the admission; it shows there too, and in Bo's history.
    assert {me(ada), me(bo)} <= member_ids(ada, cid)
    history = bo.api("GET", f"/api/congregations/{cid}/history", expect=200)[1]
    assert any(h["summary"] == "admitted Bo" and h["author"] == me(ada) for h in history)
    # Bo's code is no longer listed as open; a new one is, once it reaches Bo's node.
    used, fresh = (b32(raw_public(invite_key(code))) for code in (world.used_code, invite(ada, cid)))
    sync(bo, ada)
    for node in (ada, bo):
        open_keys = {i["key"] for i in node.api("GET", f"/api/congregations/{cid}", expect=200)[1]["open_invites"]}
        assert fresh in open_keys and used not in open_keys


def test_used_and_unknown_codes_are_refused_clearly(world):
    ada, newcomer, cid = world.ada, world.stranger, world.cid
    before = db_rows(ada, "SELECT hash FROM entries ORDER BY hash")

    status, answer = newcomer.api("POST", "/api/join", {"code": world.used_code, "address": ada.sync_address})
    assert status == 409, answer
    assert "already been used" in answer["error"]

    status, answer = newcomer.api("POST", "/api/join", {"code": new_invite_code(), "address": ada.sync_address})
    assert status == 404, answer
    assert "not known" in answer["error"]

    status, answer = newcomer.api("POST", "/api/join", {"code": "AB", "address": ada.sync_address})
    assert status == 400, answer
    assert "invite code" in answer["error"]

    # The refusals wrote nothing, and the newcomer holds no congregation.
    assert db_rows(ada, "SELECT hash FROM entries ORDER BY hash") == before
    assert newcomer.api("GET", "/api/congregations", expect=200)[1] == []
    assert me(newcomer) not in member_ids(ada, cid)


def test_a_withdrawn_code_is_refused_where_the_withdrawal_has_reached(world):
    ada, bo, newcomer, cid = world.ada, world.bo, world.stranger, world.cid
    code = invite(ada, cid)
    key, used = (b32(raw_public(invite_key(c))) for c in (code, world.used_code))
    sync(bo, ada)
    status, answer = bo.api("DELETE", f"/api/congregations/{cid}/invites/{key}")
    assert (status, answer) == (200, {"key": key, "withdrawn": True, "congregation_id": cid}), answer
    sync(bo, ada)
    before = db_rows(ada, "SELECT hash FROM entries ORDER BY hash")
    for member in (ada, bo):
        status, answer = newcomer.api("POST", "/api/join", {"code": code, "address": member.sync_address})
        assert status == 409 and "withdrawn" in answer["error"], answer
    assert db_rows(ada, "SELECT hash FROM entries ORDER BY hash") == before
    assert newcomer.api("GET", "/api/congregations", expect=200)[1] == []
    # A member's node says what cannot be withdrawn.
    status, answer = ada.api("DELETE", f"/api/congregations/{cid}/invites/{used}")
    assert status == 409 and "already used by Bo" in answer["error"], answer
    status, answer = ada.api("DELETE", f"/api/congregations/{cid}/invites/nothing")
    assert status == 404 and "no invite" in answer["error"], answer


def test_an_expired_code_is_refused(tmp_path, monkeypatch):
    """Expiry is checked against time: at the service the inviter's node asks, and in the rule."""
    import node.ids
    import node.service as service_module
    from node.entries import build_entry
    from node.ids import b32
    from node.identity import raw_public
    from node.rules import invite_message
    from node.service import invite_key

    ada = Service(tmp_path / "ada", name="Ada")
    bo = Service(tmp_path / "bo", name="Bo")
    cid = ada.create_congregation("Riverside", "")["id"]
    code = ada.create_invite(cid)["code"]
    key, proof = bo.join_proof(code)
    eight_days = 8 * 86_400_000
    real_now = node.ids.now_ms
    monkeypatch.setattr(service_module, "now_ms", lambda: real_now() + eight_days)
    with pytest.raises(Conflict, match="expired"):
        ada.admit(key, bo.me, "Bo", proof)
    assert bo.me not in ada.states[cid].members
    # A node that is told of an admission written after expiry refuses it too.
    secret = invite_key(code)
    seq, prev = ada.ledger.heads[(cid, ada.identity.device_id)]
    late = build_entry(ada.identity, cid, seq + 1, prev, real_now() + eight_days,
                       {"t": "admit", "member": bo.me, "name": "Bo", "invite": b32(raw_public(secret)),
                        "proof": b32(secret.sign(invite_message(key, bo.me)))})
    result = ada.ledger.ingest([late.raw])
    assert [reason for _, reason in result.refused] == ["the invite code has expired"]
    assert bo.me not in ada.states[cid].members
    with pytest.raises(NotFound):
        ada.find_invite(b32(raw_public(invite_key(new_invite_code()))))
    ada.store.close()
    bo.store.close()


def test_a_join_that_cannot_reach_its_address_says_why_until_dropped(world):
    newcomer = world.stranger
    code = invite(world.ada, world.cid)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))            # bound, never listening: connections are refused
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
        status, answer = newcomer.api("POST", "/api/join", {"code": code, "address": dead})
    assert status == 202, answer
    assert answer["status"] == "pending" and answer["congregation_id"] is None
    assert "nothing answers at that port" in answer["waiting"]

    waiting = newcomer.api("GET", "/api/joins", expect=200)[1]
    assert [(j["address"], j["waiting"]) for j in waiting] == [(dead, answer["waiting"])]
    key = waiting[0]["key"]
    assert newcomer.api("DELETE", f"/api/joins/{key}", expect=200)[1] == {"forgotten": key}
    assert newcomer.api("GET", "/api/joins", expect=200)[1] == []
    status, answer = newcomer.api("DELETE", f"/api/joins/{key}")
    assert status == 404 and "no join" in answer["error"]
    assert newcomer.api("GET", "/api/congregations", expect=200)[1] == []


# -- syncing ------------------------------------------------------------------------------------


def test_two_way_sync(trio):
    ada, bo, cy, cid = trio
    propose(ada, "congregations", cid, "Quiet hours", "After ten")
    propose(bo, "congregations", cid, "Tea rota", "Mondays")
    answer = sync(bo, ada)
    assert answer["received"] >= 1 and answer["sent"] >= 1
    assert {"Quiet hours", "Tea rota"} <= titles(ada, cid)
    assert titles(ada, cid) == titles(bo, cid)
    # Nothing new: a second exchange moves nothing.
    assert sync(bo, ada) == {"received": 0, "sent": 0}
    assert sync(ada, bo) == {"received": 0, "sent": 0}


def test_news_is_relayed_through_a_third_node(trio):
    ada, bo, cy, cid = trio
    propose(ada, "congregations", cid, "Garden day", "Saturday")
    assert "Garden day" not in titles(cy, cid)
    sync(bo, ada)                                  # A <-> B
    sync(cy, bo)                                   # B <-> C: Cy never talks to Ada
    assert "Garden day" in titles(cy, cid)
    agreement = next(a for a in cy.api("GET", f"/api/congregations/{cid}", expect=200)[1]["agreements"]
                     if a["title"] == "Garden day")
    assert agreement["proposed_by"] == me(ada)
    # And back: Cy's response reaches Ada through Bo.
    cy.api("POST", f"/api/agreements/{agreement['id']}/responses", {"response": "consent"}, expect=200)
    sync(bo, cy)
    sync(ada, bo)
    responses = ada.api("GET", f"/api/agreements/{agreement['id']}", expect=200)[1]["responses"]
    assert responses[me(cy)]["response"] == "consent"


def test_a_crew_stays_with_its_members(trio):
    ada, bo, cy, cid = trio
    sync(ada, bo)
    secret_name = "Crew Zebra-7731 Hush"
    secret_text = "Pool money: 1234 kept under Quokka-9"
    crew = ada.api("POST", f"/api/congregations/{cid}/crews",
                   {"name": secret_name, "purpose": "feelings and money", "members": [me(bo)]}, expect=201)[1]
    crew_id = crew["id"]
    propose(ada, "crews", crew_id, "Pool", secret_text)
    ada.api("POST", f"/api/crews/{crew_id}/commitments", {"what": "Count the Quokka-9 pool"}, expect=201)
    propose(ada, "congregations", cid, "Open to all", "Everyone may read this")
    # Every pair syncs, in both directions.
    for a, b in [(bo, ada), (cy, ada), (cy, bo), (ada, cy), (bo, cy)]:
        sync(a, b)
    seen = bo.api("GET", f"/api/crews/{crew_id}", expect=200)[1]
    assert seen["name"] == secret_name and set(seen["members"]) == {me(ada), me(bo)}
    assert any(a["text"] == secret_text for a in seen["agreements"])
    # Cy, a congregation member outside the crew: 404, the congregation news but no crew.
    status, answer = cy.api("GET", f"/api/crews/{crew_id}")
    assert status == 404, answer
    assert "Open to all" in titles(cy, cid)
    assert cy.api("GET", f"/api/congregations/{cid}", expect=200)[1]["crews"] == []
    # ... and none of its entries on disk: no row of that document, no byte of its name or text.
    assert db_rows(cy, "SELECT COUNT(*) FROM entries WHERE doc = ?", [crew_id]) == [(0,)]
    assert db_rows(cy, "SELECT COUNT(*) FROM pending WHERE doc = ?", [crew_id]) == [(0,)]
    on_disk = store_bytes(cy.home)
    for secret in (secret_name, secret_text, "Quokka-9", crew_id):
        assert secret.encode() not in on_disk, f"{secret!r} reached a non-member's disk"
    # The same search does find them on a crew member's disk.
    assert db_rows(bo, "SELECT COUNT(*) FROM entries WHERE doc = ?", [crew_id]) == [(3,)]
    on_members_disk = store_bytes(bo.home)
    assert all(secret.encode() in on_members_disk for secret in (secret_name, secret_text, "Quokka-9"))


def test_a_strangers_node_receives_nothing(world):
    ada, bo, stranger, cid = world.ada, world.bo, world.stranger, world.cid
    propose(ada, "congregations", cid, "Stranger-free 4411", "Members only")
    crew_id = ada.api("POST", f"/api/congregations/{cid}/crews",
                      {"name": "Inner 5522", "purpose": "", "members": [me(bo)]}, expect=201)[1]["id"]
    sync(bo, ada)
    before = db_rows(ada, "SELECT hash FROM entries ORDER BY hash")
    # Both directions: the stranger asks Ada and Bo, and Ada asks the stranger.
    assert sync(stranger, ada) == {"received": 0, "sent": 0}
    assert sync(ada, stranger) == {"received": 0, "sent": 0}
    assert sync(stranger, bo) == {"received": 0, "sent": 0}
    assert stranger.api("GET", "/api/congregations", expect=200)[1] == []
    assert stranger.api("GET", f"/api/congregations/{cid}")[0] == 404
    assert stranger.api("GET", f"/api/crews/{crew_id}")[0] == 404
    assert db_rows(stranger, "SELECT COUNT(*) FROM entries") == [(0,)]
    assert db_rows(stranger, "SELECT COUNT(*) FROM pending") == [(0,)]
    on_disk = store_bytes(stranger.home)
    for secret in ("Riverside", "Stranger-free 4411", "Inner 5522", cid, crew_id):
        assert secret.encode() not in on_disk
    assert db_rows(ada, "SELECT hash FROM entries ORDER BY hash") == before
    # Bo never asked for the stranger: a node that only reached his is not in his peers.
    assert me(stranger) not in {p["id"] for p in bo.api("GET", "/api/peers", expect=200)[1]}


def test_peers_lists_manual_peers_with_last_sync(trio):
    ada, bo, cy, cid = trio
    sync(bo, ada)
    peers = bo.api("GET", "/api/peers", expect=200)[1]
    ada_peer = next(p for p in peers if p["id"] == me(ada))
    assert ada_peer["source"] == "manual"
    assert ada_peer["address"] == ada.sync_address
    assert ada_peer["last_sync"] and ada_peer["last_sync"].endswith("Z")
    assert ada_peer["name"] == "Ada"
    assert set(ada_peer) >= {"id", "name", "address", "source", "last_sync"}
    # The serving side met Bo too.
    bo_peer = next(p for p in ada.api("GET", "/api/peers", expect=200)[1] if p["id"] == me(bo))
    assert bo_peer["source"] == "manual" and bo_peer["last_sync"]
