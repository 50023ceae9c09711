"""Splitting a congregation, what members on each side are shown, and where a moved crew's
records go (Service level, exchanges as the HTTPS transport carries them)."""
from types import SimpleNamespace

import pytest

from factories import congregation, exchange
from node import pages
from node.docstate import gone_from_congregation
from node.errors import Forbidden, Invalid
from sync import protocol


@pytest.fixture
def world(tmp_path):
    (ada, bea, cy), cid = congregation(tmp_path)
    yield SimpleNamespace(ada=ada, bea=bea, cy=cy, all=(ada, bea, cy), cid=cid)
    for svc in (ada, bea, cy):
        svc.close()


def exchange_all(*services) -> None:
    """Every pair exchanges, twice round, as their nodes would."""
    for _ in range(2):
        for a in services:
            for b in services:
                if a is not b:
                    exchange(a, b)


def test_concurrent_splits_are_listed_in_the_same_order_everywhere(world):
    ada, bea, cid = world.ada, world.bea, world.cid
    # Made apart, then met: each node first heard of its own split.
    bea.fork_congregation(cid, "Hillside", [], [])
    ada.fork_congregation(cid, "Lakeside", [], [])
    exchange_all(*world.all)
    orders = {node.my_name(): [c["name"] for c in node.congregation_view(cid)["lineage"]["children"]]
              for node in world.all}
    assert len({tuple(order) for order in orders.values()}) == 1, orders
    assert sorted(orders["Ada"]) == ["Hillside", "Lakeside"]
    assert all(isinstance(c["at"], str) and c["at"].endswith("Z")
               for c in ada.congregation_view(cid)["lineage"]["children"])


def test_a_split_needs_a_name_of_its_own_and_keeps_or_sets_the_purpose(world):
    ada, cid = world.ada, world.cid
    for same in ("Riverside", " riverside ", "RIVER\u00adSIDE", "Riverside\u200b", "Ｒｉｖｅｒｓｉｄｅ"):
        with pytest.raises(Invalid, match="this congregation's own name"):
            ada.fork_congregation(cid, same, [], [])
    kept = ada.fork_congregation(cid, "Upstream", [], [])
    with pytest.raises(Invalid, match="“Upstream” already split off from here"):
        ada.fork_congregation(cid, "UP\u200bstream ", [], [])
    assert kept["purpose"] == "neighbours on one street"
    given = ada.fork_congregation(cid, "Downstream", [], [], "boats")
    assert given["purpose"] == "boats"


def test_a_member_added_to_a_crew_a_split_moved_meanwhile_no_longer_receives_it(world):
    ada, bea, cy, cid = world.ada, world.bea, world.cy, world.cid
    crew = ada.create_crew(cid, "Garden", "", [cy.me])["id"]
    rule = ada.propose(crew, "Water at dawn", "")["id"]
    exchange_all(*world.all)
    # Ada splits off Garden Club with Cy and the crew; Cy, not yet knowing, adds Bea to it.
    child = ada.fork_congregation(cid, "Garden Club", [crew], [cy.me])["id"]
    cy.add_crew_member(crew, bea.me)
    hose = cy.propose(crew, "Share the hose", "")["id"]     # Bea is asked, as Cy's node sees it
    exchange(bea, cy)                                   # Bea hears of it before Cy hears of the split
    exchange_all(*world.all)
    for node in (ada, cy):
        assert node.states[crew].congregation == child
        assert gone_from_congregation(node.states, node.states[crew], bea.me)
        assert crew not in protocol.shared_docs(node, bea.me)
    # What the crew writes from then on stays with the members of its congregation.
    ada.commit(crew, "Pay for the seeds")
    exchange_all(*world.all)
    assert "Pay for the seeds" in {c["what"] for c in cy.crew_view(crew)["commitments"]}
    assert "Pay for the seeds" not in {c["what"] for c in bea.crew_view(crew)["commitments"]}
    # Each side is told, with names: the crew's members, and Bea, whose node lacks Garden Club.
    seen_by_ada = pages.crew_data(ada, crew)
    assert [(m["name"], m["gone"]) for m in seen_by_ada["gone"]] == [("Bea", "outside")]
    seen_by_bea = pages.crew_data(bea, crew)
    assert seen_by_bea["moved_to"] == "Garden Club"
    assert seen_by_bea["congregation"]["id"] is None
    assert {m["name"] for m in seen_by_bea["members"]} == {"Ada", "Bea", "Cy"}
    # Her node offers nothing to do there but leaving: what she wrote would reach no one.
    rows = bea.store.max_rowid()
    with pytest.raises(Forbidden, match="went to Garden Club"):
        bea.commit(crew, "Water the beans")
    assert bea.store.max_rowid() == rows
    assert not pages.agreement_data(bea, rule)["can_write"] and pages.agreement_data(ada, rule)["can_write"]
    assert pages.agreement_data(bea, rule)["cut_off"] == "Garden Club"
    # Nothing of it is asked of her any more, and her lists say where it went.
    assert hose not in {a["id"] for a in bea.due_view()["awaiting_response"]}
    assert hose in {a["id"] for a in ada.due_view()["awaiting_response"]}
    home = pages.home_data(bea, False)
    assert all(crew not in {k["id"] for k in c["crews"]} for c in home["congregations"])
    listed = {k["id"]: k for k in pages.congregation_data(bea, cid, "all", 1)["crews"]}
    assert listed[crew]["went"] == "Garden Club"
    assert pages.agreement_data(ada, rule)["parent"] == {"id": child, "name": "Garden Club"}
    # The members name her in what they write and read about her, and remove her: which
    # tells her node nothing of what the crew wrote since (her removal included).
    removal = ada.propose_removal(crew, bea.me, "She did not come with the crew")
    assert removal["title"] == "Remove Bea"
    assert any(h["summary"] == "added Bea to the crew" for h in ada.history(crew))
    seen = pages.agreement_data(ada, removal["id"])["agreement"]
    assert "member " not in str(seen) and "Bea" in str(seen)
    assert {c["by_name"] for c in ada.crew_view(crew)["commitments"]} == {"Ada"}
    with pytest.raises(Invalid, match="Bea is not in this crew's congregation"):
        ada.commit(crew, "Bea waters on Mondays", None, bea.me)
    exchange_all(ada, cy)
    for node in (ada, cy):
        node.respond(removal["id"], "consent")
    exchange_all(ada, cy)
    assert ada.states[crew].members[bea.me].status == "removed"
    held = bea.store.max_rowid()
    exchange_all(*world.all)
    assert bea.store.max_rowid() == held and removal["id"] not in bea.states[crew].agreements
    assert bea.leave(crew)["status"] == "left"                # put away on her own node


def test_a_crew_two_splits_took_at_once_goes_to_one_and_the_other_says_where(world):
    ada, bea, cid = world.ada, world.bea, world.cid
    crew = ada.create_crew(cid, "Tool library", "", [bea.me])["id"]
    exchange_all(*world.all)
    made = {ada.fork_congregation(cid, "Toolside A", [crew], [bea.me])["id"]: "Toolside A",
            bea.fork_congregation(cid, "Toolside B", [crew], [ada.me])["id"]: "Toolside B"}
    exchange_all(*world.all)
    for node in (ada, bea):
        there = node.states[crew].congregation
        assert there in made
        other = next(child for child in made if child != there)
        assert pages.congregation_data(node, there, "all", 1)["taken_elsewhere"] == []
        assert pages.congregation_data(node, other, "all", 1)["taken_elsewhere"] == \
            [{"name": "Tool library", "to": made[there]}]
