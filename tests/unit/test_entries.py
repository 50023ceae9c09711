"""The entry byte format and its shape checks (node/entries.py), without any store."""
import base64
import json
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from factories import Member
from node.batches import unsigned_among
from node.entries import MAX_BODY, MAX_ENTRY, MAX_HEADER, Entry, EntryError, build_entry, decode_entry, decode_held
from node.identity import Identity, make_device_cert, new_device, raw_public
from node.ids import canonical_json, is_key_id, unb32

DOC = "ab" * 32


def frame(header, body: bytes = b"", sig: bytes = b"\0" * 64) -> bytes:
    """Raw entry bytes around any header (dict, or bytes taken as they are)."""
    hb = header if isinstance(header, bytes) else canonical_json(header)
    return struct.pack(">I", len(hb)) + hb + struct.pack(">I", len(body)) + body + sig


def test_build_then_decode_gives_the_same_entry():
    mo = Member()
    entry = mo.write(DOC, {"t": "name", "name": "Mo"}, body=b"\x01\x02")
    back = decode_entry(entry.raw)
    assert back.hash == entry.hash and back.header == entry.header and back.body == b"\x01\x02"
    assert back.signature_holds()
    assert back.cert["person"] == mo.id and back.device == mo.identity.device_id
    second = mo.write(DOC, {"t": "name", "name": "Moe"})
    assert (second.seq, second.prev, second.cert) == (2, entry.hash, None)
    assert decode_entry(second.raw).signature_holds()


def test_an_entry_read_back_from_the_store_is_the_one_decoded_on_its_way_in():
    mo = Member()
    genesis = mo.write("", {"t": "genesis", "type": "congregation"}, body=b"\x01")
    for entry in (genesis, mo.write(genesis.hash, {"t": "meta"}, body=b"\x02\x03"), mo.write(genesis.hash, {"t": "name", "name": "Mo"})):
        fields = lambda e: tuple(getattr(e, name) for name in Entry.__slots__)  # noqa: E731
        assert fields(decode_held(entry.raw, entry.hash)) == fields(decode_entry(entry.raw))


def test_genesis_entry_is_its_own_document():
    mo = Member()
    genesis = mo.write("", {"t": "genesis", "type": "congregation"})
    assert genesis.is_genesis and genesis.doc == genesis.hash


@pytest.mark.parametrize("cut", [0, 1, 10, 71, -1, -64, -65])
def test_truncated_bytes_are_refused(cut):
    raw = Member().write(DOC, {"t": "name", "name": "Mo"}).raw
    with pytest.raises(EntryError):
        decode_entry(raw[:cut])


def test_trailing_bytes_are_refused():
    raw = Member().write(DOC, {"t": "name", "name": "Mo"}).raw
    with pytest.raises(EntryError, match="length"):
        decode_entry(raw + b"\0")


def test_oversized_entries_are_refused():
    mo = Member()
    with pytest.raises(EntryError, match="too large"):
        decode_entry(b"\0" * (MAX_ENTRY + 1))
    big_body = mo.write(DOC, {"t": "name", "name": "Mo"}, body=b"x" * (MAX_BODY + 1))
    assert len(big_body.raw) <= MAX_ENTRY           # only the body limit can catch it
    with pytest.raises(EntryError):
        decode_entry(big_body.raw)
    big_header = mo.write(DOC, {"t": "name", "name": "x" * MAX_HEADER})
    with pytest.raises(EntryError):
        decode_entry(big_header.raw)
    # just under both limits still decodes
    fits = Member().write(DOC, {"t": "name", "name": "Mo"}, body=b"x" * MAX_BODY)
    assert decode_entry(fits.raw).body == b"x" * MAX_BODY


@pytest.mark.parametrize("raw", [
    None, "text", b"", b"\0" * 72, b"\xff" * 200,
    frame(b"not json"), frame(b"\xff\xfe{}"), frame(b"[1, 2]"), frame(b"{}"), frame(b"null"),
    frame(b"[" * 30_000 + b"]" * 30_000),               # nesting deeper than the JSON parser's stack
    frame(b"{" + b'"a":{' * 10_000 + b"}" * 10_001),
], ids=["none", "str", "empty", "zeros", "ff", "text-header", "bad-utf8", "list", "empty-obj", "null",
        "deep-list", "deep-dict"])
def test_garbage_is_refused_with_entry_error(raw):
    with pytest.raises(EntryError):
        decode_entry(raw)


def _header(**changes):
    mo = Member()
    good = mo.write(DOC, {"t": "name", "name": "Mo"}).header
    return {**good, **changes}


@pytest.mark.parametrize("changes", [
    {"v": 2}, {"seq": 0}, {"seq": -1}, {"seq": "1"}, {"seq": True}, {"seq": 1.0}, {"at": -5}, {"at": "now"},
    {"doc": "xyz"}, {"doc": 5}, {"prev": "ab" * 32}, {"seq": 2, "prev": ""}, {"seq": 2, "prev": "zz" * 32},
    {"dev": "not base32!"}, {"dev": "aaaa"}, {"dev": 7}, {"op": []}, {"op": {"t": 5}}, {"op": {}},
    {"extra": 1}, {"doc": "", "seq": 2, "prev": "ab" * 32},
    {"at": 8 * 10 ** 18}, {"at": 2 ** 64 - 1}, {"seq": 2 ** 63, "prev": "ab" * 32},   # past what is stored
])
def test_malformed_headers_are_refused(changes):
    with pytest.raises(EntryError):
        decode_entry(frame(_header(**changes)))


def _other_spellings(key_id: str) -> list[str]:
    """Texts that plain base32 decodes to the same key as `key_id`."""
    last = "abcdefghijklmnopqrstuvwxyz234567".index(key_id[-1])
    set_bit = "abcdefghijklmnopqrstuvwxyz234567"[last | 1]        # a trailing bit past the key's 256
    return [key_id.upper(), key_id + "====", key_id[:-1] + set_bit]


def test_a_key_has_one_id_only():
    """Ids are compared as text: a device or member must not go by a second spelling."""
    device = Member().identity.device_id
    assert unb32(device) and is_key_id(device)
    for spelling in _other_spellings(device):
        assert base64.b32decode(spelling.upper() + "=" * (-len(spelling) % 8)) == unb32(device)
        assert not is_key_id(spelling)
        with pytest.raises(ValueError):
            unb32(spelling)
        with pytest.raises(EntryError, match="device id is malformed"):
            decode_entry(frame(_header(dev=spelling)))


def test_missing_header_fields_are_refused():
    for key in ("v", "doc", "dev", "seq", "prev", "at", "op"):
        header = _header()
        del header[key]
        with pytest.raises(EntryError):
            decode_entry(frame(header))


def test_first_entry_of_a_device_needs_its_certificate():
    header = _header()
    del header["cert"]
    with pytest.raises(EntryError, match="certificate"):
        decode_entry(frame(header))


def test_certificate_for_another_device_is_refused():
    mo, other = Member(), Member()
    header = _header(dev=mo.identity.device_id, cert=other.identity.cert)
    with pytest.raises(EntryError, match="another device"):
        decode_entry(frame(header))


def test_certificate_signed_by_another_person_is_refused():
    """A certificate naming Ada's person key but signed by Mo's does not hold."""
    ada, mo = Member("Ada"), Member("Mo")
    forged = make_device_cert(mo.person_key, raw_public(mo.identity.device_key))
    forged = {**forged, "person": ada.id}
    impostor = Identity(ada.id, mo.identity.device_key, forged)
    entry = build_entry(impostor, DOC, 1, "", 1, {"t": "name", "name": "Ada"}, with_cert=True)
    with pytest.raises(EntryError, match="signature"):
        decode_entry(entry.raw)


@pytest.mark.parametrize("cert", [
    None, [], {}, {"person": "a", "device": "b", "at": 1}, "cert",
])
def test_malformed_certificates_are_refused(cert):
    with pytest.raises(EntryError):
        decode_entry(frame(_header(cert=cert)))


def test_signature_is_checked_against_the_device_key():
    mo = Member()
    entry = mo.write(DOC, {"t": "name", "name": "Mo"})
    bad = decode_entry(entry.raw[:-64] + bytes(64))
    assert not bad.signature_holds()
    other = new_device(Ed25519PrivateKey.generate())
    resigned = entry.raw[:-64] + other.sign(b"crewnode-entry-v1:" + bytes.fromhex(entry.hash))
    assert not decode_entry(resigned).signature_holds()


def test_a_run_is_checked_by_its_last_signature_and_a_bad_entry_in_it_is_found():
    mo = Member()
    run = [mo.write(DOC, {"t": "name", "name": f"Mo {i}"}) for i in range(5)]
    decoded = [decode_entry(e.raw) for e in run]
    assert unsigned_among(decoded) == set()
    decoded[-1] = decode_entry(run[-1].raw[:-64] + bytes(64))
    assert unsigned_among(decoded) == {run[-1].hash}


def test_entries_that_do_not_chain_are_checked_on_their_own_signatures():
    """An entry whose prev does not link to the one before it is not vouched for by a later signature."""
    mo = Member()
    first = mo.write(DOC, {"t": "name", "name": "Mo"})
    second = mo.write(DOC, {"t": "name", "name": "Moe"})
    bad_first = decode_entry(first.raw[:-64] + bytes(64))
    stray = mo.write(DOC, {"t": "name", "name": "x"}, seq=2, prev="cd" * 32)
    assert unsigned_among([bad_first, decode_entry(stray.raw)]) == {first.hash}
    # (chained to the bad one: the run's last signature vouches for it, as the docstring says)
    assert unsigned_among([bad_first, decode_entry(second.raw)]) == set()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_entry_error(raw):
    try:
        decode_entry(raw)
    except EntryError:
        pass


_SAMPLE = Member().write(DOC, {"t": "propose", "title": "Quiet hours", "entitled": []}, body=b"\x00\x01body")


@settings(max_examples=300)
@given(st.integers(0, len(_SAMPLE.raw) - 1), st.integers(1, 255))
def test_any_changed_byte_is_refused_or_breaks_the_signature(pos, xor):
    raw = bytearray(_SAMPLE.raw)
    raw[pos] ^= xor
    try:
        entry = decode_entry(bytes(raw))
    except EntryError:
        return
    assert not entry.signature_holds()


def test_header_is_canonical_json():
    entry = Member().write(DOC, {"t": "name", "name": "Mo"})
    (hlen,) = struct.unpack_from(">I", entry.raw, 0)
    header_bytes = entry.raw[4:4 + hlen]
    assert header_bytes == canonical_json(json.loads(header_bytes))
