"""Helpers for unit tests: Services in temporary folders, members without a node, raw entries.

Import as ``from factories import ...`` (pytest puts this folder on sys.path: it has no
__init__.py). Nothing here touches the network: entries travel between Services by copying
their raw bytes from one ledger to another, as sync will.
"""
from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pycrdt import Doc, Map

from node.entries import build_entry
from node.identity import new_device
from node.ids import b32, now_ms
from node.rules import bind_record_id, invite_message
from node.service import Service, invite_key
from sync import protocol


class Member:
    """A member without a node: a person and device key that writes entries by hand.

    ``write(doc, op)`` builds the next entry of this device's log in ``doc`` (seq and prev kept
    here; the first entry in a document carries the certificate) and returns it.
    """

    def __init__(self, name: str = "Mo"):
        self.name = name
        self.person_key = Ed25519PrivateKey.generate()
        self.identity = new_device(self.person_key)
        self.heads: dict[str, tuple[int, str]] = {}
        self.last_at = 0

    @property
    def id(self) -> str:
        return self.identity.person_id

    def write(self, doc: str, op: dict, body: bytes = b"", at: int | None = None, seq: int | None = None,
              prev: str | None = None, with_cert: bool | None = None):
        top, last = self.heads.get(doc, (0, ""))
        seq = top + 1 if seq is None else seq
        bind_record_id(op, doc, self.identity.device_id, seq)   # an id left None: the one its place gives
        prev = last if prev is None else prev
        with_cert = seq == 1 if with_cert is None else with_cert
        if at is None:                      # later than this device's previous entry, like a node's clock
            at = max(now_ms(), self.last_at + 1)
        self.last_at = max(self.last_at, at)
        entry = build_entry(self.identity, doc, seq, prev, at, op, body, with_cert=with_cert)
        self.heads[doc] = (entry.seq, entry.hash)
        return entry


def content_edits(member: Member, doc: str, n: int, ydoc: Doc | None = None) -> list:
    """n entries of `member` in `doc`, each a real pycrdt edit of the shared content (made in
    `ydoc`, the member's copy of it; default: a new one)."""
    ydoc = Doc() if ydoc is None else ydoc
    meta = ydoc.get("meta", type=Map)
    out = []
    for i in range(n):
        before = ydoc.get_state()
        with ydoc.transaction():
            meta[f"note-{member.name}"] = f"edit {i} " + "x" * 40
        out.append(member.write(doc, {"t": "meta"}, ydoc.get_update(before)))
    return out


def service(root: Path, name: str) -> Service:
    """A fresh Service (new identity) in ``root/name``."""
    return Service(Path(root) / name, name=name)


def admit(founder: Service, cid: str, member_id: str, name: str | None = None) -> None:
    """Have ``founder`` admit ``member_id`` with an invite code, as the join flow does."""
    from node.identity import raw_public
    secret = invite_key(founder.create_invite(cid)["code"])
    key = b32(raw_public(secret))
    founder.admit(key, member_id, name or "", secret.sign(invite_message(key, member_id)))


def all_raw(svc: Service, doc: str | None = None) -> list[bytes]:
    """Every accepted entry of one document (or of all), in log order per device."""
    docs = [doc] if doc else list(svc.states)
    out = []
    for d in docs:
        out.extend(svc.store.raw_after(d, {}))
    return out


def copy_docs(src: Service, dst: Service, docs=None) -> None:
    """Give ``dst`` every entry of ``docs`` (default: all) that ``src`` holds and it lacks."""
    for doc in docs or list(src.states):
        raws = src.store.raw_after(doc, dst.store.vector(doc))
        if raws:
            result = dst.ledger.ingest(raws)
            assert not result.refused, result.as_dict()


def sync_all(*services: Service) -> None:
    """Copy every document between every pair until all hold the same entries."""
    for _ in range(2):
        for a in services:
            for b in services:
                if a is not b:
                    copy_docs(a, b)


def invite_op(code_key: Ed25519PrivateKey | None = None, expires: int | None = None) -> dict:
    """An `invite` operation, for entries built by hand."""
    from node.identity import raw_public
    key = code_key or Ed25519PrivateKey.generate()
    return {"t": "invite", "key": b32(raw_public(key)), "expires": expires or now_ms() + 86_400_000, "note": ""}


def propose_op(entitled: list[str], title: str = "Quiet hours", text: str = "After ten", **extra) -> dict:
    """A `propose` operation, for entries built by hand."""
    return {"t": "propose", "agreement": None, "kind": "agreement", "title": title, "text": text,
            "review_by": None, "entitled": list(entitled), **extra}


def congregation(root: Path, names=("Ada", "Bea", "Cy"), title: str = "Riverside"):
    """Services for `names` (the first founds), all admitted and holding the same entries.

    Returns (services in the order of `names`, congregation id).
    """
    services = [service(root, n) for n in names]
    cid = services[0].create_congregation(title, "neighbours on one street")["id"]
    for other in services[1:]:
        admit(services[0], cid, other.me, other.my_name())
    sync_all(*services)
    return services, cid


def exchange(a: Service, b: Service) -> tuple[int, int]:
    """One full exchange, `a` the client and `b` the server, as over HTTPS but in-process."""
    return protocol.run_exchange(lambda fn, *args: fn(a, *args), b.me,
                                 lambda name, body: protocol.serve(b, a.me, name, body))


def sync_until_quiet(nodes: list) -> None:
    """Everyone syncs with everyone until a whole round moves nothing."""
    for _ in range(20):
        moved = sum(sum(exchange(a, b)) for a in nodes for b in nodes if a is not b)
        if moved == 0:
            return
    raise AssertionError("sync did not become quiet after 20 rounds of everyone with everyone")
