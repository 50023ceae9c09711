"""Issue 7 in process: the sealing of bundles and backups, device certificates, device retirement."""
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from factories import Member, admit, propose_op, service, sync_all
from node import carry
from node.entries import decode_entry
from node.identity import IdentityError, check_device_cert, load_identity, make_device_cert, new_device, raw_public
from node.ids import b32, canonical_json
from node.rules import retire_message

WORD = "Quinceword"


@pytest.fixture
def world(tmp_path):
    ada, bob, cy = service(tmp_path, "Ada"), service(tmp_path, "Bob"), service(tmp_path, "Cy")
    cid = ada.create_congregation("Riverside", "")["id"]
    admit(ada, cid, bob.me, "Bob")
    admit(ada, cid, cy.me, "Cy")
    sync_all(ada, bob, cy)
    bob.propose(cid, "hello", "")           # Bob and Cy write, so their devices' certificates travel
    cy.propose(cid, "hi", "")
    sync_all(ada, bob, cy)
    ada.propose(cid, WORD, "a written word")
    yield type("World", (), {"ada": ada, "bob": bob, "cy": cy, "cid": cid})
    for s in (ada, bob, cy):
        s.close()


def bundle_for(src, dst) -> bytes:
    return carry.export_bundle(src.store, src.states, src.identity, dst.me)


def test_certificate_names_the_sealing_key_and_is_strict():
    person = Ed25519PrivateKey.generate()
    ident = new_device(person)
    assert check_device_cert(ident.cert) == (ident.person_id, ident.device_id)
    assert carry.unb32(ident.cert["seal"]) == carry.raw_seal_public(ident.seal_key)
    old_format = {k: v for k, v in ident.cert.items() if k != "seal"}
    with pytest.raises(IdentityError):
        check_device_cert(old_format)
    swapped = {**ident.cert, "seal": b32(bytes(32))}
    with pytest.raises(IdentityError, match="signature"):
        check_device_cert(swapped)
    with pytest.raises(IdentityError):
        check_device_cert({**ident.cert, "extra": 1})


def test_sealing_key_kept_private_on_disk(tmp_path):
    ident = new_device(Ed25519PrivateKey.generate())
    ident.save(tmp_path)
    assert oct((tmp_path / "identity" / "seal.key").stat().st_mode & 0o777) == "0o600"
    back = load_identity(tmp_path)
    assert carry.raw_seal_public(back.seal_key) == carry.raw_seal_public(ident.seal_key)


def test_bundle_opens_for_its_member_only_and_holds_no_plaintext(world):
    data = bundle_for(world.ada, world.bob)
    assert WORD.encode() not in data and b"Riverside" not in data
    with pytest.raises(carry.SealedForAnother, match="sealed for another member"):
        carry.open_bundle(data, world.cy.identity)
    _, raws = carry.open_bundle(data, world.bob.identity)
    assert {decode_entry(r).hash for r in raws} == {e.hash for _, _, e in world.ada.store.entries_of(world.cid)}
    result = carry.import_bundle(world.bob.ledger, world.bob.identity, data)
    assert len(result.accepted) == 1 and not result.refused


def test_bundle_carries_only_documents_the_member_may_read(world):
    crew = world.ada.create_crew(world.cid, "Kitchen", "", [world.cy.me])["id"]
    _, raws = carry.open_bundle(bundle_for(world.ada, world.bob), world.bob.identity)
    assert crew not in {decode_entry(r).doc for r in raws}
    _, raws = carry.open_bundle(bundle_for(world.ada, world.cy), world.cy.identity)
    assert crew in {decode_entry(r).doc for r in raws}


def test_every_flipped_byte_or_cut_refuses_the_whole_bundle(world):
    data = bundle_for(world.ada, world.bob)
    before = world.bob.store.max_rowid()
    for at in range(0, len(data), max(1, len(data) // 300)):
        damaged = bytearray(data)
        damaged[at] ^= 0x20
        with pytest.raises(carry.CarryError):
            carry.import_bundle(world.bob.ledger, world.bob.identity, bytes(damaged))
    for cut in (1, 17, len(data) // 2, len(data) - 1):
        with pytest.raises(carry.CarryError):
            carry.import_bundle(world.bob.ledger, world.bob.identity, data[:cut])
    assert world.bob.store.max_rowid() == before


def test_backup_round_trip_wrong_passphrase_and_damage(world, tmp_path):
    data = carry.make_backup(world.ada.store, world.ada.identity, "a long passphrase")
    assert WORD.encode() not in data
    with pytest.raises(carry.WrongPassphrase):
        carry.open_backup(data, "another passphrase")
    for damaged in (data[:-1], data[:len(data) // 2], data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]):
        with pytest.raises(carry.Damaged):
            carry.open_backup(damaged, "a long passphrase")
    from node.service import Service
    done = carry.restore(data, "a long passphrase", tmp_path / "restored", Service)
    restored = Service(tmp_path / "restored")
    try:
        assert restored.me == world.ada.me and restored.identity.device_id != world.ada.identity.device_id
        assert restored.identity.person_key is not None
        assert done["documents"] == 1                                # it announced its new device
        assert WORD in {a.current.title for a in restored.states[world.cid].agreements.values()}
    finally:
        restored.close()


def test_a_second_device_cannot_back_up_or_add_devices(world, tmp_path):
    second = new_device(world.ada.identity.person_key)
    second.person_key = None
    with pytest.raises(carry.NodeError, match="person key"):
        carry.make_backup(world.ada.store, second, "a long passphrase")


def test_retirement_needs_the_person_key_and_own_device(world):
    ada, bob, cid = world.ada, world.bob, world.cid
    phone = new_device(ada.identity.person_key)
    state = ada.states[cid]
    # A member cannot retire another member's device.
    bob_cert = bob.identity.cert
    op = {"t": "retire_device", "device": bob.identity.device_id, "upto": 0, "cert": bob_cert,
          "sig": b32(ada.identity.person_key.sign(retire_message(cid, bob.identity.device_id, 0)))}
    with pytest.raises(carry.NodeError, match="only their own devices"):
        ada._write(cid, op)
    # A device key cannot stand in for the person key.
    op = {"t": "retire_device", "device": phone.device_id, "upto": 0, "cert": phone.cert,
          "sig": b32(ada.identity.device_key.sign(retire_message(cid, phone.device_id, 0)))}
    with pytest.raises(carry.NodeError, match="person key"):
        ada._write(cid, op)
    assert phone.device_id not in state.retired_devices


def test_a_retired_device_is_refused_after_its_cut(world):
    ada, bob, cid = world.ada, world.bob, world.cid
    phone_ident = new_device(ada.identity.person_key)
    phone = Member("phone")
    phone.identity = phone_ident
    first = phone.write(cid, propose_op([ada.me], title="Before the loss"))
    assert not ada.ledger.ingest([first.raw]).refused
    carry.retire_device(ada, phone_ident.device_id)
    later = phone.write(cid, propose_op([ada.me], title="After the loss"))
    sync_all(ada, bob)
    result = bob.ledger.ingest([first.raw, later.raw])
    assert not result.accepted or [e.hash for e in result.accepted] == [first.hash]
    titles = {a.current.title for a in bob.states[cid].agreements.values()}
    assert "Before the loss" in titles and "After the loss" not in titles
    assert carry.is_retired(bob, phone_ident.device_id)
    assert not ada.ledger.ingest([later.raw]).accepted


def test_pairing_code_round_trip_and_proof_binding(world):
    ada = world.ada
    made = carry.new_pairing(ada, "127.0.0.1:9")
    secret, pin, address = carry.parse_pair_code(made["code"].upper().replace("-", " - "))
    assert address == "127.0.0.1:9" and pin == carry.pair_pin(raw_public(ada.identity.device_key))
    device = new_device(Ed25519PrivateKey.generate())
    dev_pub, seal_pub = raw_public(device.device_key), carry.raw_seal_public(device.seal_key)
    request = {"device": b32(dev_pub), "seal": b32(seal_pub), "proof": b32(carry.pair_proof(secret, dev_pub, seal_pub))}
    with pytest.raises(carry.NodeError, match="another device"):
        carry.answer_pairing(ada, raw_public(Ed25519PrivateKey.generate()), request)
    answer = carry.answer_pairing(ada, dev_pub, request)
    assert check_device_cert(answer["cert"]) == (ada.me, b32(dev_pub))
    with pytest.raises(carry.NodeError, match="wrong, used or expired"):
        carry.answer_pairing(ada, dev_pub, request)
    assert canonical_json(answer["cert"])
    assert make_device_cert(ada.identity.person_key, dev_pub, seal_pub)["seal"] == b32(seal_pub)
