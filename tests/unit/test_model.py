"""Crews, their members and commitments; unknown ids; dates (Service level)."""
from types import SimpleNamespace

import pytest

from factories import Member, admit, congregation, sync_all
from node import rules, views
from node.ids import b32
from node.errors import Conflict, Invalid, NotFound
from node.identity import raw_public
from node.rules import invite_message
from node.service import invite_key


@pytest.fixture
def world(tmp_path):
    (ada, bea, cy), cid = congregation(tmp_path)
    yield SimpleNamespace(ada=ada, bea=bea, cy=cy, all=(ada, bea, cy), cid=cid, tmp=tmp_path)
    for svc in (ada, bea, cy):
        svc.close()


def test_congregation_view_fields(world):
    view = world.ada.congregation_view(world.cid)
    assert {"id", "name", "purpose", "forked_from", "members", "crews", "agreements"} <= set(view)
    assert view["name"] == "Riverside" and view["forked_from"] is None
    assert view["members"] == [{"id": s.me, "name": s.my_name(), "status": "active"} for s in world.all]
    listed = world.cy.list_congregations()
    assert [(c["id"], c["member_count"]) for c in listed] == [(world.cid, 3)]
    assert {"id", "name", "purpose", "member_count", "forked_from"} <= set(listed[0])


def test_crew_members_must_be_congregation_members(world):
    crew = world.ada.create_crew(world.cid, "Kitchen", "meals together", [world.bea.me])
    assert crew["members"] == [world.ada.me, world.bea.me]     # I am always a member, listed first
    assert crew["congregation_id"] == world.cid and crew["name"] == "Kitchen"
    assert crew["purpose"] == "meals together" and crew["agreements"] == [] and crew["commitments"] == []
    stranger = Member("Eve")
    docs = len(world.ada.states)
    for members in ([stranger.id], ["not an id"], [world.bea.me, 7], "bea", {"a": 1}):
        with pytest.raises(Invalid):
            world.ada.create_crew(world.cid, "Garden", "", members)
    for name in ("", "  ", None, 5, "x" * 201):
        with pytest.raises(Invalid):
            world.ada.create_crew(world.cid, name, "", [])
    assert len(world.ada.states) == docs
    with pytest.raises(NotFound):
        world.ada.create_crew("no-such-congregation", "Garden", "", [])


def test_adding_crew_members(world):
    crew_id = world.ada.create_crew(world.cid, "Kitchen", "", [])["id"]
    assert world.ada.add_crew_member(crew_id, world.cy.me)["members"] == [world.ada.me, world.cy.me]
    with pytest.raises(Conflict):
        world.ada.add_crew_member(crew_id, world.cy.me)
    rows = world.ada.store.max_rowid()
    for bad in (Member("Eve").id, "nobody", None, 3):
        with pytest.raises(Invalid):
            world.ada.add_crew_member(crew_id, bad)
    assert world.ada.store.max_rowid() == rows
    with pytest.raises(NotFound):
        world.ada.add_crew_member("no-such-crew", world.bea.me)
    sync_all(*world.all)
    assert world.cy.crew_view(crew_id)["members"] == [world.ada.me, world.cy.me]
    with pytest.raises(NotFound):                              # Bea holds the entries but is no member
        world.bea.crew_view(crew_id)
    assert crew_id not in [c["id"] for c in world.bea.congregation_view(world.cid)["crews"]]
    assert crew_id in [c["id"] for c in world.cy.congregation_view(world.cid)["crews"]]


def test_more_than_eight_members_gives_a_warning(world):
    others = [Member(f"M{i}") for i in range(6)]
    for m in others:
        admit(world.ada, world.cid, m.id, m.name)
    eight = [world.bea.me, world.cy.me] + [m.id for m in others[:5]]
    crew = world.ada.create_crew(world.cid, "Big table", "", eight)
    assert len(crew["members"]) == 8 and "warning" not in crew
    ninth = world.ada.add_crew_member(crew["id"], others[5].id)
    assert len(ninth["members"]) == 9 and "9 members" in ninth["warning"]
    nine_at_once = world.ada.create_crew(world.cid, "Bigger table", "", eight + [others[5].id])
    assert "warning" in nine_at_once


def test_commitments_open_done_released(world):
    crew_id = world.ada.create_crew(world.cid, "Kitchen", "", [world.bea.me])["id"]
    mine = world.ada.commit(crew_id, "Buy rice", "2026-12-31")
    assert {"id", "what", "by", "due", "status", "created_at"} <= set(mine)
    assert (mine["what"], mine["by"], mine["due"], mine["status"]) == ("Buy rice", world.ada.me, "2026-12-31", "open")
    hers = world.ada.commit(crew_id, "Cook on Friday", None, world.bea.me)
    assert hers["by"] == world.bea.me and hers["due"] is None
    assert world.ada.set_commitment_status(mine["id"], "done")["status"] == "done"
    assert world.ada.set_commitment_status(mine["id"], "released")["status"] == "released"
    assert world.ada.set_commitment_status(mine["id"], "open")["status"] == "open"
    sync_all(*world.all)
    assert world.bea.set_commitment_status(hers["id"], "done")["status"] == "done"
    sync_all(*world.all)
    statuses = {c["id"]: c["status"] for c in world.ada.crew_view(crew_id)["commitments"]}
    assert statuses == {mine["id"]: "open", hers["id"]: "done"}


def test_quick_successive_status_changes_keep_the_last(world):
    """Changes a member makes one after another count in that order, even within one millisecond."""
    crew_id = world.ada.create_crew(world.cid, "Kitchen", "", [])["id"]
    one = world.ada.commit(crew_id, "Task")["id"]
    wrong = 0
    for _ in range(60):                                     # a write takes well under a millisecond
        world.ada.set_commitment_status(one, "done")
        world.ada.set_commitment_status(one, "open")
        wrong += world.ada.commitment_view(one)["status"] != "open"
    assert wrong == 0
    world.ada.set_name("Ada 1")
    world.ada.set_name("Ada 2")
    world.ada.set_name("Ada 3")
    assert world.ada.congregation_view(world.cid)["members"][0]["name"] == "Ada 3"


def test_commitment_checks(world):
    crew_id = world.ada.create_crew(world.cid, "Kitchen", "", [world.bea.me])["id"]
    rows = world.ada.store.max_rowid()
    bad = [("", None, None), ("  ", None, None), (None, None, None), (5, None, None),
           ("ok", "tomorrow", None), ("ok", "2026-13-01", None), ("ok", "2026-1-1", None), ("ok", 20261231, None),
           ("ok", "2026-W01-1", None), ("ok", "20261231", None),
           ("ok", None, world.cy.me),                       # in the congregation, not in the crew
           ("ok", None, "nobody"), ("ok", None, 5)]
    for what, due, by in bad:
        with pytest.raises(Invalid):
            world.ada.commit(crew_id, what, due, by)
    one = world.ada.commit(crew_id, "ok")
    rows = world.ada.store.max_rowid()
    for status in ("finished", "", None, 1, ["done"]):
        with pytest.raises(Invalid):
            world.ada.set_commitment_status(one["id"], status)
    assert world.ada.store.max_rowid() == rows
    with pytest.raises(NotFound):
        world.ada.commit("no-such-crew", "ok")


def test_unknown_ids_are_not_found(world):
    svc = world.ada
    for call in (lambda: svc.congregation_view("nope"), lambda: svc.crew_view("nope"),
                 lambda: svc.agreement_view("nope"), lambda: svc.respond("nope", "consent"),
                 lambda: svc.set_commitment_status("nope", "done"), lambda: svc.commitment_view("nope"),
                 lambda: svc.history("nope"), lambda: svc.crew_view(world.cid),
                 lambda: svc.congregation_view("ab" * 32), lambda: svc.retire("nope"),
                 lambda: svc.revise("nope", "t", "")):
        with pytest.raises(NotFound):
            call()
    crew_id = svc.create_crew(world.cid, "Kitchen", "", [])["id"]
    with pytest.raises(NotFound):
        svc.congregation_view(crew_id)                          # a crew is not a congregation


def test_history_lists_entries_newest_first(world):
    crew_id = world.ada.create_crew(world.cid, "Kitchen", "", [])["id"]
    world.ada.propose(world.cid, "Quiet after ten", "")
    history = world.ada.history(world.cid)
    assert {"author", "device", "seq", "at", "summary"} <= set(history[0])
    assert history[0]["summary"] == "proposed “Quiet after ten”" and history[0]["author"] == world.ada.me
    assert history[-1]["summary"].startswith("created the congregation")
    seqs = [h["seq"] for h in history if h["device"] == world.ada.identity.device_id]
    assert seqs == sorted(seqs, reverse=True)
    assert world.ada.history(crew_id)[0]["summary"].startswith("created the crew")


@pytest.mark.parametrize("value", ["2026-W01-1", "2026-001", "20261231", "2026-02-30", "2026-1-1", "26-01-01",
                                   "2026-01-01T00:00", " 2026-01-01", "2026-01-0١", 20260101, ["2026-01-01"]])
def test_dates_must_be_yyyy_mm_dd(value):
    with pytest.raises(rules.Refused):
        rules.check_date(value, "due")


def test_dates_that_are_fine():
    assert rules.check_date("2026-12-31", "due") == "2026-12-31"
    assert rules.check_date("2028-02-29", "due") == "2028-02-29"
    assert rules.check_date(None, "due") is None and rules.check_date("", "due") is None


def test_invites_last_the_days_asked_for_and_never_past_thirty(world):
    ada, cid, day = world.ada, world.cid, 86_400_000
    state = ada.states[cid]
    for days in (1, 30):
        before = set(state.invites)
        ada.create_invite(cid, "", days)
        (key,) = set(state.invites) - before
        assert days * day - 5_000 < state.invites[key]["expires"] - state.latest_at <= days * day
    for days in (0, 31, "7", True, 1.5, None):
        with pytest.raises(Invalid, match="from 1 to 30"):
            ada.create_invite(cid, "", days)
    # A member's node that writes a longer-lived invite by hand has it refused by the rules.
    mo = Member("Mo")
    admit(ada, cid, mo.id, "Mo")
    mo.last_at = state.latest_at
    key = b32(bytes(32))
    entry = mo.write(cid, {"t": "invite", "key": key, "expires": mo.last_at + 1 + 31 * day, "note": ""},
                     at=mo.last_at + 1)
    result = ada.ledger.ingest([entry.raw])
    assert result.accepted_count == 0
    assert key not in ada.states[cid].invites


def test_open_invites_leave_the_list_when_used_or_expired(world):
    ada, cid = world.ada, world.cid
    state = ada.states[cid]
    ada.create_invite(cid, "for Jo", 1)
    ada.create_invite(cid, "for Kit", 7)
    now = state.latest_at
    assert [i["note"] for i in views.open_invites(state, now)] == ["for Jo", "for Kit"]
    assert {i["by"] for i in views.open_invites(state, now)} == {ada.me}
    # a day and a minute later, Jo's code has expired
    assert [i["note"] for i in views.open_invites(state, now + 86_460_000)] == ["for Kit"]
    # once Kit joins with theirs, it is no longer open
    kit = next(i["key"] for i in views.open_invites(state, now) if i["note"] == "for Kit")
    state.invites[kit]["used_by"] = "someone"
    assert [i["note"] for i in views.open_invites(state, now)] == ["for Jo"]


def test_withdrawing_an_invite(world):
    ada, bea, cid = world.ada, world.bea, world.cid
    jo = ada.create_invite(cid, "Jo")
    kit = ada.create_invite(cid, "Kit")
    sync_all(*world.all)
    # Any member may withdraw a code still open; it leaves the list on every node it reaches.
    assert bea.withdraw_invite(cid, jo["key"]) == {"key": jo["key"], "withdrawn": True, "congregation_id": cid}
    assert [i["note"] for i in views.open_invites(bea.states[cid], bea.states[cid].latest_at)] == ["Kit"]
    assert {i["note"] for i in views.open_invites(ada.states[cid], ada.states[cid].latest_at)} == {"Jo", "Kit"}
    sync_all(*world.all)
    for node in world.all:
        state = node.states[cid]
        assert [i["note"] for i in views.open_invites(state, state.latest_at)] == ["Kit"]
        with pytest.raises(Conflict, match="withdrawn"):
            node.find_invite(jo["key"])
    assert any(h["summary"] == "withdrew an invite for Jo" for h in ada.history(cid))
    # A second withdrawal (a double click, another member) writes nothing more.
    rows = ada.store.max_rowid()
    ada.withdraw_invite(cid, jo["key"])
    assert ada.store.max_rowid() == rows
    # What cannot be withdrawn says why, and writes nothing.
    mo = Member("Mo")
    admit(ada, cid, mo.id, "Mo")                       # with an invite of its own
    used = next(k for k, i in ada.states[cid].invites.items() if i["used_by"] == mo.id)
    rows = ada.store.max_rowid()
    with pytest.raises(Conflict, match="already used by Mo"):
        ada.withdraw_invite(cid, used)
    with pytest.raises(NotFound):
        ada.withdraw_invite(cid, b32(bytes(32)))
    with pytest.raises(NotFound):
        ada.withdraw_invite("no-such-congregation", kit["key"])
    assert ada.store.max_rowid() == rows


def test_an_admission_with_a_code_withdrawn_meanwhile_stands_and_says_so(world):
    ada, bea, cid = world.ada, world.bea, world.cid
    code = ada.create_invite(cid, "Mo")["code"]
    sync_all(*world.all)
    ada.withdraw_invite(cid, next(k for k, i in ada.states[cid].invites.items() if i["note"] == "Mo"))
    mo = Member("Mo")
    secret = invite_key(code)
    key = b32(raw_public(secret))
    bea.admit(key, mo.id, "Mo", secret.sign(invite_message(key, mo.id)))   # Bea had not heard
    sync_all(*world.all)
    assert ada.states[cid].members[mo.id].status == "active"
    assert any(h["summary"].startswith("admitted Mo with a code that had been withdrawn") for h in ada.history(cid))


def test_a_withdrawal_counts_in_any_order_and_the_first_names_who(world):
    """A withdrawal may arrive before its invite; two withdrawals settle on the earlier one."""
    ada, cid = world.ada, world.cid
    mo, lu, nia = Member("Mo"), Member("Lu"), Member("Nia")
    for m in (mo, lu, nia):
        admit(ada, cid, m.id, m.name)
    key = b32(bytes(range(32)))
    at = ada.states[cid].latest_at
    invite = mo.write(cid, {"t": "invite", "key": key, "expires": at + 86_400_000, "note": "for Kim"}, at=at + 1)
    by_lu = lu.write(cid, {"t": "withdraw", "invite": key}, at=at + 3)
    by_nia = nia.write(cid, {"t": "withdraw", "invite": key}, at=at + 2)
    bad = lu.write(cid, {"t": "withdraw", "invite": "short"}, at=at + 4)
    sync_all(*world.all)
    for node, order in ((ada, (by_lu, by_nia)), (world.bea, (by_nia, by_lu))):
        for entry in order:
            assert node.ledger.ingest([entry.raw]).accepted_count == 1
        assert node.ledger.ingest([invite.raw]).accepted_count == 1
        state = node.states[cid]
        assert state.withdrawn[key][1] == nia.id and key not in {i["key"] for i in views.open_invites(state, at)}
    assert ada.ledger.ingest([bad.raw]).accepted_count == 0
