"""Membership over time with real nodes (issue 6): leaving, removal by consent (congregation and
crew), readmission by a new invite, splitting a congregation, and two removals decided at once
on two sides of a partition.

Five `crewnode serve` processes are shared by this file's tests; each test founds its own
congregation among them, so no test depends on what another did. Nodes sync only when a test
says so (POST /api/sync with the peer's sync address; discovery is off).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import NodeFactory

from node.entries import decode_entry
from nodes import crew_view, db_rows, found, invite, join, me, propose, respond, store_bytes, sync, sync_all, titles, view


# -- helpers ---------------------------------------------------------------------------------


def statuses(node, cid) -> dict:
    return {m["id"]: m["status"] for m in view(node, cid)["members"]}


def entry_status(node, entry_hash: str):
    rows = db_rows(node, "SELECT status, reason FROM entries WHERE hash = ?", [entry_hash])
    return rows[0] if rows else None


def hash_of(node, doc: str, text: str) -> str:
    """The hash of the one entry of `doc` held by `node` whose raw bytes contain `text`."""
    rows = [h for h, raw in db_rows(node, "SELECT hash, raw FROM entries WHERE doc = ?", [doc])
            if text.encode() in raw]
    assert len(rows) == 1, f"{len(rows)} entries of {doc[:8]} contain {text!r} on {node.name}"
    return rows[0]


@dataclass
class World:
    ada: object
    bo: object
    cy: object
    di: object
    ed: object
    ids: dict

    def id(self, node) -> str:
        return self.ids[node.name]

    def congregation(self, *members, name="Riverside"):
        """A congregation founded by the first node, the others joined with its codes; all synced."""
        founder = members[0]
        cid = found(founder, name)
        for other in members[1:]:
            join(other, founder, cid)
        sync_all(*members)
        return cid


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with NodeFactory.for_module(tmp_path_factory.mktemp("lifecycle")) as factory:
        nodes = [factory.start(name=n) for n in ("Ada", "Bo", "Cy", "Di", "Ed")]
        yield World(*nodes, ids={n.name: me(n) for n in nodes})


def remove(world, cid, proposer, subject, consenting, scope="congregations", reason="broke trust"):
    """`proposer` opens a removal of `subject`; each of `consenting` consents on its own node
    and syncs with the proposer, whose node then writes the cut. Returns the agreement."""
    agreement = proposer.api("POST", f"/api/{scope}/{cid}/removals",
                             {"member_id": world.id(subject), "reason": reason}, expect=201)[1]
    for node in consenting:
        if node is not proposer:
            sync(node, proposer)
        respond(node, agreement["id"])
        if node is not proposer:
            sync(node, proposer)
    return agreement


# -- leaving ---------------------------------------------------------------------------------------


def test_leaving_keeps_history_attributed_and_refuses_later_writes(world):
    ada, bo, cy = world.ada, world.bo, world.cy
    cid = world.congregation(ada, bo, cy, name="Leavers")
    crew = ada.api("POST", f"/api/congregations/{cid}/crews",
                   {"name": "Tea", "members": [world.id(bo), world.id(cy)]}, expect=201)[1]["id"]
    idea = propose(bo, "congregations", cid, "Bo's bench idea", "a bench by the river")
    sync_all(ada, bo, cy)

    assert bo.api("POST", f"/api/congregations/{cid}/leave", expect=200)[1]["status"] == "left"
    # At once on Bo's own node: left, in the congregation and in its crews.
    assert view(bo, cid)["my_status"] == "left"
    assert statuses(bo, cid)[world.id(bo)] == "left"
    assert crew_view(bo, crew)["my_status"] == "left"
    # Bo's node refuses Bo's writes from now on, with a 403 and nothing written.
    before = db_rows(bo, "SELECT COUNT(*) FROM entries")
    answer = propose(bo, "congregations", cid, "After leaving", expect=403)
    assert "no longer an active member" in answer["error"]
    assert respond(bo, idea["id"], expect=403)["error"]
    assert bo.api("POST", f"/api/congregations/{cid}/invites", {"note": ""})[0] == 403
    assert bo.api("POST", f"/api/crews/{crew}/commitments", {"what": "Bring cups"})[0] == 403
    assert db_rows(bo, "SELECT COUNT(*) FROM entries") == before

    sync_all(ada, bo, cy)
    for node in (ada, bo, cy):
        assert statuses(node, cid) == {world.id(ada): "active", world.id(bo): "left", world.id(cy): "active"}
        # Bo's history stays, attributed to Bo.
        agreement = node.api("GET", f"/api/agreements/{idea['id']}", expect=200)[1]
        assert agreement["proposed_by"] == world.id(bo) and agreement["title"] == "Bo's bench idea"
        history = node.api("GET", f"/api/congregations/{cid}/history", expect=200)[1]
        assert any(h["author"] == world.id(bo) and "Bo's bench idea" in h["summary"] for h in history)
        assert any(h["author"] == world.id(bo) and h["summary"] == "left the congregation" for h in history)
        assert view(node, cid)["void_entries"] == []
    # The crew: Bo left it too; Ada and Cy still see Bo's name there.
    for node in (ada, cy):
        seen = crew_view(node, crew)
        assert world.id(bo) not in seen["members"] and seen["member_names"][world.id(bo)] == "Bo"
    # Leaving only a crew: Cy stays in the congregation.
    cy.api("POST", f"/api/crews/{crew}/leave", expect=200)
    sync(cy, ada)
    assert crew_view(ada, crew)["members"] == [world.id(ada)]
    assert statuses(ada, cid)[world.id(cy)] == "active"
    assert crew_view(cy, crew)["my_status"] == "left"
    propose(cy, "congregations", cid, "Cy still here")


# -- removal by consent -------------------------------------------------------------------------


def test_removal_by_consent(world):
    ada, bo, cy, di = world.ada, world.bo, world.cy, world.di
    cid = world.congregation(ada, bo, cy, di, name="Removal")
    before_cut = propose(di, "congregations", cid, "Di before", "written while a member")
    sync_all(ada, bo, cy, di)

    # A reason is required.
    status, answer = ada.api("POST", f"/api/congregations/{cid}/removals", {"member_id": world.id(di), "reason": " "})
    assert status == 400 and "reason" in answer["error"]
    status, answer = ada.api("POST", f"/api/congregations/{cid}/removals",
                             {"member_id": world.id(ada), "reason": "me"})
    assert status == 400 and "leave instead" in answer["error"]
    agreement = ada.api("POST", f"/api/congregations/{cid}/removals",
                        {"member_id": world.id(di), "reason": "kept the money"}, expect=201)[1]
    assert agreement["kind"] == "removal" and agreement["subject"] == world.id(di)
    assert world.id(di) not in agreement["entitled"]
    assert set(agreement["entitled"]) == {world.id(ada), world.id(bo), world.id(cy)}
    sync_all(ada, bo, cy, di)
    # Di sees the proposal but may not answer it.
    assert di.api("GET", f"/api/agreements/{agreement['id']}", expect=200)[1]["kind"] == "removal"
    assert "not among the members entitled" in respond(di, agreement["id"], expect=403)["error"]

    # Partitioned: Di writes on, while the others consent and Ada's node carries out the cut.
    after_cut = propose(di, "congregations", cid, "Di after", "written in the partition")
    for node in (ada, bo, cy):
        respond(node, agreement["id"])
    assert statuses(ada, cid)[world.id(di)] == "active"     # Ada has only her own consent yet
    sync(bo, ada)
    sync(cy, ada)
    # Agreed: the cut is written automatically, and Di is removed at once on Ada's node.
    assert statuses(ada, cid)[world.id(di)] == "removed"
    history = ada.api("GET", f"/api/congregations/{cid}/history", expect=200)[1]
    assert history[0]["summary"] == "carried out the agreed removal of Di"
    sync_all(ada, bo, cy)
    sync(di, bo)                                    # Di pushes the entry written after the cut
    sync_all(ada, bo, cy, di)

    late = hash_of(ada, cid, "Di after")
    for node in (ada, bo, cy, di):
        seen = view(node, cid)
        assert {m["id"]: m["status"] for m in seen["members"]}[world.id(di)] == "removed"
        assert entry_status(node, late) == ("void", "written after its author was removed")
        # the history marks what does not count, and why
        history = {h["summary"]: h["void"] for h in node.api("GET", f"/api/congregations/{cid}/history", expect=200)[1]}
        assert history["proposed “Di after”"] == "written after its author was removed"
        assert history["proposed “Di before”"] is None
        assert late in {v["hash"] for v in seen["void_entries"]}
        assert "Di after" not in {a["title"] for a in seen["agreements"]}
        # What Di wrote before the cut stays, attributed.
        kept = node.api("GET", f"/api/agreements/{before_cut['id']}", expect=200)[1]
        assert kept["proposed_by"] == world.id(di)
        assert node.api("GET", f"/api/agreements/{agreement['id']}", expect=200)[1]["status"] == "agreed"
        assert node.api("GET", f"/api/agreements/{after_cut['id']}")[0] == 404
    # Carried out, the removal cannot be reopened, answered again or retired: Di is out either way.
    for method, path, body in (("PATCH", "", {"text": "on second thoughts"}), ("POST", "/retire", None),
                               ("POST", "/responses", {"response": "object", "reason": "too harsh"})):
        status, answer = cy.api(method, f"/api/agreements/{agreement['id']}{path}", body)
        assert status == 409 and "has been carried out" in answer["error"], (path, answer)
    # Di's own node tells Di, and refuses Di's writes.
    assert view(di, cid)["my_status"] == "removed"
    listed = next(c for c in di.api("GET", "/api/congregations", expect=200)[1] if c["id"] == cid)
    assert listed["my_status"] == "removed"
    assert propose(di, "congregations", cid, "Still here?", expect=403)["error"]
    assert di.api("POST", f"/api/congregations/{cid}/invites", {"note": ""})[0] == 403
    assert di.api("POST", f"/api/congregations/{cid}/leave")[0] == 403

    # After the removal Di receives nothing new, whoever starts the exchange.
    secret = "Plan 7741 without Di"
    propose(ada, "congregations", cid, secret, "the others carry on")
    sync(di, ada)
    sync(ada, di)
    sync(bo, ada)
    sync(di, bo)
    assert secret in titles(bo, cid)
    assert secret not in titles(di, cid)
    assert secret.encode() not in store_bytes(di.home)
    assert db_rows(di, "SELECT COUNT(*) FROM pending") == [(0,)]


def test_removal_from_a_crew(world):
    ada, bo, cy, di = world.ada, world.bo, world.cy, world.di
    cid = world.congregation(ada, bo, cy, di, name="Crew removal")
    crew = ada.api("POST", f"/api/congregations/{cid}/crews",
                   {"name": "Money", "members": [world.id(bo), world.id(cy)]}, expect=201)[1]["id"]
    sync_all(ada, bo, cy, di)
    agreement = ada.api("POST", f"/api/crews/{crew}/removals",
                        {"member_id": world.id(cy), "reason": "took from the pool"}, expect=201)[1]
    assert agreement["kind"] == "removal" and set(agreement["entitled"]) == {world.id(ada), world.id(bo)}
    sync(cy, ada)
    late = cy.api("POST", f"/api/crews/{crew}/commitments", {"what": "Count the pool 5521"}, expect=201)[1]
    respond(ada, agreement["id"])
    sync(bo, ada)
    respond(bo, agreement["id"])
    sync(bo, ada)
    assert crew_view(ada, crew)["members"] == [world.id(ada), world.id(bo)]
    sync_all(ada, bo, cy, di)
    late_hash = hash_of(ada, crew, "Count the pool 5521")
    for node in (ada, bo, cy):
        seen = crew_view(node, crew)
        assert world.id(cy) not in seen["members"]
        assert late["id"] not in {c["id"] for c in seen["commitments"]}
        assert late_hash in {v["hash"] for v in seen["void_entries"]}
        # Only the crew: Cy stays an active member of the congregation.
        assert statuses(node, cid)[world.id(cy)] == "active"
    assert crew_view(cy, crew)["my_status"] == "removed"
    assert cy.api("POST", f"/api/crews/{crew}/commitments", {"what": "x"})[0] == 403
    propose(cy, "congregations", cid, "Cy in the congregation")
    # The crew's news after the removal does not reach Cy; Di, never in the crew, holds none of it.
    ada.api("POST", f"/api/crews/{crew}/commitments", {"what": "Pool 8830 counted"}, expect=201)
    sync_all(ada, bo, cy, di)
    assert b"Pool 8830" not in store_bytes(cy.home)
    assert db_rows(di, "SELECT COUNT(*) FROM entries WHERE doc = ?", [crew]) == [(0,)]
    assert "Cy in the congregation" in titles(ada, cid)


# -- readmission ---------------------------------------------------------------------------------


def test_readmission_by_a_new_invite(world):
    ada, bo, ed = world.ada, world.bo, world.ed
    cid = found(ada, "Readmission")
    old_code = invite(ada, cid)
    join(bo, ada, cid)
    join(ed, ada, cid, old_code)
    sync_all(ada, bo, ed)
    removal = remove(world, cid, ada, ed, [ada, bo], reason="needs a break from us")
    void_entry = propose(ed, "congregations", cid, "Ed while out")
    sync_all(ada, bo, ed)
    assert statuses(ada, cid)[world.id(ed)] == "removed"
    assert view(ed, cid)["my_status"] == "removed"

    # The old code is used up: refused, at Ada's node and on Ed's own.
    status, answer = ed.api("POST", "/api/join", {"code": old_code, "address": ada.sync_address})
    assert status == 409 and "already been used" in answer["error"], answer
    assert view(ed, cid)["my_status"] == "removed"
    # A new invite admits Ed again.
    join(ed, ada, cid)
    sync_all(ada, bo, ed)
    for node in (ada, bo, ed):
        assert statuses(node, cid)[world.id(ed)] == "active"
        assert node.api("GET", f"/api/agreements/{removal['id']}", expect=200)[1]["status"] == "agreed"
    assert view(ed, cid)["my_status"] == "active"
    # Ed's new entries count everywhere; what Ed wrote while removed stays void.
    back = propose(ed, "congregations", cid, "Ed is back", "hello again")
    sync_all(ada, bo, ed)
    late = hash_of(ada, cid, "Ed while out")
    for node in (ada, bo, ed):
        assert "Ed is back" in titles(node, cid)
        assert node.api("GET", f"/api/agreements/{back['id']}", expect=200)[1]["proposed_by"] == world.id(ed)
        assert entry_status(node, late)[0] == "void"
        assert "Ed while out" not in titles(node, cid)
        assert node.api("GET", f"/api/agreements/{void_entry['id']}")[0] == 404
    # And Ed receives news again.
    propose(bo, "congregations", cid, "Welcome back Ed")
    sync(ed, bo)
    assert "Welcome back Ed" in titles(ed, cid)


# -- splitting ----------------------------------------------------------------------------------------


def test_splitting_a_congregation(world):
    ada, bo, cy, di = world.ada, world.bo, world.cy, world.di
    cid = world.congregation(ada, bo, cy, di, name="Big River")
    kitchen = ada.api("POST", f"/api/congregations/{cid}/crews",
                      {"name": "Kitchen", "members": [world.id(bo)]}, expect=201)[1]["id"]
    garden = ada.api("POST", f"/api/congregations/{cid}/crews",
                     {"name": "Garden", "members": [world.id(cy)]}, expect=201)[1]["id"]
    rule = propose(ada, "congregations", cid, "Quiet after ten")
    for node in (bo, cy, di):
        sync(node, ada)
        respond(node, rule["id"])
        sync(node, ada)
    respond(ada, rule["id"])
    sync_all(ada, bo, cy, di)

    # A crew goes only with its members.
    status, answer = ada.api("POST", f"/api/congregations/{cid}/fork",
                             {"name": "Little River", "crews": [kitchen, garden], "members": [world.id(bo)]})
    assert status == 400 and "Garden goes with the new congregation, but its member Cy does not" in answer["error"]
    assert [c["id"] for c in view(ada, cid)["lineage"]["children"]] == []
    child = ada.api("POST", f"/api/congregations/{cid}/fork",
                    {"name": "Little River", "crews": [kitchen], "members": [world.id(bo)]}, expect=201)[1]
    child_id = child["id"]
    assert child["forked_from"] == cid
    sync_all(ada, bo, cy, di)

    # The named member sees the new congregation, with its lineage and inherited agreements.
    for node in (ada, bo):
        listed = {c["id"]: c for c in node.api("GET", "/api/congregations", expect=200)[1]}
        assert listed[child_id]["forked_from"] == cid and listed[child_id]["name"] == "Little River"
        seen = view(node, child_id)
        assert {m["id"] for m in seen["members"]} == {world.id(ada), world.id(bo)}
        assert seen["lineage"]["parent"]["id"] == cid
        inherited = {a["title"]: a for a in seen["inherited"]}
        assert inherited["Quiet after ten"]["status"] == "agreed"
        # The crew went with it.
        assert [c["id"] for c in seen["crews"]] == [kitchen]
        assert crew_view(node, kitchen)["congregation_id"] == child_id
        parent = view(node, cid)
        assert [c["id"] for c in parent["lineage"]["children"]] == [child_id]
        assert kitchen not in {c["id"] for c in parent["crews"]}
    assert garden in {c["id"] for c in view(ada, cid)["crews"]}
    # The parent records the split for everyone; the members not named never receive the child.
    for node in (cy, di):
        assert [c["id"] for c in view(node, cid)["lineage"]["children"]] == [child_id]
        assert child_id not in {c["id"] for c in node.api("GET", "/api/congregations", expect=200)[1]}
        assert node.api("GET", f"/api/congregations/{child_id}")[0] == 404
        assert db_rows(node, "SELECT COUNT(*) FROM entries WHERE doc = ?", [child_id]) == [(0,)]
        assert db_rows(node, "SELECT COUNT(*) FROM pending WHERE doc = ?", [child_id]) == [(0,)]

    # Both halves evolve independently.
    propose(bo, "congregations", child_id, "Little 3391 rota")
    propose(cy, "congregations", cid, "Big 4412 picnic")
    sync_all(ada, bo, cy, di)
    for node in (ada, bo):
        assert "Little 3391 rota" in titles(node, child_id) and "Little 3391 rota" not in titles(node, cid)
        assert "Big 4412 picnic" in titles(node, cid) and "Big 4412 picnic" not in titles(node, child_id)
    for node in (cy, di):
        assert "Big 4412 picnic" in titles(node, cid)
        assert b"Little 3391" not in store_bytes(node.home)
    # A member of the child may leave it and stay in the parent.
    bo.api("POST", f"/api/congregations/{child_id}/leave", expect=200)
    sync_all(ada, bo, cy, di)
    assert statuses(ada, child_id)[world.id(bo)] == "left"
    assert statuses(ada, cid)[world.id(bo)] == "active"


# -- concurrent removals ---------------------------------------------------------------------------


def test_concurrent_removals_on_two_sides_of_a_partition(world):
    """Ada proposes removing Bo while Bo proposes removing Ada; Cy and Di consent to both.
    Ada's node and Bo's node each see their own round agreed and write a cut without knowing
    of the other. After sync every node shows the same outcome, the same entries counting."""
    ada, bo, cy, di = world.ada, world.bo, world.cy, world.di
    cid = world.congregation(ada, bo, cy, di, name="Split vote")
    remove_bo = ada.api("POST", f"/api/congregations/{cid}/removals",
                        {"member_id": world.id(bo), "reason": "Ada's reason"}, expect=201)[1]
    remove_ada = bo.api("POST", f"/api/congregations/{cid}/removals",
                        {"member_id": world.id(ada), "reason": "Bo's reason"}, expect=201)[1]
    sync_all(ada, bo, cy, di)
    for node in (cy, di):
        respond(node, remove_bo["id"])
        respond(node, remove_ada["id"])
    sync_all(ada, bo, cy, di)
    # The partition: each consents to the other's removal alone; each node writes its cut.
    respond(ada, remove_bo["id"])
    respond(bo, remove_ada["id"])
    assert statuses(ada, cid)[world.id(bo)] == "removed"
    assert statuses(bo, cid)[world.id(ada)] == "removed"
    sync(cy, ada)
    sync(di, bo)
    sync_all(ada, bo, cy, di)

    # The members still active hold the same entries, count the same ones, show the same state.
    outcomes = [view(node, cid) for node in (cy, di)]
    assert outcomes[0]["members"] == outcomes[1]["members"]
    assert outcomes[0]["agreements"] == outcomes[1]["agreements"]
    assert [v["hash"] for v in outcomes[0]["void_entries"]] == [v["hash"] for v in outcomes[1]["void_entries"]]
    held = [db_rows(n, "SELECT hash, status, reason FROM entries WHERE doc = ? ORDER BY hash", [cid])
            for n in (cy, di)]
    assert held[0] == held[1]
    # The outcome: of the two concurrent cuts the earlier counts, and the later one (written
    # by the member it removed, after that cut) is void with its author's consent. Cy and Di
    # consented to both removals, so once one of the two is out the other round is agreed
    # too (the removed member's exit stands in for their answer) and a node carries it out:
    # both are removed, on every node, whichever cut each node received first.
    members = {m["id"]: m["status"] for m in outcomes[0]["members"]}
    assert members == {world.id(ada): "removed", world.id(bo): "removed",
                       world.id(cy): "active", world.id(di): "active"}
    cuts = [(decode_entry(raw), author, status, reason) for raw, author, status, reason in db_rows(
        cy, "SELECT raw, author, status, reason FROM entries WHERE doc = ? AND kind = 'cut'", [cid])]
    first = min((entry for entry, _, _, _ in cuts), key=lambda e: (e.at, e.hash))
    loser = first.op["member"]                      # removed by the earliest cut
    assert {e.hash: status for e, _, status, _ in cuts}[first.hash] == "accepted"
    assert {e.op["member"] for e, _, status, _ in cuts if status == "accepted"} == {world.id(ada), world.id(bo)}
    # Void: the loser's own cut (written after they were removed), and any cut whose evidence
    # rests on the loser's side (a node that heard it first took the loser's cut of the
    # winner as the winner's answer).
    voided = [(e, author, reason) for e, author, status, reason in cuts if status == "void"]
    assert any(author == loser for _, author, _ in voided), "the later of the two concurrent cuts is void"
    for entry, author, reason in voided:
        if author == loser:
            assert reason == "written after its author was removed"
        else:
            assert reason == "the removal was not agreed: its evidence includes an entry that does not count"
            assert set(entry.op["evidence"].values()) & {h for h, status, _ in held[0] if status == "void"}
    # Each of the two removed members' nodes tells them so, and takes no more writes.
    for node in (ada, bo):
        assert view(node, cid)["my_status"] == "removed"
        assert propose(node, "congregations", cid, "Still in?", expect=403)["error"]
