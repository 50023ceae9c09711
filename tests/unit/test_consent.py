"""Consent rounds: who may respond, and how responses make an agreement's status.

Each member runs a real Service; responses are written on the responder's own node and carried
to the others by copying entries, so every check also holds across nodes.
"""
from types import SimpleNamespace

import pytest

from factories import Member, admit, congregation, copy_docs, service, sync_all
from node.errors import Conflict, Forbidden, Invalid, NotFound


@pytest.fixture
def world(tmp_path):
    (ada, bea, cy), cid = congregation(tmp_path)
    yield SimpleNamespace(ada=ada, bea=bea, cy=cy, all=(ada, bea, cy), cid=cid, tmp=tmp_path)
    for svc in (ada, bea, cy):
        svc.close()


def status_everywhere(world, aid) -> str:
    """Sync everyone, then the status every node shows (they must agree)."""
    sync_all(*world.all)
    views = [svc.agreement_view(aid) for svc in world.all]
    statuses = {v["status"] for v in views}
    assert len(statuses) == 1, [(v["status"], v["responses"]) for v in views]
    assert all(v["responses"] == views[0]["responses"] for v in views)
    return statuses.pop()


def propose(world, by=None, title="Quiet after ten", text="No music after 22:00"):
    svc = by or world.ada
    aid = svc.propose(world.cid, title, text)["id"]
    sync_all(*world.all)
    return aid


def test_entitled_are_the_active_members_when_proposed(world):
    aid = propose(world)
    view = world.ada.agreement_view(aid)
    assert view["entitled"] == [world.ada.me, world.bea.me, world.cy.me]
    assert view["proposed_by"] == world.ada.me and view["kind"] == "agreement"
    dee = service(world.tmp, "Dee")
    admit(world.ada, world.cid, dee.me, "Dee")
    copy_docs(world.ada, dee)
    assert dee.agreement_view(aid)["entitled"] == view["entitled"]
    with pytest.raises(Forbidden):
        dee.respond(aid, "consent")
    assert world.ada.agreement_view(aid)["waiting_for"] == view["entitled"]
    # a later proposal includes Dee
    later = world.ada.propose(world.cid, "Bins on Tuesday", "")
    assert dee.me in later["entitled"]
    dee.close()


def test_response_by_a_non_entitled_member_is_refused_by_every_node(world):
    aid = propose(world)
    version = world.ada.agreement_view(aid)["version"]
    late = Member("Late")
    admit(world.ada, world.cid, late.id, "Late")
    entry = late.write(world.cid, {"t": "respond", "agreement": aid, "version": version,
                                   "response": "object", "reason": "I was not asked"})
    before = world.ada.agreement_view(aid)
    result = world.ada.ledger.ingest([entry.raw])
    assert result.accepted == [] and "entitled" in result.refused[0][1]
    assert world.ada.agreement_view(aid) == before
    assert before["status"] == "proposed"


def test_stranger_response_is_never_counted(world):
    aid = propose(world)
    eve = Member("Eve")
    version = world.ada.agreement_view(aid)["version"]
    entry = eve.write(world.cid, {"t": "respond", "agreement": aid, "version": version,
                                  "response": "object", "reason": "no"})
    result = world.ada.ledger.ingest([entry.raw])
    assert result.accepted == [] and result.pending == 1
    assert world.ada.agreement_view(aid)["status"] == "proposed"
    assert eve.id not in world.ada.agreement_view(aid)["responses"]


def test_missing_response_leaves_the_round_open(world):
    aid = propose(world)
    assert status_everywhere(world, aid) == "proposed"
    world.ada.respond(aid, "consent")
    world.bea.respond(aid, "consent")
    assert status_everywhere(world, aid) == "proposed"
    view = world.cy.agreement_view(aid)
    assert view["waiting_for"] == [world.cy.me]
    assert view["responses"] == {world.ada.me: {"response": "consent", "reason": ""},
                                 world.bea.me: {"response": "consent", "reason": ""}}


def test_consent_by_all_agrees(world):
    aid = propose(world)
    for svc in world.all:
        svc.respond(aid, "consent")
    assert status_everywhere(world, aid) == "agreed"
    assert world.bea.agreement_view(aid)["waiting_for"] == []


def test_stand_aside_counts_like_consent(world):
    aid = propose(world)
    world.ada.respond(aid, "consent")
    world.bea.respond(aid, "stand_aside", "not my area")
    assert status_everywhere(world, aid) == "proposed"
    world.cy.respond(aid, "consent")
    assert status_everywhere(world, aid) == "agreed"
    assert world.ada.agreement_view(aid)["responses"][world.bea.me] == {"response": "stand_aside",
                                                                        "reason": "not my area"}


def test_objection_needs_a_reason(world):
    aid = propose(world)
    before = world.bea.history(world.cid)
    for reason in ("", "   ", None):
        with pytest.raises(Invalid, match="reason"):
            world.bea.respond(aid, "object", reason)
    assert world.bea.history(world.cid) == before
    # and an objection without a reason made by hand is refused by the other nodes
    version = world.ada.agreement_view(aid)["version"]
    mo = Member("Mo")
    admit(world.ada, world.cid, mo.id, "Mo")
    world.ada.propose(world.cid, "Mo may respond to this", "")
    aid2 = [a for a in world.ada.congregation_view(world.cid)["agreements"] if mo.id in a["entitled"]][0]["id"]
    version = world.ada.agreement_view(aid2)["version"]
    bare = mo.write(world.cid, {"t": "respond", "agreement": aid2, "version": version, "response": "object",
                                "reason": "  "})
    result = world.ada.ledger.ingest([bare.raw])
    assert result.accepted == [] and "reason" in result.refused[0][1]


@pytest.mark.parametrize("response", ["maybe", "", None, 1, "CONSENT", ["consent"]])
def test_unknown_responses_are_refused(world, response):
    aid = propose(world)
    with pytest.raises(Invalid):
        world.bea.respond(aid, response, "because")
    assert world.bea.agreement_view(aid)["responses"] == {}


def test_objected_while_any_objection_stands(world):
    aid = propose(world)
    world.ada.respond(aid, "consent")
    world.bea.respond(aid, "object", "too early: make it 23:00")
    world.cy.respond(aid, "object", "weekends differ")
    assert status_everywhere(world, aid) == "objected"
    world.bea.respond(aid, "consent")                     # Bea lifts hers, Cy's stands
    assert status_everywhere(world, aid) == "objected"
    world.cy.respond(aid, "consent")                      # the last objector consents
    assert status_everywhere(world, aid) == "agreed"


def test_an_objector_consenting_later_lifts_the_objection(world):
    aid = propose(world)
    world.ada.respond(aid, "consent")
    world.cy.respond(aid, "consent")
    world.bea.respond(aid, "object", "needs a trial month")
    assert status_everywhere(world, aid) == "objected"
    assert world.ada.agreement_view(aid)["responses"][world.bea.me] == {"response": "object",
                                                                        "reason": "needs a trial month"}
    world.bea.respond(aid, "consent")
    assert status_everywhere(world, aid) == "agreed"


def test_revising_the_text_starts_a_new_round(world):
    aid = propose(world, text="No music after 22:00")
    for svc in world.all:
        svc.respond(aid, "consent")
    assert status_everywhere(world, aid) == "agreed"
    revised = world.bea.revise(aid, "Quiet after eleven", "No music after 23:00", "2027-01-31")
    assert revised["status"] == "proposed" and revised["responses"] == {}
    assert revised["title"] == "Quiet after eleven" and revised["text"] == "No music after 23:00"
    assert revised["review_by"] == "2027-01-31"
    assert [v["text"] for v in revised["versions"]] == ["No music after 22:00", "No music after 23:00"]
    assert [v["current"] for v in revised["versions"]] == [False, True]
    assert status_everywhere(world, aid) == "proposed"
    world.ada.respond(aid, "consent")
    world.bea.respond(aid, "consent")
    assert status_everywhere(world, aid) == "proposed"
    world.cy.respond(aid, "stand_aside")
    assert status_everywhere(world, aid) == "agreed"


def test_a_new_round_asks_the_members_who_came_since(world):
    """Dee joins mid-round: that round is not hers, but a new text asks her too."""
    aid = propose(world)
    dee = service(world.tmp, "Dee")
    admit(world.ada, world.cid, dee.me, "Dee")
    copy_docs(world.ada, dee)
    with pytest.raises(Forbidden, match="began before you were a member"):
        dee.respond(aid, "consent")
    world.bea.revise(aid, "Quiet after ten", "No music after 22:00, weekdays only")
    everyone = (*world.all, dee)
    sync_all(*everyone)
    assert dee.me in dee.agreement_view(aid)["entitled"]
    for svc in world.all:
        svc.respond(aid, "consent")
    sync_all(*everyone)
    assert {svc.agreement_view(aid)["status"] for svc in everyone} == {"proposed"}    # waits for Dee
    dee.respond(aid, "consent")
    sync_all(*everyone)
    assert {svc.agreement_view(aid)["status"] for svc in everyone} == {"agreed"}
    dee.close()


def test_a_member_back_after_leaving_does_not_reopen_what_was_decided(world):
    """Cy leaves; a round is decided without her; her coming back does not reopen it, and she
    cannot block it, but the next text of it asks her."""
    world.cy.leave(world.cid)
    sync_all(*world.all)
    aid = propose(world)
    world.ada.respond(aid, "consent")
    world.bea.respond(aid, "consent")
    assert status_everywhere(world, aid) == "agreed"
    admit(world.bea, world.cid, world.cy.me, "Cy")                # back with a new invite
    assert status_everywhere(world, aid) == "agreed"
    assert world.ada.agreement_view(aid)["waiting_for"] == []
    with pytest.raises(Forbidden, match="while you were away"):
        world.cy.respond(aid, "object", "I was not here")
    assert status_everywhere(world, aid) == "agreed"
    world.ada.revise(aid, "Quiet after ten", "No music after 22:00, weekdays only")
    sync_all(*world.all)
    assert world.cy.me in world.cy.agreement_view(aid)["entitled"]
    world.cy.respond(aid, "object", "weekends too, please")
    assert status_everywhere(world, aid) == "objected"


def test_a_member_away_for_part_of_a_round_does_not_reopen_it(world):
    """Cy is in when the round begins, leaves during it, and comes back after it was decided."""
    aid = propose(world)
    world.cy.leave(world.cid)
    sync_all(*world.all)
    world.ada.respond(aid, "consent")
    world.bea.respond(aid, "consent")
    assert status_everywhere(world, aid) == "agreed"
    admit(world.bea, world.cid, world.cy.me, "Cy")
    assert status_everywhere(world, aid) == "agreed"
    with pytest.raises(Forbidden, match="while you were away"):
        world.cy.respond(aid, "object", "I was not here")


def test_response_to_an_earlier_version_does_not_count(world):
    """Cy answers the text she saw; Ada revised meanwhile: Cy's answer is for the old round."""
    aid = propose(world)
    world.ada.revise(aid, "Quiet after ten", "No music after 22:00, weekdays only")
    copy_docs(world.ada, world.bea)                      # Bea sees the revision, Cy does not
    world.cy.respond(aid, "consent")                     # Cy has not seen the revision yet
    world.ada.respond(aid, "consent")
    world.bea.respond(aid, "consent")
    assert status_everywhere(world, aid) == "proposed"
    assert world.ada.agreement_view(aid)["waiting_for"] == [world.cy.me]
    world.cy.respond(aid, "consent")
    assert status_everywhere(world, aid) == "agreed"


def test_retiring_is_a_round_of_its_own(world):
    """One member cannot retire what everyone agreed: proposing to retire it opens a round."""
    aid = propose(world)
    for svc in world.all:
        svc.respond(aid, "consent")
    assert status_everywhere(world, aid) == "agreed"
    asked = world.bea.retire(aid)
    assert (asked["status"], asked["retiring"], asked["responses"]) == ("agreed", True, {})
    assert asked["waiting_for"] == [world.ada.me, world.bea.me, world.cy.me]
    assert asked["text"] == "No music after 22:00" and asked["versions"][-1]["retiring"] is True
    with pytest.raises(Conflict, match="open already"):
        world.bea.retire(aid)
    sync_all(*world.all)
    # until the proposal to retire is agreed, the agreement stands: an objection keeps it
    assert status_everywhere(world, aid) == "agreed"
    world.ada.respond(aid, "consent")
    world.bea.respond(aid, "consent")
    world.cy.respond(aid, "object", "we still need it")
    assert status_everywhere(world, aid) == "agreed"
    assert world.ada.agreement_view(aid)["retiring"] is True
    world.cy.respond(aid, "consent")
    assert status_everywhere(world, aid) == "retired"
    assert any(h["summary"] == "proposed to retire “Quiet after ten”" for h in world.cy.history(world.cid))
    rows = world.bea.store.max_rowid()
    assert world.bea.retire(aid)["status"] == "retired"  # again: nothing new written
    assert world.bea.store.max_rowid() == rows
    with pytest.raises(Conflict):
        world.cy.respond(aid, "object", "too late")
    with pytest.raises(Conflict):
        world.cy.revise(aid, "Revived", "")
    assert world.cy.agreement_view(aid)["title"] == "Quiet after ten"


def test_a_removal_is_retired_outright_never_by_a_round(world):
    """Consents to a removal's versions are its cut's evidence: none may mean "do not remove"."""
    rid = world.ada.propose_removal(world.cid, world.cy.me, "never comes")["id"]
    sync_all(*world.all)
    current = world.bea.agreement_view(rid)
    with pytest.raises(Invalid, match="not retired by a round"):
        world.bea._write(world.cid, {"t": "revise", "agreement": rid, "title": current["title"],
                                     "text": current["text"], "review_by": None, "retire": True})
    assert world.bea.retire(rid)["status"] == "retired"
    assert status_everywhere(world, rid) == "retired"


def test_proposal_checks(world):
    rows = world.ada.store.max_rowid()
    for title, text, review_by in [("", "x", None), ("   ", "x", None), (None, "x", None), (5, "x", None),
                                   ("x" * 201, "", None), ("ok", 5, None), ("ok", "x" * 20_001, None),
                                   ("ok", "", "31/12/2026"), ("ok", "", "2026-02-30"), ("ok", "", 20261231)]:
        with pytest.raises(Invalid):
            world.ada.propose(world.cid, title, text, review_by)
    assert world.ada.store.max_rowid() == rows
    with pytest.raises(NotFound):
        world.ada.propose("nope", "A title", "")
    with pytest.raises(NotFound):
        world.ada.respond("nope", "consent")


def test_crew_agreement_is_for_crew_members_only(world):
    crew = world.ada.create_crew(world.cid, "Kitchen", "meals", [world.bea.me])
    sync_all(*world.all)
    agreement = world.bea.propose(crew["id"], "Shared fridge shelf", "")
    assert agreement["entitled"] == [world.ada.me, world.bea.me]
    assert agreement["scope"] == {"type": "crew", "id": crew["id"]}
    sync_all(*world.all)
    with pytest.raises(NotFound):                          # Cy holds the crew's entries but is no member
        world.cy.agreement_view(agreement["id"])
    world.ada.respond(agreement["id"], "consent")
    world.bea.respond(agreement["id"], "consent")
    sync_all(*world.all)
    assert world.ada.agreement_view(agreement["id"])["status"] == "agreed"
    assert world.ada.crew_view(crew["id"])["agreements"][0]["status"] == "agreed"


def test_a_reused_agreement_id_cannot_take_over_an_agreement(world):
    aid = propose(world, title="Quiet after ten")
    mallory = Member("Mallory")
    admit(world.ada, world.cid, mallory.id, "Mallory")
    before = world.ada.agreement_view(aid)
    takeover = mallory.write(world.cid, {"t": "propose", "agreement": aid, "kind": "agreement",
                                         "title": "Mallory decides everything", "text": "", "review_by": None,
                                         "entitled": [mallory.id]}, at=1)
    world.ada.ledger.ingest([takeover.raw])
    after = world.ada.agreement_view(aid)
    assert (after["title"], after["proposed_by"], after["entitled"]) == \
        (before["title"], before["proposed_by"], before["entitled"])
