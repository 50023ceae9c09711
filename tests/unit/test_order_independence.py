"""State is a function of entries: the same entries in any order give the same state.

Four members on four Services write into one congregation and one crew, partly concurrently
(without syncing in between), so the set holds concurrent renames, responses, revisions,
retirement and commitment changes. That set is then fed in random orders and random batch
sizes (hypothesis) to fresh Services, whose views must all be the same.
"""
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import admit, all_raw, congregation, copy_docs, service, sync_all
from node import views
from node.service import Service


def digest(svc: Service) -> dict:
    """Every document's state as the views show it, plus what was held, independent of who looks."""
    out = {}
    for doc, state in sorted(svc.states.items()):
        names = svc.states.get(state.congregation) or state
        if state.type == "congregation":
            shown = {"name": state.meta_value("name"), "purpose": state.meta_value("purpose"),
                     "members": views.member_list(state), "agreements": views.agreements_view(state)}
        else:
            shown = views.crew_view(state, names)
        history = sorted((a, d, s, at) for a, d, s, at, *_ in svc.store.history(doc))
        out[doc] = {"type": state.type, "view": shown, "vector": dict(state.vector), "count": state.count,
                    "history": history}
    return out


def observer_views(svc: Service, cid: str, crew_id: str) -> dict:
    """The Service's own views (through a member's eyes)."""
    cong = svc.congregation_view(cid)
    return {"congregation": cong, "crew": svc.crew_view(crew_id),
            "agreements": {a["id"]: svc.agreement_view(a["id"]) for a in cong["agreements"]},
            "list": svc.list_congregations()}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """Entries of Ada, Bea, Cy and Dee, with concurrent changes; returns (raws, ada's home, ids)."""
    tmp = tmp_path_factory.mktemp("order")
    (ada, bea, cy), cid = congregation(tmp, ("Ada", "Bea", "Cy"))
    dee = service(tmp, "Dee")
    crew = ada.create_crew(cid, "Kitchen", "we cook", [bea.me, cy.me])["id"]
    sync_all(ada, bea, cy)
    house = ada.propose(cid, "Quiet after ten", "No music after 22:00")["id"]
    bins = bea.propose(cid, "Bins on Tuesday", "")["id"]
    fridge = cy.propose(crew, "Fridge shelf each", "")["id"]
    rice = ada.commit(crew, "Buy rice", "2026-12-31")["id"]
    cook = bea.commit(crew, "Cook on Friday", None, cy.me)["id"]
    sync_all(ada, bea, cy)
    # concurrent, unsynced: Dee joins while the others answer, rename, revise and retire
    admit(ada, cid, dee.me, "Dee")
    ada.respond(house, "consent")
    bea.respond(house, "object", "make it 23:00")
    cy.respond(house, "consent")
    bea.revise(bins, "Bins on Tuesday night", "put out after 20:00")
    ada.respond(bins, "consent")                     # to the old version: Ada has not seen the revision
    cy.retire(bins)                                  # concurrent with Bea's revision
    cy.set_name("Cyrus")
    bea.set_name("Beatrix")
    ada.set_commitment_status(rice, "done")
    cy.set_commitment_status(rice, "released")       # concurrent with Ada's "done"
    cy.set_commitment_status(cook, "done")
    bea.respond(fridge, "stand_aside")
    cy.respond(fridge, "consent")
    sync_all(ada, bea, cy)
    copy_docs(ada, dee)
    ada.add_crew_member(crew, dee.me)
    sync_all(ada, bea, cy, dee)
    oven = dee.propose(crew, "Oven rota", "weekly")["id"]
    dee.respond(oven, "consent")
    ada.respond(fridge, "object", "two shelves for Dee")
    dee.commit(crew, "Clean the oven")
    bea.respond(house, "consent")
    cy.revise(house, "Quiet after ten", "No music after 22:00, weekends 23:00")
    sync_all(ada, bea, cy, dee)
    cy.respond(oven, "stand_aside")
    sync_all(ada, bea, cy, dee)
    raws = all_raw(ada)
    assert len(raws) > 30
    expected_sets = [set(all_raw(s)) for s in (ada, bea, cy, dee)]
    assert all(s == expected_sets[0] for s in expected_sets), "the four nodes did not converge"
    expected = digest(ada)
    for other in (bea, cy, dee):
        assert digest(other) == expected
    yield {"raws": raws, "home": ada.home, "cid": cid, "crew": crew, "expected": expected,
           "expected_views": observer_views(ada, cid, crew)}
    for svc in (ada, bea, cy, dee):
        svc.close()


def fresh_observer(scenario, root: Path) -> Service:
    """A Service holding nothing yet, seeing through Ada's identity (a restore of her node)."""
    home = root / "observer"
    home.mkdir()
    shutil.copytree(scenario["home"] / "identity", home / "identity")
    return Service(home)


def feed(svc: Service, raws: list[bytes], batches: list[int]) -> list:
    refused, i, sizes = [], 0, iter(batches)
    while i < len(raws):
        size = next(sizes, 1)
        result = svc.ledger.ingest(raws[i:i + size])
        refused.extend(result.refused)
        i += size
    return refused


def test_log_order_gives_the_expected_state(scenario, tmp_path):
    svc = fresh_observer(scenario, tmp_path)
    refused = feed(svc, scenario["raws"], [len(scenario["raws"])])
    assert refused == [] and svc.store.pending_count() == 0
    assert digest(svc) == scenario["expected"]
    assert observer_views(svc, scenario["cid"], scenario["crew"]) == scenario["expected_views"]
    svc.close()


def test_reverse_order_one_at_a_time(scenario, tmp_path):
    svc = fresh_observer(scenario, tmp_path)
    refused = feed(svc, list(reversed(scenario["raws"])), [])
    assert refused == [] and svc.store.pending_count() == 0
    assert digest(svc) == scenario["expected"]
    svc.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_any_order_and_batching_gives_the_same_state(scenario, data):
    raws = scenario["raws"]
    order = data.draw(st.permutations(range(len(raws))), label="order")
    batches = data.draw(st.lists(st.integers(1, 8), max_size=len(raws)), label="batches")
    with tempfile.TemporaryDirectory() as root:
        svc = fresh_observer(scenario, Path(root))
        try:
            refused = feed(svc, [raws[i] for i in order], batches)
            assert refused == [], refused
            assert svc.store.pending_count() == 0
            assert digest(svc) == scenario["expected"]
            assert observer_views(svc, scenario["cid"], scenario["crew"]) == scenario["expected_views"]
        finally:
            svc.close()


@pytest.mark.parametrize("seed", range(20))
def test_shuffled_one_at_a_time(scenario, tmp_path, seed):
    """Uniformly shuffled orders, each entry on its own: an entry accepted before another it
    conflicts with (a retirement before a concurrent revision) must not change the outcome."""
    raws = list(scenario["raws"])
    random.Random(seed).shuffle(raws)
    svc = fresh_observer(scenario, tmp_path)
    refused = feed(svc, raws, [])
    assert refused == [] and svc.store.pending_count() == 0
    assert digest(svc) == scenario["expected"]
    svc.close()


def test_order_survives_a_restart(scenario, tmp_path):
    """Half the entries in a random order, a restart (snapshot), then the rest: same state."""
    raws = list(scenario["raws"])
    random.Random(7).shuffle(raws)
    svc = fresh_observer(scenario, tmp_path)
    feed(svc, raws[: len(raws) // 2], [3] * len(raws))
    home = svc.home
    svc.close()
    svc = Service(home)
    feed(svc, raws[len(raws) // 2:], [5] * len(raws))
    assert svc.store.pending_count() == 0
    assert digest(svc) == scenario["expected"]
    svc.close()
    svc = Service(home)                                    # and once more from the snapshot alone
    assert digest(svc) == scenario["expected"]
    svc.close()
