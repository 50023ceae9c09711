"""The accept pipeline (Ledger.ingest): what a node does with entries other nodes send it.

Ada runs a real Service; Mo is a member without a node (entries built by hand) and Eve a
stranger. Every refusal test also checks that the node's state and store did not change, and
most end by showing the untouched entry is accepted, so a refusal is the check at work and not
a broken fixture.
"""
import os
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map

from factories import Member, admit, all_raw, content_edits, copy_docs, propose_op, service
from node.ids import b32, now_ms
from node.entries import MAX_BODY, MAX_ENTRY, build_entry
from node.identity import Identity, make_device_cert, new_device, raw_public
from node.ledger import FORKED
from node.rules import MAX_TEXT, MAX_TITLE, invite_message
from node.service import Service, invite_key


@pytest.fixture
def world(tmp_path):
    ada = service(tmp_path, "Ada")
    cid = ada.create_congregation("Riverside", "neighbours")["id"]
    mo = Member("Mo")
    admit(ada, cid, mo.id, "Mo")
    # Mo writes after what he was admitted with, as his node would: in the same millisecond,
    # the order of his name and the admission's would be left to their hashes.
    mo.last_at = ada.states[cid].latest_at
    world = SimpleNamespace(ada=ada, cid=cid, mo=mo, tmp=tmp_path)
    yield world
    world.ada.close()


def fingerprint(svc: Service, cid: str) -> dict:
    """Everything a refused entry must leave as it was."""
    return {"view": svc.congregation_view(cid), "vector": svc.store.vector(cid),
            "rows": svc.store.max_rowid(), "pending": svc.store.pending_count(),
            "heads": dict(svc.ledger.heads), "count": svc.states[cid].count}


def refused_reasons(result) -> list[str]:
    return [r for _, r in result.refused]


def counts(result) -> dict:
    """accepted/pending/known/refused counts of an IngestResult."""
    return {"accepted": len(result.accepted), "pending": result.pending, "known": result.known,
            "refused": len(result.refused)}


def test_member_entry_is_accepted(world):
    """The control case: Mo's well-formed entry is accepted and shows in the state."""
    op = propose_op(world.ada.states[world.cid].active_members(), title="Bikes in the hall")
    entry = world.mo.write(world.cid, op)
    result = world.ada.ledger.ingest([entry.raw])
    assert counts(result) == {"accepted": 1, "pending": 0, "known": 0, "refused": 0}
    assert world.ada.store.has(entry.hash)
    assert world.ada.agreement_view(op["agreement"])["proposed_by"] == world.mo.id


def test_forged_signature_is_refused(world):
    entry = world.mo.write(world.cid, {"t": "name", "name": "Mo Jones"})
    before = fingerprint(world.ada, world.cid)
    for forged in (entry.raw[:-64] + bytes(64),
                   entry.raw[:-1] + bytes([entry.raw[-1] ^ 1]),
                   entry.raw[:-64] + new_device(Ed25519PrivateKey.generate()).sign(b"x")):
        result = world.ada.ledger.ingest([forged])
        assert result.accepted == [] and refused_reasons(result) == ["signature does not hold"]
    assert fingerprint(world.ada, world.cid) == before
    assert len(world.ada.ledger.ingest([entry.raw]).accepted) == 1


def test_an_entry_a_later_one_vouches_for_is_taken_in_whatever_batch_brings_it(world):
    """Mo's device signed Y, which names X by hash, but X's own signature does not hold (a
    careless device, or one that wants nodes to disagree). Y's signature vouches for X, in one
    batch as in a run; a node that gets X alone first must still take it in once Y waits for
    it, or it would hold other entries than its peers for good."""
    mo, cid = world.mo, world.cid
    x = mo.write(cid, {"t": "name", "name": "Mo X"})
    y = mo.write(cid, {"t": "name", "name": "Mo Y"})
    x_unsigned = x.raw[:-64] + bytes(64)
    cy = service(world.tmp, "Cy")
    copy_docs(world.ada, cy)
    assert len(cy.ledger.ingest([x_unsigned, y.raw]).accepted) == 2
    before = fingerprint(world.ada, cid)
    result = world.ada.ledger.ingest([x_unsigned])
    assert refused_reasons(result) == ["signature does not hold"] and fingerprint(world.ada, cid) == before
    assert world.ada.ledger.ingest([y.raw]).pending == 1
    # Y vouches for X only: not for another entry at X's place, whose signature does not hold either
    other = mo.write(cid, {"t": "name", "name": "Mo forged"}, seq=x.seq, prev=x.prev)
    result = world.ada.ledger.ingest([other.raw[:-64] + bytes(64)])
    assert refused_reasons(result) == ["signature does not hold"] and world.ada.store.pending_count() == 1
    result = world.ada.ledger.ingest([x_unsigned])
    assert len(result.accepted) == 2 and result.refused == [] and world.ada.store.pending_count() == 0
    assert all_raw(world.ada, cid) == all_raw(cy, cid)
    assert world.ada.states[cid].name_of(mo.id) == "Mo Y"
    cy.close()


def test_changed_content_breaks_the_signature(world):
    entry = world.mo.write(world.cid, {"t": "name", "name": "Mo Jones"})
    tampered = entry.raw.replace(b"Mo Jones", b"Mo Smith")
    assert tampered != entry.raw
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([tampered])
    assert result.accepted == [] and len(result.refused) == 1
    assert fingerprint(world.ada, world.cid) == before


def test_broken_chain_waits_and_changes_nothing(world):
    first = world.mo.write(world.cid, {"t": "name", "name": "Mo 1"})
    assert len(world.ada.ledger.ingest([first.raw]).accepted) == 1
    before = fingerprint(world.ada, world.cid)
    wrong = world.mo.write(world.cid, {"t": "name", "name": "Mo 2"}, prev="cd" * 32)
    result = world.ada.ledger.ingest([wrong.raw])
    assert result.accepted == [] and result.pending == 1 and not result.refused
    unchanged = {k: v for k, v in fingerprint(world.ada, world.cid).items() if k != "pending"}
    assert unchanged == {k: v for k, v in before.items() if k != "pending"}
    right = world.mo.write(world.cid, {"t": "name", "name": "Mo 2"}, seq=2, prev=first.hash)
    assert len(world.ada.ledger.ingest([right.raw]).accepted) == 1


def test_certificate_signed_by_another_person_is_refused(world):
    """Eve certifies her device in Mo's name with her own key: the certificate does not hold."""
    eve = Member("Eve")
    forged = {**make_device_cert(eve.person_key, raw_public(eve.identity.device_key)), "person": world.mo.id}
    impostor = Identity(world.mo.id, eve.identity.device_key, forged)
    entry = build_entry(impostor, world.cid, 1, "", 1, {"t": "name", "name": "Mo (really Eve)"}, with_cert=True)
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([entry.raw])
    assert result.accepted == [] and "signature" in refused_reasons(result)[0]
    assert fingerprint(world.ada, world.cid) == before
    assert world.ada.store.pending_count() == 0


def test_certificate_for_another_device_is_refused(world):
    """Eve presents Mo's real certificate on an entry signed by her own device."""
    eve_device = new_device(Ed25519PrivateKey.generate())
    impostor = Identity(world.mo.id, eve_device.device_key, world.mo.identity.cert)
    entry = build_entry(impostor, world.cid, 1, "", 1, {"t": "name", "name": "Mo (really Eve)"}, with_cert=True)
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([entry.raw])
    assert result.accepted == [] and "another device" in refused_reasons(result)[0]
    assert fingerprint(world.ada, world.cid) == before


def test_entry_signed_by_another_device_under_a_real_certificate_is_refused(world):
    """Eve writes an entry naming Mo's device and certificate, signed with her key."""
    eve_device = new_device(Ed25519PrivateKey.generate())

    class Masked(Identity):
        @property
        def device_id(self):
            return world.mo.identity.device_id

    masked = Masked(world.mo.id, eve_device.device_key, world.mo.identity.cert)
    entry = build_entry(masked, world.cid, 1, "", 1, {"t": "name", "name": "Mo (really Eve)"}, with_cert=True)
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([entry.raw])
    assert result.accepted == [] and refused_reasons(result) == ["signature does not hold"]
    assert fingerprint(world.ada, world.cid) == before


def test_non_member_entry_waits_and_changes_nothing(world):
    eve = Member("Eve")
    op = propose_op([eve.id], title="Eve runs everything")
    entries = [eve.write(world.cid, op), eve.write(world.cid, {"t": "name", "name": "Queen Eve"})]
    view_before = world.ada.congregation_view(world.cid)
    rows_before = world.ada.store.max_rowid()
    result = world.ada.ledger.ingest([e.raw for e in entries])
    assert result.accepted == [] and result.pending == 2 and result.refused == []
    assert world.ada.store.pending_count() == 2
    assert not any(world.ada.store.has(e.hash) for e in entries)
    assert world.ada.congregation_view(world.cid) == view_before
    assert world.ada.store.max_rowid() == rows_before
    # more traffic in the document retries them; they still wait
    world.ada.ledger.ingest([world.mo.write(world.cid, {"t": "name", "name": "Mo"}).raw])
    assert world.ada.store.pending_count() == 2
    assert eve.id not in world.ada.states[world.cid].members
    with pytest.raises(Exception):
        world.ada.agreement_view(op["agreement"])


def test_entry_for_an_unknown_document_waits(world):
    entry = world.mo.write("ef" * 32, {"t": "name", "name": "Mo"})
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([entry.raw])
    assert result.accepted == [] and result.pending == 1
    assert "ef" * 32 not in world.ada.states
    assert {k: v for k, v in fingerprint(world.ada, world.cid).items() if k != "pending"} == \
        {k: v for k, v in before.items() if k != "pending"}


def test_entry_against_the_rules_is_refused(world):
    mo = world.mo
    before = fingerprint(world.ada, world.cid)
    bad_ops = [
        {"t": "no-such-op"},
        {"t": "name", "name": ""},
        {"t": "name", "name": 5},
        {"t": "add", "member": mo.id},                      # a crew operation, not a congregation one
        propose_op([mo.id], title=""),
        propose_op([mo.id], review_by="next week"),
        propose_op(["not-a-member-id"]),
        {"t": "invite", "key": "short", "expires": 1},
        {"t": "withdraw", "invite": "short"},
        {"t": "withdraw"},
    ]
    for op in bad_ops:
        entry = mo.write(world.cid, op)
        result = world.ada.ledger.ingest([entry.raw])
        assert result.accepted == [] and len(result.refused) == 1, (op, result.as_dict())
        mo.heads.pop(world.cid)                              # the refused entry never joined Mo's log here
    assert fingerprint(world.ada, world.cid) == before


@pytest.mark.parametrize("op", [
    {"t": "retire", "agreement": ["a list"]},
    {"t": "revise", "agreement": {"a": 1}, "title": "x"},
    {"t": "respond", "agreement": [1], "response": "consent"},
    {"t": "admit", "member": Member().id, "invite": ["k"], "proof": ""},
    {"t": "admit", "member": Member().id, "name": {"n": 1}, "invite": "k", "proof": ""},
    {"t": "invite", "key": ["k"], "expires": 1},
    {"t": "name", "name": ["Mo"]},
    {"t": "propose", "agreement": ["x" * 10], "title": "t", "entitled": []},
    {"t": "withdraw", "invite": ["k"]},
], ids=["retire", "revise", "respond", "admit", "admit-name", "invite", "name", "propose", "withdraw"])
def test_wrongly_typed_operation_fields_are_refused_not_raised(world, op):
    """A hostile member's entry with lists where ids belong must be refused, not crash ingest."""
    entry = world.mo.write(world.cid, op)
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([entry.raw])
    assert result.accepted == [] and len(result.refused) == 1
    assert fingerprint(world.ada, world.cid) == before


def test_wrongly_typed_response_version_is_refused(world):
    op = propose_op(world.ada.states[world.cid].active_members())
    world.ada.ledger.ingest([world.mo.write(world.cid, op).raw])
    entry = world.mo.write(world.cid, {"t": "respond", "agreement": op["agreement"], "response": "consent",
                                       "version": ["v"]})
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([entry.raw])
    assert result.accepted == [] and len(result.refused) == 1
    assert fingerprint(world.ada, world.cid) == before


def test_wrongly_typed_genesis_fields_are_refused(world):
    eve = Member("Eve")
    for op in ({"t": "genesis", "type": "congregation", "members": "abcdef"},
               {"t": "genesis", "type": "congregation", "members": 5},
               {"t": "genesis", "type": "congregation", "name": ["Eve"]},
               {"t": "genesis", "type": "crew", "congregation": world.cid, "members": [5]},
               {"t": "genesis", "type": "guild"}):
        entry = eve.write("", op)
        result = world.ada.ledger.ingest([entry.raw])
        assert result.accepted == [] and len(result.refused) == 1, (op, result.as_dict())
        assert entry.hash not in world.ada.states
        eve.heads.clear()


@pytest.mark.parametrize("kind", ["cut-end", "cut-half", "cut-header", "extra-byte"])
def test_truncated_entry_is_refused(world, kind):
    raw = world.mo.write(world.cid, {"t": "name", "name": "Mo"}).raw
    bad = {"cut-end": raw[:-1], "cut-half": raw[:len(raw) // 2], "cut-header": raw[:6],
           "extra-byte": raw + b"\0"}[kind]
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([bad])
    assert result.accepted == [] and result.refused and result.refused[0][0] is None
    assert fingerprint(world.ada, world.cid) == before
    assert len(world.ada.ledger.ingest([raw]).accepted) == 1


def test_oversized_entries_are_refused(world):
    before = fingerprint(world.ada, world.cid)
    huge_body = world.mo.write(world.cid, {"t": "name", "name": "Mo"}, body=b"\0" * (MAX_BODY + 1))
    world.mo.heads.pop(world.cid)
    huge_op = world.mo.write(world.cid, {"t": "name", "name": "Mo", "pad": "x" * 70_000})
    world.mo.heads.pop(world.cid)
    result = world.ada.ledger.ingest([huge_body.raw, huge_op.raw, b"\0" * (MAX_ENTRY + 1)])
    assert result.accepted == [] and len(result.refused) == 3
    assert fingerprint(world.ada, world.cid) == before


@pytest.mark.parametrize("garbage", [b"", b"\0", os.urandom(71), os.urandom(72), os.urandom(5000),
                                     b"\0\0\0\x02{}\0\0\0\0" + bytes(64), "a string", None, 42])
def test_garbage_is_refused(world, garbage):
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([garbage])
    assert result.accepted == [] and len(result.refused) == 1
    assert fingerprint(world.ada, world.cid) == before


def test_garbage_in_a_batch_does_not_spoil_the_good_entries(world):
    good = world.mo.write(world.cid, {"t": "name", "name": "Mo"})
    result = world.ada.ledger.ingest([b"junk", good.raw, os.urandom(300)])
    assert len(result.accepted) == 1 and len(result.refused) == 2
    assert world.ada.store.has(good.hash)


def test_replayed_entry_is_known_and_changes_nothing(world):
    entry = world.mo.write(world.cid, {"t": "name", "name": "Mo Jones"})
    assert len(world.ada.ledger.ingest([entry.raw]).accepted) == 1
    before = fingerprint(world.ada, world.cid)
    result = world.ada.ledger.ingest([entry.raw])
    assert counts(result) == {"accepted": 0, "pending": 0, "known": 1, "refused": 0}
    own = world.ada.store.raw_after(world.cid, {})
    result = world.ada.ledger.ingest(own)
    assert result.known == len(own) and result.accepted == [] and result.refused == []
    assert fingerprint(world.ada, world.cid) == before


def test_same_entry_twice_in_one_batch_is_accepted_once(world):
    entry = world.mo.write(world.cid, {"t": "name", "name": "Mo Jones"})
    before_count = world.ada.states[world.cid].count
    result = world.ada.ledger.ingest([entry.raw, entry.raw])
    assert len(result.accepted) == 1 and result.known == 1
    assert world.ada.states[world.cid].count == before_count + 1


def test_gap_in_seq_waits_until_the_missing_entry_arrives(world):
    mo, ada, cid = world.mo, world.ada, world.cid
    names = [mo.write(cid, {"t": "name", "name": f"Mo {i}"}) for i in (1, 2, 3, 4)]
    result = ada.ledger.ingest([names[0].raw, names[2].raw, names[3].raw])
    assert len(result.accepted) == 1 and result.pending == 2
    assert ada.store.vector(cid)[mo.identity.device_id] == 1
    assert ada.states[cid].name_of(mo.id) == "Mo 1"
    result = ada.ledger.ingest([names[1].raw])
    assert len(result.accepted) == 3 and ada.store.pending_count() == 0
    assert ada.store.vector(cid)[mo.identity.device_id] == 4
    assert ada.states[cid].name_of(mo.id) == "Mo 4"


def test_pending_entries_survive_a_restart(world):
    mo, cid = world.mo, world.cid
    entries = [mo.write(cid, {"t": "name", "name": f"Mo {i}"}) for i in (1, 2, 3)]
    world.ada.ledger.ingest([entries[0].raw, entries[2].raw])
    home = world.ada.home
    world.ada.close()
    world.ada = again = Service(home)
    assert again.store.pending_count() == 1
    result = again.ledger.ingest([entries[1].raw])
    assert len(result.accepted) == 2
    assert again.states[cid].name_of(mo.id) == "Mo 3"


def test_a_pending_row_that_no_longer_decodes_is_dropped_at_start(world):
    """A waiting entry kept under laxer checks (or garbled on disk) does not stop the node."""
    mo, cid = world.mo, world.cid
    entries = [mo.write(cid, {"t": "name", "name": f"Mo {i}"}) for i in (1, 2, 3)]
    world.ada.ledger.ingest([entries[0].raw, entries[2].raw])
    world.ada.store.add_pending([("ff" * 32, cid, b"garbled", "waits", 0, None)])
    home = world.ada.home
    world.ada.close()
    world.ada = again = Service(home)
    assert again.store.pending_count() == 1                     # the garbled row went, the real one waits
    assert len(again.ledger.ingest([entries[1].raw]).accepted) == 2


def test_waiting_rows_past_the_bound_go_at_start(world, monkeypatch):
    """Rows an older version let wait past today's bound: the longest waiting are kept."""
    import node.ledger
    mo, cid = world.mo, world.cid
    names = [mo.write(cid, {"t": "name", "name": f"Mo {i}"}) for i in range(1, 8)]
    assert world.ada.ledger.ingest([n.raw for n in names[1:]]).pending == 6
    home = world.ada.home
    world.ada.close()
    monkeypatch.setattr(node.ledger, "MAX_PENDING", 3)
    world.ada = again = Service(home)
    assert sorted(again.store.pending_raw()) == sorted((n.hash, n.raw, None) for n in names[1:4])
    assert len(again.ledger.ingest([names[0].raw]).accepted) == 1 + 3


@pytest.mark.parametrize("bound", ["MAX_PENDING", "MAX_PENDING_BYTES"])
def test_waiting_entries_are_bounded_and_nothing_is_lost(world, monkeypatch, bound):
    """Past the bound, an entry that would wait is not kept; it counts as pending, and its
    sender, who still holds it, sends it again: once its gap is filled it is accepted."""
    import node.ledger
    mo, cid = world.mo, world.cid
    names = [mo.write(cid, {"t": "name", "name": f"Mo {i}"}) for i in range(1, 8)]
    monkeypatch.setattr(node.ledger, bound, 3 if bound == "MAX_PENDING" else 3 * len(names[1].raw) + 10)
    result = world.ada.ledger.ingest([n.raw for n in names[1:]])        # seq 1 is missing: all six wait
    assert counts(result) == {"accepted": 0, "pending": 6, "known": 0, "refused": 0}
    assert world.ada.store.pending_count() == 3
    result = world.ada.ledger.ingest([names[0].raw])
    assert len(result.accepted) == 1 + 3 and world.ada.store.pending_count() == 0
    result = world.ada.ledger.ingest([n.raw for n in names])           # the sync after: the rest come again
    assert counts(result) == {"accepted": 3, "pending": 0, "known": 4, "refused": 0}
    assert world.ada.states[cid].name_of(mo.id) == "Mo 7"


def test_one_peer_cannot_take_every_waiting_place(world, monkeypatch):
    """Entries one peer brings wait in at most MAX_PENDING_PER_PEER places, across a restart:
    a member filling them with entries that may never be decided leaves room for others'."""
    import node.ledger
    monkeypatch.setattr(node.ledger, "MAX_PENDING_PER_PEER", 3)
    mo, cid = world.mo, world.cid
    names = [mo.write(cid, {"t": "name", "name": f"Mo {i}"}) for i in range(1, 8)]
    result = world.ada.ledger.ingest([n.raw for n in names[1:]], sender="hostile")   # seq 1 missing
    assert result.pending == 6 and world.ada.store.pending_count() == 3
    home = world.ada.home
    world.ada.close()
    world.ada = again = Service(home)
    assert again.ledger.ingest([n.raw for n in names[4:]], sender="hostile").pending == 3
    assert again.store.pending_count() == 3                       # still no room for that peer
    bo = Member("Bo")
    early = bo.write(cid, {"t": "name", "name": "Bo"})             # waits for Bo's admission
    assert again.ledger.ingest([early.raw], sender="honest").pending == 1
    assert again.store.pending_count() == 4                       # another peer's entry has a place
    result = again.ledger.ingest([names[0].raw], sender="honest")
    assert len(result.accepted) == 1 + 3 and again.store.pending_count() == 1
    assert again.ledger.ingest([n.raw for n in names[4:]], sender="hostile").accepted  # room again


def test_pending_entry_is_accepted_when_its_author_is_admitted_locally(world):
    """Entries of a newcomer that arrived before their admission count once Ada admits them."""
    bo = Member("Bo")
    early = bo.write(world.cid, {"t": "name", "name": "Bo"})
    assert world.ada.ledger.ingest([early.raw]).pending == 1
    admit(world.ada, world.cid, bo.id, "Bo")
    assert world.ada.store.has(early.hash)
    assert world.ada.store.pending_count() == 0


def test_pending_entry_is_accepted_when_its_dependency_arrives_in_another_batch(world):
    bo = Member("Bo")
    early = bo.write(world.cid, {"t": "name", "name": "Bo B"})
    assert world.ada.ledger.ingest([early.raw]).pending == 1
    # Mo admits Bo (Mo holds an invite Ada made)
    from factories import b32, invite_message, invite_key
    secret = invite_key("ABCD-EFGH-JKMN")
    key = b32(raw_public(secret))
    world.ada.ledger.ingest([world.mo.write(world.cid, {"t": "invite", "key": key, "expires": now_ms() + 86_400_000,
                                                        "note": ""}).raw])
    admission = world.mo.write(world.cid, {"t": "admit", "member": bo.id, "name": "Bo", "invite": key,
                                           "proof": b32(secret.sign(invite_message(key, bo.id)))})
    result = world.ada.ledger.ingest([admission.raw])
    assert len(result.accepted) == 2 and world.ada.store.pending_count() == 0
    assert world.ada.store.has(early.hash) and bo.id in world.ada.states[world.cid].members


def test_forged_admission_is_refused(world):
    bo = Member("Bo")
    secret = Ed25519PrivateKey.generate()
    from factories import b32, invite_message
    key = b32(raw_public(secret))
    world.ada.ledger.ingest([world.mo.write(world.cid, {"t": "invite", "key": key, "expires": now_ms() + 86_400_000,
                                                        "note": ""}).raw])
    before = fingerprint(world.ada, world.cid)
    wrong_key = Ed25519PrivateKey.generate()
    admission = world.mo.write(world.cid, {"t": "admit", "member": bo.id, "name": "Bo", "invite": key,
                                           "proof": b32(wrong_key.sign(invite_message(key, bo.id)))})
    result = world.ada.ledger.ingest([admission.raw])
    assert result.accepted == [] and "proof" in refused_reasons(result)[0]
    assert fingerprint(world.ada, world.cid) == before


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    ada = service(tmp, "Ada")
    cid = ada.create_congregation("Riverside", "")["id"]
    mo = Member("Mo")
    admit(ada, cid, mo.id, "Mo")
    yield SimpleNamespace(ada=ada, cid=cid, mo=mo)
    ada.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_bytes_never_break_ingest(shared_world, raws):
    before = fingerprint(shared_world.ada, shared_world.cid)
    result = shared_world.ada.ledger.ingest(raws)
    assert result.accepted == [] and len(result.refused) == len(raws)
    assert fingerprint(shared_world.ada, shared_world.cid) == before


def test_stranger_cannot_put_a_crew_into_the_congregation(world):
    eve = Member("Eve")
    genesis = eve.write("", {"t": "genesis", "type": "crew", "congregation": world.cid,
                             "members": [eve.id, world.ada.me], "nonce": "x", "name": "Eve"})
    before = world.ada.congregation_view(world.cid)
    result = world.ada.ledger.ingest([genesis.raw])
    assert result.accepted == []
    assert world.ada.congregation_view(world.cid) == before


@pytest.mark.parametrize("kind, field", [("propose", "agreement"), ("commit", "commitment")])
def test_a_former_members_void_entry_cannot_void_others_records(world, kind, field):
    """A member who left may still write; what they write is held as void, and a void record
    makes what builds on it void. The record it voids is the one its own place in the log
    defines, not whichever id it claims: else a former member could freeze anyone's agreement
    or commitment by naming it."""
    ada, cid, mo = world.ada, world.cid, world.mo
    bea = Member("Bea")
    admit(ada, cid, bea.id, "Bea")
    if kind == "commit":
        doc = ada.create_crew(cid, "Kitchen", "we cook", [mo.id, bea.id])["id"]
        record = ada.commit(doc, "Buy rice", None)["id"]
    else:
        doc = cid
        record = ada.propose(cid, "Quiet hours", "")["id"]
    device = mo.identity.device_id
    for writer in (mo, bea):
        writer.last_at = ada.states[doc].latest_at
        assert ada.ledger.ingest([writer.write(doc, {"t": "name", "name": writer.name}).raw]).refused == []
    left = mo.write(doc, {"t": "leave", "devices": {device: mo.heads[doc][0] + 1}})
    claim = mo.write(doc, {"t": kind, field: record, "title": "mine now", "what": "mine now"})
    assert ada.ledger.ingest([left.raw]).accepted_count == 1
    result = ada.ledger.ingest([claim.raw])              # (once the leave is in effect)
    assert (result.accepted_count, result.void, result.refused) == (0, 1, [])
    if kind == "commit":
        answer = bea.write(doc, {"t": "status", "commitment": record, "status": "done"})
    else:
        version = ada.states[doc].agreements[record].current.hash
        answer = bea.write(doc, {"t": "respond", "agreement": record, "version": version, "response": "consent"})
    assert ada.ledger.ingest([answer.raw]).accepted_count == 1
    assert ada.store.status_of(answer.hash)[0] == "accepted"


def test_an_invite_a_former_member_named_first_does_not_void_the_admission_it_serves(world):
    """A former member's void invite naming a live invite's key reaches a node before that
    invite, together with an admission that uses it: the admission must not stay void there
    once the real invite arrives, where every other node counts it."""
    ada, cid, mo = world.ada, world.cid, world.mo
    bea, nan = Member("Bea"), Member("Nan")
    admit(ada, cid, bea.id, "Bea")
    device = mo.identity.device_id
    mo.last_at = ada.states[cid].latest_at
    left = mo.write(cid, {"t": "leave", "devices": {device: 1}})
    assert ada.ledger.ingest([left.raw]).accepted_count == 1
    before = ada.store.raw_after(cid, {})                 # Ada's log so far, and Mo's leave
    secret = invite_key(ada.create_invite(cid)["code"])
    key = b32(raw_public(secret))
    invite = ada.store.raw_after(cid, {ada.identity.device_id: ada.ledger.heads[(cid, ada.identity.device_id)][0] - 1})
    mo.last_at = bea.last_at = ada.states[cid].latest_at
    void_invite = mo.write(cid, {"t": "invite", "key": key, "expires": now_ms() + 86_400_000, "note": ""})
    admission = bea.write(cid, {"t": "admit", "member": nan.id, "name": "Nan", "invite": key,
                                "proof": b32(secret.sign(invite_message(key, nan.id)))})
    assert ada.ledger.ingest([void_invite.raw, admission.raw]).void == 1
    assert ada.store.status_of(admission.hash)[0] == "accepted"

    other = service(world.tmp, "Other")
    try:
        other.ledger.ingest(before)
        assert other.ledger.ingest([void_invite.raw]).void == 1          # (once Mo's leave is in effect)
        other.ledger.ingest([admission.raw])                              # before the invite it uses
        other.ledger.ingest(invite)
        assert other.store.status_of(admission.hash)[0] == "accepted"
        assert other.states[cid].members[nan.id].status == "active"
    finally:
        other.close()


@pytest.mark.parametrize("where", ["alone", "in a run"])
def test_an_entry_whose_content_is_not_a_pycrdt_update_is_refused_and_changes_nothing(world, where):
    ada, cid, mo = world.ada, world.cid, world.mo
    assert ada.ledger.ingest([mo.write(cid, {"t": "name", "name": "Mo"}).raw]).refused == []
    good = content_edits(mo, cid, 2)
    bad = mo.write(cid, {"t": "meta"}, b"\x01\x02\x03 not an update")
    after = content_edits(mo, cid, 2)
    batches = [[e.raw] for e in good + [bad] + after] if where == "alone" else [[e.raw for e in good + [bad] + after]]
    results = [ada.ledger.ingest(batch) for batch in batches]
    assert [reason for r in results for _, reason in r.refused] == ["its content is not a pycrdt update"]
    assert sum(r.accepted_count for r in results) == 2 and ada.store.pending_count() == 2   # (after it: wait)
    state = ada.states[cid]
    assert state.vector[mo.identity.device_id] == 3 == ada.store.vector(cid)[mo.identity.device_id]
    assert state.count == len(ada.store.raw_after(cid, {}))
    assert state.meta.to_py()["note-Mo"] == "edit 1 " + "x" * 40
    assert ada.propose(cid, "Quiet hours", "")["id"] in ada.states[cid].agreements     # and the node goes on


def test_a_fork_whose_kept_side_is_not_a_pycrdt_update_is_void(world):
    """A forked log keeps the entry with the lowest hash; held as void, the dropped side never
    had its body applied, and it may be the one that comes to count."""
    ada, cid, mo = world.ada, world.cid, world.mo
    assert ada.ledger.ingest([mo.write(cid, {"t": "name", "name": "Mo"}).raw]).refused == []
    seq, prev = mo.heads[cid]
    good = content_edits(mo, cid, 1)[0]
    for _ in range(200):                                  # (each try another time, so another hash)
        bad = mo.write(cid, {"t": "meta"}, b"\x01\x02\x03", seq=seq + 1, prev=prev)
        if bad.hash < good.hash:
            break
    assert bad.hash < good.hash
    assert ada.ledger.ingest([good.raw]).accepted_count == 1
    ada.ledger.ingest([bad.raw])                          # the fork: recomputed, the bad side kept
    assert ada.store.status_of(bad.hash) == ("void", "its content is not a pycrdt update")
    assert ada.store.status_of(good.hash)[0] == "void"
    assert ada.states[cid].vector[mo.identity.device_id] == seq


def fork_with_the_lower_hash_second(mo, cid: str) -> tuple:
    """Two entries of Mo's at his next seq: a content edit, then a renaming with a lower hash
    (the side every node keeps, once a recompute settles the fork)."""
    seq, prev = mo.heads[cid]
    first = content_edits(mo, cid, 1)[0]
    for _ in range(200):                                  # (each try another time, so another hash)
        second = mo.write(cid, {"t": "name", "name": "Moe"}, seq=seq + 1, prev=prev)
        if second.hash < first.hash:
            return first, second
    raise AssertionError("no lower hash in 200 tries")


def test_a_recompute_writes_only_the_verdicts_that_changed(world, monkeypatch):
    ada, cid, mo = world.ada, world.cid, world.mo
    assert ada.ledger.ingest([mo.write(cid, {"t": "name", "name": "Mo"}).raw]).refused == []
    written = []
    real = ada.store.set_statuses
    monkeypatch.setattr(ada.store, "set_statuses", lambda verdicts: (written.append(dict(verdicts)), real(verdicts)))
    ada.ledger.recompute(cid)
    assert written == [{}]
    # A fork whose other side has the lower hash: the two entries trade places, nothing else moves.
    kept_first, other = fork_with_the_lower_hash_second(mo, cid)
    assert ada.ledger.ingest([kept_first.raw]).accepted_count == 1
    written.clear()
    ada.ledger.ingest([other.raw])
    assert written == [{kept_first.hash: FORKED, other.hash: None}]
    assert ada.store.status_of(kept_first.hash) == ("void", FORKED)
    assert ada.store.status_of(other.hash) == ("accepted", None)
    assert ada.states[cid].name_of(mo.id) == "Moe"


def test_shared_content_longer_than_a_form_allows_is_shown_cut(world):
    """A member's content update may set any text (the forms check lengths, peers need not):
    the node shows the name and purpose only as long as a member may write them."""
    ada, cid, mo = world.ada, world.cid, world.mo
    ydoc = Doc()
    ydoc.apply_update(ada.states[cid].ydoc.get_update())          # Mo's copy, then his edit on it
    before = ydoc.get_state()
    meta = ydoc.get("meta", type=Map)
    with ydoc.transaction():
        meta["name"] = "N" * (MAX_TITLE + 500)
        meta["purpose"] = "P" * (MAX_TEXT + 500)
    name_entry = mo.write(cid, {"t": "name", "name": "Mo"})
    edit = mo.write(cid, {"t": "meta"}, ydoc.get_update(before))
    assert ada.ledger.ingest([name_entry.raw, edit.raw]).accepted_count == 2
    view = ada.congregation_view(cid)
    assert (view["name"], view["purpose"]) == ("N" * MAX_TITLE, "P" * MAX_TEXT)


def test_a_former_members_malformed_entries_are_listed_not_a_broken_page(world):
    """What a member writes after leaving is held as void without the rules looking at it, so
    its fields may be anything: the congregation's page lists it all the same."""
    ada, cid, mo = world.ada, world.cid, world.mo
    device = mo.identity.device_id
    assert ada.ledger.ingest([mo.write(cid, {"t": "name", "name": "Mo"}).raw]).accepted_count == 1
    left = mo.write(cid, {"t": "leave", "devices": {device: mo.heads[cid][0] + 1}})
    assert ada.ledger.ingest([left.raw]).accepted_count == 1
    malformed = [mo.write(cid, op) for op in ({"t": "name"}, {"t": "respond", "agreement": ["x"], "response": 5},
                                              {"t": "revise", "agreement": {"a": 1}, "title": 7},
                                              {"t": "propose", "title": None})]
    assert ada.ledger.ingest([e.raw for e in malformed]).void == 4
    listed = {v["hash"]: v["summary"] for v in ada.congregation_view(cid)["void_entries"]}
    assert [listed[e.hash] for e in malformed] == [f"wrote a “{e.op['t']}” entry that does not hold together"
                                                   for e in malformed]
    assert len(ada.history(cid)) == len(ada.store.raw_after(cid, {}))


@pytest.mark.parametrize("then", ["a quiet moment", "a restart"])
def test_a_recompute_a_peer_calls_for_again_soon_waits_for_a_quiet_moment(world, monkeypatch, then):
    """A former member can send entry after entry that each call for a recompute (a void
    leave, a fork of their own log), each costing seconds on a long history. One called for
    by a peer soon after the last of the same document waits for a quiet moment, is kept
    in the store meanwhile so that a stop or a crash does not lose it, and is then carried
    out: here a fork whose other side has the lower hash, which only a recompute settles."""
    import node.ledger
    # Any recompute counts as costly, and "soon" lasts the whole test.
    monkeypatch.setattr(node.ledger, "COSTLY_S", 0.0)
    monkeypatch.setattr(node.ledger, "RECOMPUTE_SPACING", 10 ** 9)
    ada, cid, mo = world.ada, world.cid, world.mo
    assert ada.ledger.ingest([mo.write(cid, {"t": "name", "name": "Mo"}).raw], sender=mo.id).refused == []
    kept_first, other = fork_with_the_lower_hash_second(mo, cid)
    assert ada.ledger.ingest([kept_first.raw], sender=mo.id).accepted_count == 1
    ada.ledger.recompute(cid)
    ada.ledger.ingest([other.raw], sender=mo.id)
    # Held, as the second of a fork, until the recompute that waits.
    assert ada.ledger.due() == {cid}
    assert ada.store.status_of(other.hash) == ("void", FORKED)
    assert ada.states[cid].name_of(mo.id) == "Mo"
    if then == "a quiet moment":
        # A recompute may make a removal agreed: the quiet moment carries it out too.
        import node.lifecycle
        finalized = []
        real = node.lifecycle.finalize_removals
        monkeypatch.setattr(node.lifecycle, "finalize_removals", lambda svc: finalized.append(svc) or real(svc))
        ada.idle()
        assert finalized == [ada]
    else:
        ada.close()
        world.ada = ada = Service(ada.home)
    assert ada.ledger.due() == set()
    assert ada.store.status_of(kept_first.hash) == ("void", FORKED)
    assert ada.store.status_of(other.hash) == ("accepted", None)
    assert ada.states[cid].name_of(mo.id) == "Moe"
