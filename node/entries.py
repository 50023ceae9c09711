"""Signed entries: the unit of change, their byte format and their checks.

Wire and hash format: u32 header length, header (canonical JSON), u32 body length, body
(one pycrdt update, may be empty), then the device's 64-byte Ed25519 signature over
`SIG_CONTEXT + sha256(everything before the signature)`. The hash is the entry's id; a
document's id is the hash of its first entry, so no one can forge another document's id.
"""
import hashlib
import struct

import orjson

from .identity import IdentityError, check_device_cert, verify
from .ids import canonical_json, is_key_id, unb32

SIG_CONTEXT = b"crewnode-entry-v1:"
MAX_HEADER = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_ENTRY = MAX_HEADER + MAX_BODY + 72
# seq and time are stored as SQLite integers, and written behind as 19 decimal digits (node.packed_rows)
MAX_NUMBER = 8 * 10 ** 18 - 1
_U32 = struct.Struct(">I")


class EntryError(ValueError):
    """An entry that is malformed or whose signature does not hold."""


class Entry:
    """One decoded entry; `raw` is exactly the bytes that were hashed and signed.

    The header's fields are also plain attributes (doc, device, seq, prev, at, op, cert,
    is_genesis), read once: the accept pipeline reads them many times per entry.
    """

    __slots__ = ("hash", "header", "body", "sig", "raw", "is_genesis", "doc", "device", "seq", "prev", "at",
                 "op", "cert")

    def __init__(self, hash: str, header: dict, body: bytes, sig: bytes, raw: bytes):
        self.hash = hash
        self.header = header
        self.body = body
        self.sig = sig
        self.raw = raw
        self.is_genesis: bool = header["doc"] == ""
        self.doc: str = header["doc"] or hash          # a genesis entry names its own hash
        self.device: str = header["dev"]
        self.seq: int = header["seq"]
        self.prev: str = header["prev"]
        self.at: int = header["at"]
        self.op: dict = header["op"]
        self.cert: dict | None = header.get("cert")

    def __repr__(self) -> str:
        return f"Entry({self.hash[:12]}, {self.op.get('t')!r}, seq {self.seq})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Entry) and other.raw == self.raw

    __hash__ = None

    def signature_holds(self) -> bool:
        """Check this entry's own signature against its device key."""
        return signature_holds(self.device, self.hash, self.sig)


def signature_holds(device: str, entry_hash: str, sig: bytes) -> bool:
    """Check an entry's signature, given its device id and hash."""
    return verify(unb32(device), sig, SIG_CONTEXT + bytes.fromhex(entry_hash))


def _signed_part(header_bytes: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(header_bytes)) + header_bytes + struct.pack(">I", len(body)) + body


def build_entry(identity, doc: str, seq: int, prev: str, at: int, op: dict, body: bytes = b"",
                with_cert: bool = False) -> Entry:
    """Make and sign a new entry of `identity`'s device."""
    header = {"v": 1, "doc": doc, "dev": identity.device_id, "seq": seq, "prev": prev, "at": at, "op": op}
    if with_cert:
        header["cert"] = identity.cert
    signed = _signed_part(canonical_json(header), body)
    digest = hashlib.sha256(signed).digest()
    sig = identity.sign(SIG_CONTEXT + digest)
    return Entry(digest.hex(), header, body, sig, signed + sig)


def decode_entry(raw: bytes) -> Entry:
    """Parse and shape-check one entry's bytes (the signature is checked separately)."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 72:
        raise EntryError("entry is truncated")
    if len(raw) > MAX_ENTRY:
        raise EntryError("entry is too large")
    raw = bytes(raw)
    (hlen,) = _U32.unpack_from(raw, 0)
    if hlen > MAX_HEADER or 4 + hlen + 4 + 64 > len(raw):
        raise EntryError("entry is truncated")
    (blen,) = _U32.unpack_from(raw, 4 + hlen)
    if blen > MAX_BODY or 8 + hlen + blen + 64 != len(raw):
        raise EntryError("entry length does not match its contents")
    try:
        # orjson: a received batch parses tens of thousands of headers; the stdlib parser took
        # about a fifth of a sync's time. It is also stricter (no NaN, no integers past 64 bits).
        header = orjson.loads(raw[4:4 + hlen])
    except orjson.JSONDecodeError as exc:
        raise EntryError("entry header is not JSON") from exc
    _check_header(header)
    body = raw[8 + hlen:8 + hlen + blen]
    digest = hashlib.sha256(memoryview(raw)[:-64]).hexdigest()
    return Entry(digest, header, body, raw[-64:], raw)


def decode_held(raw: bytes, entry_hash: str) -> Entry:
    """An entry read back from the store, where only what `decode_entry` took is held: its
    fields without checking them again, and its stored hash (a recompute reads every entry of
    a document, and the checks and the hash were most of that)."""
    (hlen,) = _U32.unpack_from(raw, 0)
    (blen,) = _U32.unpack_from(raw, 4 + hlen)
    return Entry(entry_hash, orjson.loads(raw[4:4 + hlen]), raw[8 + hlen:8 + hlen + blen], raw[-64:], raw)


def _check_header(header) -> None:
    # The fields by count, then each by name (a missing one raises KeyError): cheaper than
    # comparing key sets, and the same answer.
    if type(header) is not dict or not (len(header) == 7 or (len(header) == 8 and "cert" in header)):
        raise EntryError("entry header has the wrong fields")
    try:
        version, seq, prev, doc, at, device, op = (header["v"], header["seq"], header["prev"], header["doc"],
                                                   header["at"], header["dev"], header["op"])
    except KeyError:
        raise EntryError("entry header has the wrong fields") from None
    if version != 1:
        raise EntryError("entry version is not supported")
    if type(seq) is not int or not 1 <= seq <= MAX_NUMBER:   # (type, not isinstance: True is an int)
        raise EntryError("entry seq must be a positive integer")
    if type(at) is not int or not 0 <= at <= MAX_NUMBER:
        raise EntryError("entry time must be an integer")
    if type(doc) is not str or (doc and doc not in _known_docs and not _is_hash(doc)):
        raise EntryError("entry document id is malformed")
    if type(prev) is not str or (prev and not _is_hash(prev)) or (seq == 1) != (prev == ""):
        raise EntryError("entry chain link is malformed")
    if doc == "" and seq != 1:
        raise EntryError("a document's first entry must have seq 1")
    if not is_key_id(device):
        raise EntryError("entry device id is malformed")
    if type(op) is not dict or type(op.get("t")) is not str:
        raise EntryError("entry operation is malformed")
    if "cert" in header:
        try:
            _, certified = check_device_cert(header["cert"])
        except IdentityError as exc:
            raise EntryError(str(exc)) from exc
        if certified != device:
            raise EntryError("entry certificate is for another device")
    elif seq == 1:
        raise EntryError("a device's first entry in a document must carry its certificate")
    if doc and len(_known_docs) < 10_000:
        _known_docs.add(doc)


# Document ids seen well-formed: a batch names the same few documents thousands of times.
_known_docs: set[str] = set()


def _is_hash(text: str) -> bool:
    # A hex round trip: exact (64 lowercase hex digits, nothing else) and faster than a regex.
    try:
        return len(text) == 64 and bytes.fromhex(text).hex() == text
    except ValueError:
        return False
