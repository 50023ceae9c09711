"""Bad input at a real node's sync port (issue 3, "Bad input").

Ada's node serves; Bo's node is an honest member. The attackers are identities made here with
`node.identity.new_device`: Mal, who joined with a real invite code (a member turned hostile),
and a stranger who never joined anything. Each attack must be refused with a clear error where
a reply is possible, must not stop the node serving other peers, and must change nothing
stored (entries and what the API shows; waiting entries too, except where waiting is the
answer: entries of an author who is not a member).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import time
from dataclasses import dataclass, field

import pytest
from conftest import NodeFactory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.entries import SIG_CONTEXT, build_entry, decode_entry
from node.identity import Identity, make_device_cert, new_device, raw_public
from node.ids import b32, canonical_json, now_ms
from node.rules import bind_record_id, invite_message
from node.service import invite_key
from sync import protocol
from sync.engine import verify_peer
from sync.protocol import pack, unpack
from sync.transport import SyncClient, TransportError
from nodes import db_rows
from support import read_until_closed

WAIT = 10.0


# -- the world --------------------------------------------------------------------------------


@dataclass
class Writer:
    """An identity that writes its own entries by hand, keeping its log's seq and prev."""

    identity: Identity
    heads: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.identity.person_id

    def write(self, doc: str, op: dict, body: bytes = b"", seq=None, prev=None):
        top, last = self.heads.get(doc, (0, ""))
        seq = top + 1 if seq is None else seq
        prev = last if prev is None else prev
        bind_record_id(op, doc, self.identity.device_id, seq)
        entry = build_entry(self.identity, doc, seq, prev, now_ms(), op, body, with_cert=seq == 1)
        return entry

    def keep(self, entry) -> None:
        """Remember `entry` as the head of my log (after the node accepted it)."""
        self.heads[entry.doc] = (entry.seq, entry.hash)


@dataclass
class World:
    ada: object
    bo: object
    cid: str
    mal: Writer
    stranger: Writer


def client_for(node, identity: Identity) -> SyncClient:
    return SyncClient(node.sync_address, identity.device_key, identity.cert_blob, verify_peer, timeout=WAIT)


def propose_op(entitled: list[str], title: str) -> dict:
    return {"t": "propose", "agreement": None, "kind": "agreement", "title": title, "text": "",
            "review_by": None, "entitled": entitled}


def stored(node, cid: str, pending: bool = True) -> tuple:
    """What the node holds: entries (and waiting entries), and what its API shows."""
    entries = db_rows(node, "SELECT hash, doc, device, seq, status FROM entries ORDER BY hash")
    waiting = db_rows(node, "SELECT hash FROM pending ORDER BY hash") if pending else None
    view = node.api("GET", f"/api/congregations/{cid}", expect=200)[1]
    listing = node.api("GET", "/api/congregations", expect=200)[1]
    return entries, waiting, view, listing


def push(client: SyncClient, docs: list[str], raws: list[bytes]) -> dict:
    return unpack(client.call("push", pack({"docs": docs}, raws)))[0]


def still_serving(world: World) -> None:
    """The node answers its page, and an honest member's node syncs with it."""
    assert world.ada.api("GET", "/api/health")[0] == 200
    status, answer = world.bo.api("POST", "/api/sync", {"address": world.ada.sync_address})
    assert status == 200, answer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with NodeFactory.for_module(tmp_path_factory.mktemp("sync-adversarial")) as factory:
        ada, bo = factory.start(name="Ada"), factory.start(name="Bo")
        cid = ada.api("POST", "/api/congregations", {"name": "Riverside", "purpose": ""}, expect=201)[1]["id"]
        code = ada.api("POST", f"/api/congregations/{cid}/invites", {}, expect=201)[1]["code"]
        bo.api("POST", "/api/join", {"code": code, "address": ada.sync_address}, expect=202)
        # Mal joins like any newcomer: proves a real code over the sync port.
        mal = Writer(new_device(Ed25519PrivateKey.generate()))
        code = ada.api("POST", f"/api/congregations/{cid}/invites", {}, expect=201)[1]["code"]
        secret = invite_key(code)
        key = b32(raw_public(secret))
        with client_for(ada, mal.identity) as client:
            answer = unpack(client.call("join", pack({"invite": key, "name": "Mal",
                                                      "proof": b32(secret.sign(invite_message(key, mal.id)))})))[0]
        assert answer == {"congregation_id": cid}
        stranger = Writer(new_device(Ed25519PrivateKey.generate()))
        yield World(ada, bo, cid, mal, stranger)


@pytest.fixture
def unchanged(world):
    """Checks after the test that nothing stored changed and that the node still serves."""
    before = stored(world.ada, world.cid)
    yield
    still_serving(world)
    assert stored(world.ada, world.cid) == before


@pytest.fixture
def no_entry_changes(world):
    """As `unchanged`, for attacks whose answer is to keep entries waiting."""
    before = stored(world.ada, world.cid, pending=False)
    yield
    still_serving(world)
    assert stored(world.ada, world.cid, pending=False) == before


# -- bytes on the wire -----------------------------------------------------------------------------


def sync_port(world) -> tuple[str, int]:
    host, port = world.ada.sync_address.rsplit(":", 1)
    return host, int(port)


@pytest.mark.usefixtures("unchanged")
def test_garbage_bytes(world):
    with socket.create_connection(sync_port(world), timeout=WAIT) as sock:
        sock.sendall(os.urandom(4096))
        answer = read_until_closed(sock, WAIT)
    assert not answer.startswith(b"HTTP/")            # at most a TLS alert, then closed


@pytest.mark.usefixtures("unchanged")
def test_plain_http_to_the_tls_port(world):
    with socket.create_connection(sync_port(world), timeout=WAIT) as sock:
        sock.sendall(b"POST /v1/exchange HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd")
        answer = read_until_closed(sock, WAIT)
    assert not answer.startswith(b"HTTP/1.1 200")


@pytest.mark.usefixtures("unchanged")
def test_tls_with_garbage_inside(world):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(sync_port(world), timeout=WAIT) as raw:
        with context.wrap_socket(raw) as sock:
            sock.sendall(os.urandom(2048) + b"\r\n\r\n")
            answer = read_until_closed(sock, WAIT)
    if answer:
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    # An HTTP request without a session: refused before its body is read.
    with socket.create_connection(sync_port(world), timeout=WAIT) as raw:
        with context.wrap_socket(raw) as sock:
            sock.sendall(b"POST /v1/push HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\n"
                         + b"\xff" * 5)
            answer = read_until_closed(sock, WAIT)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"authenticate" in answer


@pytest.mark.usefixtures("unchanged")
def test_idle_and_half_open_connections_do_not_stall_the_node(world):
    sockets = [socket.create_connection(sync_port(world), timeout=WAIT) for _ in range(8)]
    try:
        sockets[0].sendall(b"\x16\x03\x01")         # the start of a TLS record, then silence
        started = time.monotonic()
        still_serving(world)
        assert time.monotonic() - started < WAIT
    finally:
        for sock in sockets:
            sock.close()


# -- malformed protocol messages from an authenticated peer -----------------------------------------


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("name", ["exchange", "push"])
def test_garbage_and_truncated_messages(world, name):
    good = pack({"have": {world.cid: {}}, "docs": [world.cid]},
                [world.mal.write(world.cid, {"t": "name", "name": "Mal"}).raw])
    cases = {
        os.urandom(300): "",
        b"": "truncated",
        b"\x00\x00": "truncated",
        good[:3]: "truncated",
        good[:-10]: "truncated",
        good[:30]: "truncated",
        b"\x00\x00\x00\x02[]": "JSON object",
        b"\x00\x00\x00\x05{bad}": "not JSON",
        b"\xff\xff\xff\xff" + b"x" * 100: "truncated",
    }
    with client_for(world.ada, world.mal.identity) as client:
        for body, words in cases.items():
            with pytest.raises(TransportError) as info:
                client.call(name, body)
            assert info.value.status == 400, (body[:40], info.value)
            assert words in info.value.message
        with pytest.raises(TransportError) as info:
            client.call("no-such-call", pack({}))
        assert info.value.status == 400 and "no such sync call" in info.value.message


@pytest.mark.usefixtures("unchanged")
def test_malformed_vectors_are_refused(world):
    with client_for(world.ada, world.mal.identity) as client:
        for have in ([], {"short": {}}, {world.cid: {"dev": -1}}, {world.cid: {"!!": 1}},
                     {world.cid: {world.mal.identity.device_id: "7"}}, {world.cid: []}):
            with pytest.raises(TransportError) as info:
                client.call("exchange", pack({"have": have}))
            assert info.value.status == 400, have
        with pytest.raises(TransportError) as info:
            client.call("push", pack({"docs": "all"}))
        assert info.value.status == 400 and "docs" in info.value.message


@pytest.mark.usefixtures("unchanged")
def test_oversized_messages_are_refused(world):
    with client_for(world.ada, world.mal.identity) as client:
        # Too many entries in one message (each a junk 1-byte entry).
        with pytest.raises(TransportError) as info:
            client.call("push", pack({"docs": [world.cid]}, [b"x"] * (protocol.BATCH_ENTRIES + 1)))
        assert info.value.status == 400 and "more than" in info.value.message
        # One entry far above the entry size limit: refused, with the reason.
        huge = world.mal.write(world.cid, {"t": "meta"}, body=b"\0" * (2 * 1024 * 1024)).raw
        answer = push(client, [world.cid], [huge])
        assert answer["accepted"] == 0 and any("too large" in r for r in answer["refused"])
        # A body above the transport's limit: refused (by the client before sending, or the node).
        with pytest.raises(TransportError) as info:
            client.call("push", b"\0" * (protocol.MAX_MESSAGE + 1))
        assert info.value.status == 413


# -- bad entries --------------------------------------------------------------------------------------


def frame(header: dict, body: bytes, sig: bytes) -> bytes:
    """Entry bytes around any header, as entries.build_entry lays them out."""
    head = canonical_json(header)
    return len(head).to_bytes(4, "big") + head + len(body).to_bytes(4, "big") + body + sig


def flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]


def test_bad_signatures_are_refused(world):
    mal = world.mal
    first = mal.write(world.cid, propose_op([mal.id], "Mal's first word"))
    before = stored(world.ada, world.cid)
    with client_for(world.ada, mal.identity) as client:
        for at in (len(first.raw) - 1, len(first.raw) - 64, len(first.raw) - 40):
            answer = push(client, [world.cid], [flip(first.raw, at)])
            assert answer["accepted"] == 0 and answer["refused"] == ["signature does not hold"]
        # A changed header or body under the old signature: a new hash, the same refusal.
        tampered = first.raw.replace(b"Mal's first word", b"Mal's other word")
        answer = push(client, [world.cid], [tampered])
        assert answer["accepted"] == 0 and answer["refused"] == ["signature does not hold"]
        still_serving(world)
        assert stored(world.ada, world.cid) == before
        # The genuine entry is still welcome: nothing was poisoned by the forgeries.
        assert push(client, [world.cid], [first.raw])["accepted"] == 1
    mal.keep(first)
    assert db_rows(world.ada, "SELECT COUNT(*) FROM entries WHERE hash = ?", [first.hash]) == [(1,)]


def test_a_run_whose_last_signature_fails_is_checked_entry_by_entry(world):
    mal = world.mal
    one = mal.write(world.cid, {"t": "name", "name": "Mal one"})
    two = build_entry(mal.identity, world.cid, one.seq + 1, one.hash, now_ms(), {"t": "name", "name": "Mal two"})
    before = stored(world.ada, world.cid)
    with client_for(world.ada, mal.identity) as client:
        answer = push(client, [world.cid], [one.raw, flip(two.raw, len(two.raw) - 5)])
        assert answer["refused"] == ["signature does not hold"]
        assert answer["accepted"] == 1                # the first entry's own signature holds
    mal.keep(one)
    entries_now = stored(world.ada, world.cid)[0]
    assert set(entries_now) - set(before[0]) == {(one.hash, world.cid, mal.identity.device_id, one.seq, "accepted")}
    still_serving(world)


@pytest.mark.usefixtures("no_entry_changes")
def test_content_that_is_not_a_pycrdt_update_is_refused(world):
    """Mal's next entry carries a body that is not a pycrdt update, alone, then first in a run
    of content-only entries: refused with a reason, the one after it waits for it, nothing
    is stored and the node keeps serving."""
    mal = world.mal
    assert mal.heads.get(world.cid), "runs after test_bad_signatures_are_refused, which leaves Mal a log"
    reason = "its content is not a pycrdt update"
    alone = mal.write(world.cid, {"t": "meta"}, b"\x01\x02\x03 not an update")
    first = mal.write(world.cid, {"t": "meta"}, b"\xff" * 30)           # another entry at that place
    then = build_entry(mal.identity, world.cid, first.seq + 1, first.hash, now_ms(), {"t": "meta"}, b"")
    with client_for(world.ada, mal.identity) as client:
        answer = push(client, [world.cid], [alone.raw])
        assert (answer["accepted"], answer["refused"]) == (0, [reason])
        answer = push(client, [world.cid], [first.raw, then.raw])
        assert (answer["accepted"], answer["pending"], answer["refused"]) == (0, 1, [reason])


@pytest.mark.usefixtures("no_entry_changes")
def test_broken_chains_wait_and_change_nothing(world):
    mal = world.mal
    top, last = mal.heads.get(world.cid, (0, ""))
    assert top >= 1, "runs after test_bad_signatures_are_refused, which leaves Mal a log"
    with client_for(world.ada, mal.identity) as client:
        # The next seq, signed, but pointing at an entry that is not my previous one.
        wrong_prev = mal.write(world.cid, {"t": "name", "name": "Mal"}, prev="ab" * 32)
        answer = push(client, [world.cid], [wrong_prev.raw])
        # It waits (its previous entry might be another branch of a forked log, on its way).
        assert answer["accepted"] == 0 and answer["pending"] == 1 and answer["refused"] == []
        # Malformed chain links never get that far.
        for header_change in ({"seq": 0}, {"prev": "not a hash"}, {"seq": 1, "prev": "ab" * 32},
                              {"seq": 2, "prev": ""}, {"seq": True}):
            header = {**decode_entry(wrong_prev.raw).header, **header_change}
            raw = frame(header, b"", wrong_prev.sig)
            answer = push(client, [world.cid], [raw])
            assert answer["accepted"] == 0 and len(answer["refused"]) == 1, header_change
            assert "chain link" in answer["refused"][0] or "seq" in answer["refused"][0], answer


@pytest.mark.usefixtures("unchanged")
def test_replayed_entries_are_known_and_change_nothing(world):
    with client_for(world.ada, world.mal.identity) as client:
        meta, entries = unpack(client.call("exchange", pack({"have": {world.cid: {}}})))
        assert len(entries) >= 4                      # the whole congregation, as Mal may see it
        answer = push(client, [world.cid], entries)
        assert answer["accepted"] == 0 and answer["refused"] == [] and answer["pending"] == 0
        assert answer["known"] == len(entries)
        # Replayed out of order and twice over: still nothing.
        answer = push(client, [world.cid], list(reversed(entries)) * 2)
        assert answer["accepted"] == 0 and answer["refused"] == [] and answer["known"] == 2 * len(entries)


@pytest.mark.usefixtures("no_entry_changes")
def test_entries_from_a_non_member_are_not_accepted(world):
    stranger = world.stranger
    written = [stranger.write(world.cid, propose_op([stranger.id], "Strangers rule"))]
    with client_for(world.ada, stranger.identity) as client:
        answer = push(client, [world.cid], [e.raw for e in written])
        assert answer["accepted"] == 0 and answer["pending"] == 1   # waits for an admission that never comes
        # The stranger learns nothing by asking either: not even that Ada's node holds the
        # congregation, nor who writes in it and how much (it is answered as for an id no
        # node holds).
        unheard = hashlib.sha256(b"no such document").hexdigest()
        meta, entries = unpack(client.call("exchange", pack({"have": {world.cid: {}, unheard: {}}})))
        assert entries == [] and meta["more"] is False
        assert meta["want"] == {world.cid: {}, unheard: {}}
        assert meta["want_heads"] == {} and meta["want_forks"] == {}
        assert answer["want"] == {world.cid: {}} and answer["want_heads"] == {}
    status, view = world.ada.api("GET", f"/api/congregations/{world.cid}", expect=200)
    assert "Strangers rule" not in {a["title"] for a in view["agreements"]}
    assert stranger.id not in {m["id"] for m in view["members"]}


def bo_device_cert(world) -> dict:
    """Bo's device certificate: public (the first entry of each of his logs carries it)."""
    return json.loads((world.bo.home / "identity" / "device.cert").read_bytes())


@pytest.mark.usefixtures("unchanged")
def test_a_member_cannot_write_as_someone_else(world):
    mal, bo_cert = world.mal, bo_device_cert(world)
    op = propose_op([bo_cert["person"]], "Bo says yes")
    genuine = build_entry(mal.identity, world.cid, 1, "", now_ms(), op, with_cert=True)
    cases = {
        # Bo's device and certificate in the header, signed by Mal's device.
        "signature does not hold": {**genuine.header, "dev": bo_cert["device"], "cert": bo_cert},
        # Mal's device with Bo's certificate.
        "entry certificate is for another device": {**genuine.header, "cert": bo_cert},
        # Mal's device with a certificate naming Bo as the person, signed by Mal's person key.
        "device certificate signature does not hold": {
            **genuine.header, "cert": {**make_device_cert(mal.identity.person_key,
                                                          raw_public(mal.identity.device_key)),
                                       "person": bo_cert["person"]}},
    }
    with client_for(world.ada, mal.identity) as client:
        for reason, header in cases.items():
            unsigned = frame(header, b"", b"\0" * 64)
            raw = unsigned[:-64] + mal.identity.sign(SIG_CONTEXT + hashlib.sha256(unsigned[:-64]).digest())
            answer = push(client, [world.cid], [raw])
            assert answer["accepted"] == 0 and answer["refused"] == [reason], answer


@pytest.mark.usefixtures("unchanged")
def test_a_peer_claiming_another_members_key_is_refused(world):
    mal, bo_cert = world.mal, bo_device_cert(world)
    # Bo's device certificate presented with Mal's device key.
    client = SyncClient(world.ada.sync_address, mal.identity.device_key, canonical_json(bo_cert), verify_peer,
                        timeout=WAIT)
    with pytest.raises(TransportError) as info:
        client.connect()
    assert info.value.status == 403 and "another device" in info.value.message
    client.close()
    # A certificate Mal made himself, naming Bo as the person: its signature does not hold.
    forged = {**make_device_cert(mal.identity.person_key, raw_public(mal.identity.device_key)),
              "person": bo_cert["person"]}
    client = SyncClient(world.ada.sync_address, mal.identity.device_key, canonical_json(forged), verify_peer,
                        timeout=WAIT)
    with pytest.raises(TransportError) as info:
        client.connect()
    assert info.value.status == 403 and "does not hold" in info.value.message
    client.close()
    # Garbage in place of a certificate.
    client = SyncClient(world.ada.sync_address, mal.identity.device_key, b"\xff{", verify_peer, timeout=WAIT)
    with pytest.raises(TransportError) as info:
        client.connect()
    assert info.value.status == 403
    client.close()


def test_a_join_with_a_forged_proof_is_refused(world):
    code = world.ada.api("POST", f"/api/congregations/{world.cid}/invites", {}, expect=201)[1]["code"]
    before = stored(world.ada, world.cid)
    key = b32(raw_public(invite_key(code)))
    with client_for(world.ada, world.stranger.identity) as client:
        # The invite's public key is no secret (it is in the congregation's entries); a proof
        # needs the code itself.
        other = Ed25519PrivateKey.generate()
        proof = b32(other.sign(invite_message(key, world.stranger.id)))
        with pytest.raises(TransportError) as info:
            client.call("join", pack({"invite": key, "name": "S", "proof": proof}))
        assert info.value.status == 403 and "proof" in info.value.message
        # A proof made for someone else (overheard) admits no one else.
        mal_proof = b32(invite_key(code).sign(invite_message(key, world.mal.id)))
        with pytest.raises(TransportError) as info:
            client.call("join", pack({"invite": key, "name": "S", "proof": mal_proof}))
        assert info.value.status == 403
        for bad in ({}, {"invite": 7, "proof": "x"}, {"invite": key, "proof": "!!"}):
            with pytest.raises(TransportError) as info:
                client.call("join", pack(bad))
            assert info.value.status == 400
    still_serving(world)
    assert stored(world.ada, world.cid) == before
