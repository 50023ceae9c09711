"""sync.protocol between in-memory Services: batching, cursors, prefetching.

Exchanges run through `protocol.run_exchange` with `protocol.serve` as the remote, exactly the
bytes the HTTPS transport would carry, with a small batch size so that long documents take
many rounds.
"""
import pytest

from factories import admit, congregation, copy_docs, sync_until_quiet
from node.entries import decode_entry
from node import carry
from node.service import Service
from sync import protocol


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(protocol, "BATCH_ENTRIES", 3)


def exchange(client, server):
    return protocol.run_exchange(lambda fn, *a: fn(client, *a), server.me,
                                 lambda name, body: protocol.serve(server, client.me, name, body))


def crew_members(svc, crew):
    return set(svc.states[crew].members)


def test_a_document_the_client_does_not_offer_is_sent_past_what_it_holds(tmp_path, small_batches):
    """The server holds a crew the client is in, but the client does not know yet that the
    server is in it too (so it does not offer that crew): the server sends the crew from its
    start, and the exchange must go on past the entries the client holds already (a cursor),
    not stop at the first batch that brings nothing new."""
    (ada, bea, cy, dee), cid = congregation(tmp_path, ("Ada", "Bea", "Cy", "Dee"))
    crew = bea.create_crew(cid, "Kitchen", "", [cy.me])["id"]
    for i in range(7):                                  # more than two batches of crew entries
        bea.propose(crew, f"Shelf {i}", "")
    copy_docs(bea, cy)                                  # Cy holds the crew as it was
    bea.add_crew_member(crew, dee.me)                   # then Dee joins it
    copy_docs(bea, dee)
    assert dee.me not in crew_members(cy, crew)
    # Cy asks Dee: Cy does not offer the crew (Dee is not in it, as far as Cy knows).
    assert crew not in protocol.offer(cy, dee.me)["have"]
    received, _ = exchange(cy, dee)
    assert received == 1                                # the addition, past 8 entries Cy holds
    assert dee.me in crew_members(cy, crew)
    assert exchange(cy, dee) == (0, 0)


def test_a_long_history_arrives_in_batches_and_a_second_exchange_moves_nothing(tmp_path, small_batches):
    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    crews = [ada.create_crew(cid, f"Crew {i}", "", [bea.me])["id"] for i in range(3)]
    for i in range(5):
        ada.propose(cid, f"Topic {i}", "")
        for crew in crews:
            ada.propose(crew, f"Crew topic {i}", "")
    received, sent = exchange(bea, ada)
    assert sent == 0 and received == sum(ada.states[d].count for d in crews) + 5
    for doc in [cid, *crews]:
        assert bea.states[doc].vector == ada.states[doc].vector
    assert exchange(bea, ada) == (0, 0)
    assert exchange(ada, bea) == (0, 0)


def test_a_cursor_from_the_peer_is_shape_checked(tmp_path):
    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    for after in ([], {"x": 1}, {cid: -1}, {cid: "7"}, {cid: True}):
        with pytest.raises(protocol.ProtocolError):
            protocol.serve(ada, bea.me, "exchange", protocol.pack({"have": {}, "after": after}))
    # A cursor past everything: nothing more of that document.
    meta, entries = protocol.unpack(protocol.serve(ada, bea.me, "exchange",
                                                   protocol.pack({"have": {}, "after": {cid: 10**12}})))
    assert entries == [] and meta["more"] is False


def test_prefetching_the_next_batch_brings_the_same(tmp_path, small_batches):
    """With prefetch the next batch is asked for while the last is taken in (as the engine does
    over HTTPS): each Service on its own NodeThread, as in a running node."""
    from node.worker import NodeThread

    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    crew = ada.create_crew(cid, "Kitchen", "", [bea.me])["id"]
    for i in range(6):
        ada.propose(cid, f"Topic {i}", "")
        ada.propose(crew, f"Crew topic {i}", "")
    bea.propose(cid, "From Bea", "")
    homes = ada.home, bea.home
    ada.close()
    bea.close()
    server, client = (NodeThread(lambda home=home: Service(home)) for home in homes)
    try:
        server_me, client_me = server.call(lambda s: s.me), client.call(lambda s: s.me)
        remote = lambda name, body: server.call(protocol.serve, client_me, name, body)  # noqa: E731
        received, sent = protocol.run_exchange(client.call, server_me, remote, prefetch=True)
        assert (received, sent) == (13, 1)
        for doc in (cid, crew):
            assert client.call(lambda s: s.states[doc].vector) == server.call(lambda s: s.states[doc].vector)
        assert protocol.run_exchange(client.call, server_me, remote, prefetch=True) == (0, 0)
    finally:
        server.stop()
        client.stop()


def test_the_last_batch_is_as_small_as_the_first(tmp_path, monkeypatch):
    """Full batches, then a small last one: what arrives last is taken in and stored with
    nothing left to overlap it, so it is kept short."""
    monkeypatch.setattr(protocol, "BATCH_ENTRIES", 5)
    monkeypatch.setattr(protocol, "FIRST_BATCH", 2)
    assert [protocol.next_limit(left) for left in (4, 5, 7, 8, 30)] == [5, 3, 5, 5, 5]
    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    while ada.states[cid].count < 13:
        ada.propose(cid, f"Topic {ada.states[cid].count}", "")
    fresh = Service(tmp_path / "fresh-bea")
    fresh.identity = bea.identity                      # Bea's identity on an empty node
    sizes = []

    def remote(name, body):
        reply = protocol.serve(ada, fresh.me, name, body)
        if name == "exchange":
            sizes.append(len(protocol.unpack(reply)[1]))
        return reply

    received, _ = protocol.run_exchange(lambda fn, *a: fn(fresh, *a), ada.me, remote)
    assert received == 13
    # 2 first; 11 left: a full 5; 6 left: 4, so that the last is 2 (not 5 and then 1).
    assert sizes == [2, 5, 4, 2]


def test_a_member_removed_from_the_congregation_no_longer_receives_its_crews(tmp_path):
    """A crew's members are congregation members: once Cy is removed from the congregation,
    nodes no longer send Cy the crew's records (nor seal them in a bundle for Cy), though the
    crew counts Cy as a member until it removes them. Cy's devices can still be retired there."""
    (ada, bea, cy), cid = congregation(tmp_path, ("Ada", "Bea", "Cy"))
    crew = ada.create_crew(cid, "Money", "", [bea.me, cy.me])["id"]
    sync_until_quiet([ada, bea, cy])
    assert crew in protocol.shared_docs(ada, cy.me) and crew in carry.readable_docs(ada.states, cy.me)
    removal = ada.propose_removal(cid, cy.me, "kept the pool money")["id"]
    ada.respond(removal, "consent")
    sync_until_quiet([ada, bea])
    bea.respond(removal, "consent")
    sync_until_quiet([ada, bea])
    assert ada.states[cid].members[cy.me].status == "removed"
    assert ada.states[crew].members[cy.me].status == "active"
    for node in (ada, bea):
        assert crew not in protocol.peer_scope(node, cy.me)
        assert crew not in carry.readable_docs(node.states, cy.me)
    secret = ada.commit(crew, "Count the pool", None, None)["id"]
    sync_until_quiet([ada, bea, cy])
    assert [c["id"] for c in bea.crew_view(crew)["commitments"]] == [secret]
    assert cy.crew_view(crew)["commitments"] == []
    assert cy.states[cid].members[cy.me].status == "removed"   # Cy's node learns why from the congregation
    # Bea, a member of both, still gets everything of the crew.
    assert crew in protocol.peer_scope(ada, bea.me)
    # Nor does Cy learn how far the congregation and the crew have come (their vectors and
    # heads), and Cy's node, given none, pushes nothing of them.
    asked = protocol.pack(protocol.offer(cy, ada.me))
    assert set(protocol.unpack(asked)[0]["have"]) == {cid, crew}
    reply = protocol.unpack(protocol.serve(ada, cy.me, "exchange", asked))[0]
    assert reply["want"] == {} and reply["want_heads"] == {}
    assert set(protocol.unpack(protocol.serve(ada, bea.me, "exchange", asked))[0]["want"]) == {cid, crew}
    pushed = []

    def remote(name, body):
        pushed.append(name)
        return protocol.serve(ada, cy.me, name, body)

    assert protocol.run_exchange(lambda fn, *a: fn(cy, *a), ada.me, remote) == (0, 0)
    assert "push" not in pushed
    # Asking Cy's node, Ada's tells it only how far the congregation had come when Cy was
    # removed, not the agreement written since, and nothing of the crew.
    ada.propose(cid, "After Cy", "")
    offered = protocol.offer(ada, cy.me)
    assert offered["have"] == {cid: cy.states[cid].vector} != {cid: ada.states[cid].vector}
    assert offered["heads"] == {}
    assert exchange(ada, cy) == (0, 0)


def test_a_peer_learns_nothing_of_a_document_it_is_not_known_to_be_in(tmp_path):
    """Cy, in the congregation but not in its crew, asks about the crew by its id: Ada's node
    answers as it would for a document it does not hold (no vector, no heads), so Cy learns
    neither who writes in the crew nor how much; Bea, in the crew, is told."""
    (ada, bea, cy), cid = congregation(tmp_path, ("Ada", "Bea", "Cy"))
    crew = ada.create_crew(cid, "Money", "", [bea.me])["id"]
    for i in range(3):
        ada.propose(crew, f"Pool {i}", "")
    unheard = "f" * 64
    asked = protocol.pack({"have": {crew: {}, unheard: {}}})
    reply = protocol.unpack(protocol.serve(ada, cy.me, "exchange", asked))[0]
    assert reply["want"] == {crew: {}, unheard: {}, cid: ada.states[cid].vector}
    assert set(reply["want_heads"]) == {cid}
    told = protocol.unpack(protocol.serve(ada, bea.me, "exchange", asked))[0]
    assert told["want"][crew] == ada.states[crew].vector and set(told["want_heads"]) == {cid, crew}


def test_a_member_admitted_elsewhere_proves_it_and_pushes_only_what_is_lacking(tmp_path):
    """Bea admits Cy; Ada's node has not heard of it, so it tells Cy nothing of the
    congregation. Cy's node sends the admission first (after the entries of Bea's log before
    it), then Ada's node tells it what it lacks: Cy's own entries, not the whole history."""
    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    for i in range(30):
        ada.propose(cid, f"Topic {i}", "")
    copy_docs(ada, bea)
    cy = Service(tmp_path / "Cy", name="Cy")
    admit(bea, cid, cy.me, "Cy")
    copy_docs(bea, cy)
    cy.propose(cid, "Hello from Cy", "")
    assert cy.me not in ada.states[cid].members
    lacked = len(cy.store.raw_after(cid, ada.store.vector(cid)))      # Bea's invite and admission, Cy's own
    pushed = []

    def remote(name, body):
        if name == "push":
            pushed.extend(decode_entry(raw) for raw in protocol.unpack(body)[1])
        return protocol.serve(ada, cy.me, name, body)

    received, sent = protocol.run_exchange(lambda fn, *a: fn(cy, *a), ada.me, remote)
    assert ada.states[cid].members[cy.me].status == "active"
    assert "Hello from Cy" in {a["title"] for a in ada.congregation_view(cid)["agreements"]}
    assert {e.device for e in pushed} <= {bea.identity.device_id, cy.identity.device_id}
    assert received == 0 and sent == lacked
    assert exchange(cy, ada) == (0, 0)


def test_entries_a_peer_pushes_wait_in_that_peer_s_share_of_the_places(tmp_path, monkeypatch):
    import node.ledger
    monkeypatch.setattr(node.ledger, "MAX_PENDING_PER_PEER", 2)
    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    before = bea.store.vector(cid)
    for i in range(5):
        bea.propose(cid, f"Topic {i}", "")
    fresh = bea.store.raw_after(cid, before)                        # Bea's five, in log order
    reply, _ = protocol.unpack(protocol.serve(ada, bea.me, "push", protocol.pack({"docs": [cid]}, fresh[1:])))
    assert reply["pending"] == 4 and ada.store.pending_count() == 2     # the first is missing
    reply, _ = protocol.unpack(protocol.serve(ada, bea.me, "push", protocol.pack({"docs": [cid]}, fresh)))
    assert reply["accepted"] == 5 and ada.store.pending_count() == 0


@pytest.mark.parametrize("batch", [3, 10_000])
def test_a_newcomer_pushes_back_nothing_it_just_received(tmp_path, monkeypatch, batch):
    """The server's answer gives its vectors for every document the client may see, so the
    client's push phase does not send back what it has just received (it used to, whole)."""
    monkeypatch.setattr(protocol, "BATCH_ENTRIES", batch)
    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    crew = ada.create_crew(cid, "Kitchen", "", [bea.me])["id"]
    for i in range(4):
        ada.propose(crew, f"Crew topic {i}", "")
    fresh = Service(tmp_path / "fresh-bea")
    fresh.identity = bea.identity                      # Bea's identity on an empty node
    pushed = []

    def remote(name, body):
        if name == "push":
            pushed.extend(protocol.unpack(body)[1])
        return protocol.serve(ada, fresh.me, name, body)

    received, sent = protocol.run_exchange(lambda fn, *a: fn(fresh, *a), ada.me, remote)
    assert received == sum(s.count for s in ada.states.values()) and sent == 0
    assert pushed == []


def _threads_named(prefix: str) -> list:
    import threading
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_garbled_batch_mid_exchange_fails_it_and_keeps_what_came_before(tmp_path, small_batches, prefetch):
    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    for i in range(8):
        ada.propose(cid, f"Topic {i}", "")
    asked = []

    def remote(name, body):
        asked.append(name)
        if name == "exchange" and len(asked) == 2:
            return b"\x00\x00\x00\x09not json!"
        return protocol.serve(ada, bea.me, name, body)

    before = bea.states[cid].count
    with pytest.raises(protocol.ProtocolError, match="not JSON"):
        protocol.run_exchange(lambda fn, *a: fn(bea, *a), ada.me, remote, prefetch=prefetch)
    assert bea.states[cid].count == before + 3            # the first batch is kept
    assert _threads_named("crewnode-fetch") == []         # and nothing is left running
    assert protocol.run_exchange(lambda fn, *a: fn(bea, *a), ada.me,
                                 lambda name, body: protocol.serve(ada, bea.me, name, body), prefetch=prefetch)[0] == 5


@pytest.mark.parametrize("prefetch", [False, True])
def test_a_peer_that_always_has_more_is_asked_a_bounded_number_of_times(tmp_path, monkeypatch, prefetch):
    monkeypatch.setattr(protocol, "MAX_ROUNDS", 7)
    (ada, bea), cid = congregation(tmp_path, ("Ada", "Bea"))
    asked = []

    def remote(name, body):
        asked.append(name)
        # Nothing to send, yet "more", with a cursor that moves every time.
        return protocol.pack({"more": True, "after": {cid: len(asked)}, "want": {}})

    protocol.run_exchange(lambda fn, *a: fn(bea, *a), ada.me, remote, prefetch=prefetch)
    assert asked.count("exchange") == 7               # on while the cursor moves, never past the bound
