"""Carrying and keeping (issue 7): sealed bundles, passphrase backups, second devices, exports.

Node core: nothing here imports Flask or `sync`; the CLI (node/carry_cli.py), the local API
(node/carry_api.py) and the sync engine (the "pair" call) compose it.

Only standard primitives from `cryptography`, used the standard way:

- A **bundle** is sealed for one member. A fresh content key encrypts the entries with
  ChaCha20-Poly1305; the content key is wrapped once for each of the member's known devices:
  X25519 between a fresh ephemeral key and the device's sealing key (certified by the member's
  person key, learned from the device certificates in entries), HKDF-SHA256, ChaCha20-Poly1305.
  The whole clear header (who it is for, the wrapped keys, the nonce) is authenticated as
  associated data, so any changed byte anywhere makes the bundle refuse to open.
- A **backup** holds the person key, the node's settings and all entries, encrypted with
  ChaCha20-Poly1305 under a key from scrypt(passphrase). A small check value (an empty message
  sealed with the same key) tells a wrong passphrase from a damaged file.

Both files are: 16-byte magic, u32 header length, header (canonical JSON), ciphertext.
"""
import hashlib
import hmac
import json
import os
import shutil
import struct
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from . import views
from .docstate import records_reach
from .entries import EntryError, decode_entry
from .errors import Conflict, Forbidden, Invalid, NodeError, NotFound
from .identity import (IdentityError, check_device_cert, make_device_cert, new_device, raw_private, raw_public,
                       raw_seal_public)
from .ids import b32, b64, canonical_json, now_ms, unb32, unb64
from .rules import check_member_id, retire_message

BUNDLE_MAGIC = b"CREWNODE-BUNDLE1"
BACKUP_MAGIC = b"CREWNODE-BACKUP1"
WRAP_INFO = b"crewnode-bundle-v1 key wrap"
MAX_HEADER = 1024 * 1024
MAX_FILE = 1024 * 1024 * 1024           # ChaCha20-Poly1305 in `cryptography` takes < 2 GiB at once
SCRYPT = {"n": 2 ** 17, "r": 8, "p": 1}  # 128 MiB, about half a second here
# A backup's header is read before anything in it is authenticated: a crafted one must not make
# a restore take gigabytes (scrypt takes 128 * n * r bytes) or minutes (p times over).
MAX_SCRYPT_MEMORY = 2 ** 30
MAX_SCRYPT_P = 4
KEEP_SETTINGS = ("name", "peers")       # device-independent settings a backup carries
PAIR_TTL_MS = 10 * 60 * 1000
PAIR_CONTEXT = b"crewnode-pair-v1:"
PAIR_PIN_CONTEXT = b"crewnode-pair-pin-v1:"
MAX_PAIR_FAILURES = 10


class CarryError(NodeError):
    """A bundle, backup or pairing that cannot be used; the message is for people."""

    status = 400


class SealedForAnother(CarryError):
    status = 403


class Damaged(CarryError):
    status = 400


class WrongPassphrase(CarryError):
    status = 403


# -- a list of entries as bytes -----------------------------------------------------------------

def frame(meta: dict, raws) -> bytes:
    """u32 JSON length, JSON, then each entry as u32 length + bytes."""
    head = canonical_json(meta)
    parts = [struct.pack(">I", len(head)), head]
    for raw in raws:
        parts += [struct.pack(">I", len(raw)), raw]
    return b"".join(parts)


def unframe(data: bytes, what: str) -> tuple[dict, list[bytes]]:
    """Split what `frame` made; anything else is Damaged."""
    try:
        (hlen,) = struct.unpack_from(">I", data, 0)
        meta = json.loads(data[4:4 + hlen])
        if not isinstance(meta, dict) or 4 + hlen > len(data):
            raise ValueError
        raws, at = [], 4 + hlen
        while at < len(data):
            (n,) = struct.unpack_from(">I", data, at)
            if at + 4 + n > len(data):
                raise ValueError
            raws.append(bytes(data[at + 4:at + 4 + n]))
            at += 4 + n
    except (ValueError, struct.error, UnicodeDecodeError):
        raise Damaged(f"the {what} is damaged: its contents do not parse; nothing was changed") from None
    return meta, raws


def _container(magic: bytes, header: dict) -> tuple[bytes, bytes]:
    """(the file's clear prefix, the associated data the ciphertext is bound to)."""
    head = canonical_json(header)
    prefix = magic + struct.pack(">I", len(head)) + head
    return prefix, prefix


def _split(magic: bytes, data: bytes, what: str) -> tuple[bytes, dict, bytes]:
    """(associated data, header, ciphertext) of a file; Damaged when it is not one of ours."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < len(magic) + 4:
        raise Damaged(f"this file is not a crewnode {what}, or it is truncated; nothing was changed")
    if data[:len(magic)] != magic:
        other = BACKUP_MAGIC if magic == BUNDLE_MAGIC else BUNDLE_MAGIC
        if data[:len(other)] == other:
            kind = "backup (use `crewnode restore`)" if other == BACKUP_MAGIC else "bundle (use `crewnode bundle import`)"
            raise Invalid(f"this file is a crewnode {kind}, not a {what}")
        raise Damaged(f"this file is not a crewnode {what} (or its first bytes are damaged); nothing was changed")
    if len(data) > MAX_FILE:
        raise Invalid(f"this {what} is larger than {MAX_FILE >> 20} MiB")
    (hlen,) = struct.unpack_from(">I", data, len(magic))
    start = len(magic) + 4
    if hlen > MAX_HEADER or start + hlen > len(data):
        raise Damaged(f"the {what} is damaged or truncated; nothing was changed")
    try:
        header = json.loads(data[start:start + hlen])
    except (ValueError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("v") != 1:
        raise Damaged(f"the {what} is damaged (its header does not parse); nothing was changed")
    return bytes(data[:start + hlen]), header, bytes(data[start + hlen:])


# -- what a member may read, and their devices --------------------------------------------------

def readable_docs(states: dict, member: str) -> list[str]:
    """Documents `member` may read: those they are an active member of, save crews of a
    congregation they are gone from (as sync decides)."""
    return [doc for doc, state in states.items() if records_reach(states, state, member)]


def raw_entries(store, docs=None) -> list[bytes]:
    """Accepted entries (of `docs`, or all) in the order they were accepted here: causal order,
    so they can be accepted again in this order without waiting."""
    if docs is None:
        return [r[0] for r in store.db.execute("SELECT raw FROM entries ORDER BY rowid")]
    wanted = set(docs)
    return [raw for doc, raw in store.db.execute("SELECT doc, raw FROM entries ORDER BY rowid") if doc in wanted]


def device_certs(store, member: str) -> dict[str, dict]:
    """device id -> certificate, for every device of `member` known here.

    From the certificates in accepted entries (a device's first entry in a document carries it,
    a retirement carries the retired device's), and from devices paired here.
    """
    out: dict[str, dict] = {}
    rows = store.db.execute("SELECT raw FROM entries WHERE author = ? AND (seq = 1 OR kind = 'retire_device')",
                            [member])
    for (raw,) in rows:
        try:
            entry = decode_entry(raw)
        except EntryError:
            continue
        for cert in (entry.cert, entry.op.get("cert") if entry.op["t"] == "retire_device" else None):
            if isinstance(cert, dict) and cert.get("person") == member:
                out.setdefault(cert["device"], cert)
    for (raw,) in store.db.execute("SELECT raw FROM entries WHERE kind = 'admit' AND status = 'accepted'"):
        cert = decode_entry(raw).op.get("cert")
        if isinstance(cert, dict) and cert.get("person") == member:
            out.setdefault(cert["device"], cert)
    for device, record in (store.get("devices", {}) or {}).items():
        cert = record.get("cert")
        if isinstance(cert, dict) and cert.get("person") == member:
            out.setdefault(device, cert)
    return out


def retired_devices(states: dict, store=None) -> set[str]:
    """Devices retired in any document held here (or noted as retired by this node)."""
    out: set[str] = set()
    for state in states.values():
        out.update(state.retired_devices)
    if store is not None:
        out.update(store.get("retired_devices", []) or [])
    return out


def seal_keys_for(store, states: dict, member: str, identity=None) -> dict[str, bytes]:
    """device id -> raw X25519 sealing key, for `member`'s devices that are not retired."""
    certs = device_certs(store, member)
    if identity is not None and identity.person_id == member:
        certs.setdefault(identity.device_id, identity.cert)
    retired = retired_devices(states, store)
    out = {}
    for device, cert in certs.items():
        if device in retired:
            continue
        try:
            person, checked = check_device_cert(cert)
        except IdentityError:
            continue
        if person == member and checked == device:
            out[device] = unb32(cert["seal"])
    return out


# -- bundles ------------------------------------------------------------------------------------

def _kek(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=WRAP_INFO).derive(shared)


def seal_bundle(for_member: str, seal_keys: list[bytes], meta: dict, raws: list[bytes]) -> bytes:
    """Seal entries so only the holders of `seal_keys` (X25519 public keys) can open them."""
    if not seal_keys:
        raise Conflict("no device of that member is known here yet, so nothing can be sealed for "
                       "them: once they have written something (a response, a commitment) that reached "
                       "your node, their devices' sealing keys are known")
    content_key = ChaCha20Poly1305.generate_key()
    ephemeral = X25519PrivateKey.generate()
    epk = raw_seal_public(ephemeral)
    wrap_aad = b"crewnode-bundle-v1:" + for_member.encode()
    keys = []
    for recipient in sorted(set(seal_keys)):
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
        # Each key-encryption key is used once (fresh ephemeral key), so a fixed nonce is safe.
        wrapped = ChaCha20Poly1305(_kek(shared, epk, recipient)).encrypt(b"\0" * 12, content_key, wrap_aad)
        keys.append({"to": b32(recipient), "wrap": b64(wrapped)})
    nonce = os.urandom(12)
    prefix, aad = _container(BUNDLE_MAGIC, {"v": 1, "for": for_member, "epk": b32(epk), "keys": keys,
                                            "nonce": b64(nonce)})
    return prefix + ChaCha20Poly1305(content_key).encrypt(nonce, frame(meta, raws), aad)


def open_bundle(data: bytes, identity) -> tuple[dict, list[bytes]]:
    """(meta, raw entries) of a bundle sealed for this device; refuses anything else whole."""
    aad, header, ciphertext = _split(BUNDLE_MAGIC, data, "bundle")
    for_member = header.get("for")
    if not isinstance(for_member, str) or not isinstance(header.get("keys"), list):
        raise Damaged("the bundle is damaged (its header is incomplete); nothing was changed")
    if for_member != identity.person_id:
        raise SealedForAnother(f"this bundle is sealed for another member ({for_member[:12]}…), not for you "
                               f"({identity.person_id[:12]}…); nothing was imported")
    mine = b32(raw_seal_public(identity.seal_key))
    slot = next((k for k in header["keys"] if isinstance(k, dict) and k.get("to") == mine), None)
    if slot is None:
        raise SealedForAnother("this bundle is sealed for you, but for your other devices: it was made before "
                               "this device was known to the sender; ask for a new bundle, or import it on "
                               "another of your devices")
    try:
        epk = unb32(header["epk"])
        nonce = unb64(header["nonce"])
        shared = identity.seal_key.exchange(X25519PublicKey.from_public_bytes(epk))
        kek = _kek(shared, epk, unb32(mine))
        content_key = ChaCha20Poly1305(kek).decrypt(b"\0" * 12, unb64(slot["wrap"]),
                                                    b"crewnode-bundle-v1:" + for_member.encode())
        plain = ChaCha20Poly1305(content_key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise Damaged("the bundle is damaged (it does not authenticate: truncated or altered); "
                      "nothing was imported") from None
    return unframe(plain, "bundle")


def export_bundle(store, states: dict, identity, member) -> bytes:
    """A bundle for `member`: every entry of every document they may read, and no other."""
    member = _member_id(member)
    docs = readable_docs(states, member)
    if not docs:
        raise NotFound("that member is not an active member of any congregation or crew held here")
    keys = seal_keys_for(store, states, member, identity)
    meta = {"from": identity.person_id, "at": now_ms(), "docs": len(docs)}
    return seal_bundle(member, list(keys.values()), meta, raw_entries(store, docs))


def import_bundle(ledger, identity, data: bytes):
    """Open a bundle and take its entries exactly as sync would; returns the IngestResult."""
    _, raws = open_bundle(data, identity)
    return ledger.ingest(raws)


def _member_id(member) -> str:
    try:
        return check_member_id(member, "member id")
    except ValueError:
        shown = repr(member) if len(str(member)) <= 70 else repr(str(member)[:60] + "…")
        raise Invalid(f"{shown} is not a member id: a member id is 52 lowercase letters and digits, "
                      "as shown on their Settings page") from None


# -- backups ------------------------------------------------------------------------------------

def _scrypt(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


MIN_PASSPHRASE = 8


def make_backup(store, identity, passphrase: str) -> bytes:
    """Everything needed to carry on as this member: person key, settings, all entries."""
    if identity.person_key is None:
        raise Forbidden("this device does not hold your person key (it was paired as a second device): "
                        "make backups on the device that does")
    if not isinstance(passphrase, str) or len(passphrase) < MIN_PASSPHRASE:
        raise Invalid(f"a backup passphrase needs at least {MIN_PASSPHRASE} characters")
    settings = {k: store.get(k) for k in KEEP_SETTINGS if store.get(k) is not None}
    meta = {"member": identity.person_id, "person_key": b64(raw_private(identity.person_key)),
            "device": identity.device_id, "settings": settings, "at": now_ms()}
    salt, nonce, check_nonce = os.urandom(16), os.urandom(12), os.urandom(12)
    key = _scrypt(passphrase, salt, **SCRYPT)
    check = ChaCha20Poly1305(key).encrypt(check_nonce, b"", b"crewnode-backup-v1 passphrase check" + salt)
    prefix, aad = _container(BACKUP_MAGIC, {"v": 1, "kdf": {"name": "scrypt", "salt": b64(salt), **SCRYPT},
                                            "check": b64(check_nonce + check), "nonce": b64(nonce)})
    return prefix + ChaCha20Poly1305(key).encrypt(nonce, frame(meta, raw_entries(store)), aad)


def open_backup(data: bytes, passphrase: str) -> tuple[Ed25519PrivateKey, dict, list[bytes]]:
    """(person key, meta, raw entries) of a backup; WrongPassphrase or Damaged otherwise."""
    aad, header, ciphertext = _split(BACKUP_MAGIC, data, "backup")
    try:
        kdf = header["kdf"]
        salt, nonce, check = unb64(kdf["salt"]), unb64(header["nonce"]), unb64(header["check"])
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        if kdf["name"] != "scrypt" or not all(isinstance(x, int) for x in (n, r, p)) \
                or not (2 <= n and 1 <= r and 1 <= p) or len(check) != 28:
            raise ValueError
        if n & (n - 1):                   # scrypt takes only powers of two
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise Damaged("the backup is damaged (its header is incomplete); nothing was restored") from None
    if 128 * n * r > MAX_SCRYPT_MEMORY or p > MAX_SCRYPT_P:
        raise Damaged("the backup's header asks for far more memory or time than a crewnode backup takes: "
                      "it is damaged or was made to harm; nothing was restored")
    key = _scrypt(passphrase, salt, n, r, p)
    try:
        ChaCha20Poly1305(key).decrypt(check[:12], check[12:], b"crewnode-backup-v1 passphrase check" + salt)
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase for this backup (or its header is damaged); nothing was restored") \
            from None
    try:
        plain = ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise Damaged("the passphrase is right but the backup is damaged (truncated or altered); "
                      "nothing was restored") from None
    meta, raws = unframe(plain, "backup")
    try:
        person_key = Ed25519PrivateKey.from_private_bytes(unb64(meta["person_key"]))
        if b32(raw_public(person_key)) != meta["member"]:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise Damaged("the backup is damaged (its person key does not match its member id)") from None
    return person_key, meta, raws


def restore(data: bytes, passphrase: str, home: Path, service_factory) -> dict:
    """Continue as the backup's member in a NEW home, with a new device key.

    Everything is checked first (passphrase, integrity, every entry through the ledger) in a
    hidden folder beside `home`, which becomes `home` only when all of it held: a failure leaves
    nothing behind. The new device announces itself in each document it may write to, so peers
    learn its sealing key; its logs start at seq 1, so no log ever forks.
    """
    home = Path(home)
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise Conflict(f"{home} already exists and is not empty: restore into a new folder")
    person_key, meta, raws = open_backup(data, passphrase)
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = home.parent / f".{home.name}.restoring-{os.getpid()}-{int(time.time() * 1000)}"
    try:
        identity = new_device(person_key)
        identity.save(staging)
        service = service_factory(staging)
        try:
            result = service.ledger.ingest(raws)
            if result.refused or result.pending:
                raise Damaged(f"the backup's entries do not all hold ({len(result.refused)} refused, "
                              f"{result.pending} waiting); nothing was restored")
            for key, value in (meta.get("settings") or {}).items():
                if key in KEEP_SETTINGS:
                    service.store.put(key, value)
            announced = announce_device(service)
        finally:
            service.close()
        if home.exists():
            home.rmdir()
        os.replace(staging, home)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"member": identity.person_id, "device": identity.device_id, "entries": result.accepted_count,
            "documents": len(announced), "previous_device": meta.get("device")}


# -- devices ------------------------------------------------------------------------------------

def announce_device(service) -> list[str]:
    """Write a `device` entry (carrying this device's certificate) in each document I am an active
    member of where this device has not written yet; returns those documents."""
    done = []
    me, device = service.me, service.identity.device_id
    for doc in readable_docs(service.states, me):
        if (doc, device) not in service.ledger.heads:
            service._write(doc, {"t": "device"})
            done.append(doc)
    return done


def devices_view(service) -> list[dict]:
    """GET /api/devices: my devices, this one first."""
    me = service.me
    certs = device_certs(service.store, me)
    certs.setdefault(service.identity.device_id, service.identity.cert)
    retired = retired_devices(service.states, service.store)
    labels = service.store.get("devices", {}) or {}
    stats = {d: (n, at) for d, n, at in service.store.db.execute(
        "SELECT device, COUNT(*), MAX(at) FROM entries WHERE author = ? GROUP BY device", [me])}
    out = []
    for device, cert in certs.items():
        count, last = stats.get(device, (0, None))
        out.append({"id": device, "this": device == service.identity.device_id,
                    "label": (labels.get(device) or {}).get("label") or ("this device" if device == service.identity.device_id else ""),
                    "added": views.iso(cert["at"]), "retired": device in retired, "entries": count,
                    "last_entry": views.iso(last) if last else None,
                    "holds_person_key": device == service.identity.device_id and service.identity.person_key is not None})
    return sorted(out, key=lambda d: (not d["this"], d["added"]))


def retire_device(service, device: str) -> dict:
    """POST /api/devices/{id}/retire: every document I write in refuses that device's later entries."""
    identity = service.identity
    if identity.person_key is None:
        raise Forbidden("only the device that holds your person key (your first device, or one restored "
                        "from a backup) can retire devices")
    if device == identity.device_id:
        raise Conflict("this is the device you are using: retire it from another of your devices")
    cert = device_certs(service.store, service.me).get(device)
    if cert is None:
        raise NotFound(f"no device {device} of yours is known here")
    # Every document I may write in, crews of a congregation I am gone from too: the device
    # could still write there.
    for doc, state in list(service.states.items()):
        if not service._is_active(state) or device in state.retired_devices:
            continue
        upto = service.ledger.heads.get((doc, device), (0, ""))[0]
        sig = identity.person_key.sign(retire_message(doc, device, upto))
        service._write(doc, {"t": "retire_device", "device": device, "upto": upto, "cert": cert, "sig": b32(sig)})
    noted = service.store.get("retired_devices", []) or []
    if device not in noted:
        service.store.put("retired_devices", noted + [device])
    return next(d for d in devices_view(service) if d["id"] == device)


def is_retired(service, device: str) -> bool:
    """True when `device` was retired (the sync listener then refuses it)."""
    return device in retired_devices(service.states, service.store)


# -- pairing a second device (the first device's side) ------------------------------------------

def pair_pin(device_public: bytes) -> bytes:
    """The part of a pairing code that pins the first device's key (against a relay on the LAN)."""
    return hashlib.sha256(PAIR_PIN_CONTEXT + device_public).digest()[:10]


def pair_proof(secret: bytes, device_public: bytes, seal_public: bytes) -> bytes:
    """The new device's proof that it holds the code, bound to the keys it asks to have certified."""
    return hmac.new(secret, PAIR_CONTEXT + device_public + seal_public, hashlib.sha256).digest()


def format_pair_code(secret: bytes, pin: bytes, address: str) -> str:
    text = b32(secret + pin)
    return "-".join(text[i:i + 4] for i in range(0, len(text), 4)) + "@" + address


def parse_pair_code(code) -> tuple[bytes, bytes, str]:
    """(secret, pin, host:port) of a pairing code as a person typed it."""
    if not isinstance(code, str) or "@" not in code:
        raise Invalid("a pairing code looks like abcd-efgh-…@192.168.1.20:8471: copy all of it")
    text, _, address = code.strip().rpartition("@")
    try:
        raw = unb32("".join(c for c in text.lower() if c not in "- "))
    except ValueError:
        raw = b""
    if len(raw) != 20:
        raise Invalid("this pairing code is incomplete or mistyped: copy it again")
    address = address.strip()
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"{address!r} is not an address (the end of a pairing code is host:port, like "
                      "192.168.1.20:8471): copy all of the code again")
    return raw[:10], raw[10:], address


def new_pairing(service, address: str, label: str = "") -> dict:
    """`crewnode device add`: a one-time code for a second device to join as me."""
    if service.identity.person_key is None:
        raise Forbidden("this device does not hold your person key: add devices from your first device")
    secret = os.urandom(10)
    expires = now_ms() + PAIR_TTL_MS
    pairings = _live_pairings(service)
    pairings[b32(secret)] = {"expires": expires, "label": str(label or "")[:80]}
    service.store.put("pairings", pairings)
    code = format_pair_code(secret, pair_pin(raw_public(service.identity.device_key)), address)
    return {"code": code, "expires": views.iso(expires), "address": address}


def _live_pairings(service) -> dict:
    now = now_ms()
    return {k: v for k, v in (service.store.get("pairings", {}) or {}).items() if v.get("expires", 0) > now}


def answer_pairing(service, peer_device: bytes, request: dict) -> dict:
    """The "pair" sync call: certify the new device's keys if it proves it holds a live code.

    `peer_device` is the key the peer authenticated with over the transport: the certificate is
    only ever issued for that key, so an overheard request is of no use to anyone else.
    """
    if service.identity.person_key is None:
        raise Forbidden("this device cannot add devices (it does not hold the person key)")
    try:
        device, seal, proof = (unb32(request["device"]), unb32(request["seal"]), unb32(request["proof"]))
    except (KeyError, TypeError, ValueError):
        raise Invalid("a pairing request names a device key, a sealing key and a proof") from None
    if device != peer_device or len(seal) != 32:
        raise Forbidden("the pairing request is for another device than the one asking")
    pairings = _live_pairings(service)
    for secret_text, record in pairings.items():
        if hmac.compare_digest(pair_proof(unb32(secret_text), device, seal), proof):
            del pairings[secret_text]
            service.store.put("pairings", pairings)
            cert = make_device_cert(service.identity.person_key, device, seal)
            known = service.store.get("devices", {}) or {}
            known[cert["device"]] = {"cert": cert, "label": record.get("label", ""), "added": now_ms()}
            service.store.put("devices", known)
            service.changed(["device-added"])
            return {"cert": cert, "name": service.my_name()}
    failures = (service.store.get("pairing_failures", 0) or 0) + 1
    if failures >= MAX_PAIR_FAILURES:             # someone is guessing: void every open code
        service.store.put("pairings", {})
        failures = 0
    service.store.put("pairing_failures", failures)
    raise Forbidden("this pairing code is wrong, used or expired: run `crewnode device add` again")


# -- exports for people -------------------------------------------------------------------------

def congregation_export(service, cid: str) -> dict:
    """GET /api/congregations/{cid}/export: the congregation as I see it, as plain JSON."""
    view = service.congregation_view(cid)
    crews = [service.crew_view(c.id) for c in sorted(service.crews_of(cid), key=lambda c: c.id)]
    return {"format": "crewnode-congregation-export", "version": 1, "exported_at": views.iso(now_ms()),
            "exported_by": service.me, "congregation": view, "crews": crews,
            "history": service.history(cid, limit=1_000_000)}


def crew_calendar(service, crew_id: str) -> bytes:
    """GET /api/crews/{crew_id}/calendar.ics: the crew's commitments with due dates, all-day events."""
    import datetime as dt

    from icalendar import Calendar, Event

    crew = service.crew_view(crew_id)
    cal = Calendar()
    cal.add("prodid", "-//crewnode//crew commitments//EN")
    cal.add("version", "2.0")
    cal.add("x-wr-calname", f"{crew['name']}: commitments")
    stamp = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    for c in crew["commitments"]:
        if not c.get("due"):
            continue
        due = dt.date.fromisoformat(c["due"])
        event = Event()
        event.add("uid", f"{c['id']}@crewnode")
        event.add("dtstamp", stamp)
        event.add("dtstart", due)
        event.add("dtend", due + dt.timedelta(days=1))
        who = c.get("by_name") or c["by"][:8]
        mark = {"done": " (done)", "released": " (released)"}.get(c["status"], "")
        event.add("summary", f"{c['what']}: {who}{mark}")
        event.add("description", f"Commitment in the crew {crew['name']}, by {who}; status {c['status']}.")
        event.add("status", "CANCELLED" if c["status"] == "released" else "CONFIRMED")
        cal.add_component(event)
    return cal.to_ical()
