"""The sync protocol, free of any transport: what two nodes say to each other.

One exchange: the client offers a version vector (device -> highest seq) for each document
the server's member may see; the server answers with entries the client lacks (in the order
the server accepted them, so they apply without waiting) and its own vectors, so the client
can push back what the server lacks. Both sides send a document's entries only to a member of
that document: privacy follows membership. Runs until nothing is left to send.

Functions taking `service` run on the node thread (worker.NodeThread.call).
"""
import json
import struct
from contextlib import nullcontext

from node.docstate import gone_from_congregation, records_reach
from node.batches import CheckedBatch, check_batch
from node.ids import is_key_id

from .readahead import ReadAhead, serial_batches

MAX_ROUNDS = 10_000

BATCH_ENTRIES = 10_000
# The first batch of an exchange is smaller: the node starts taking it in sooner, while the
# next one is prepared and checked.
FIRST_BATCH = 2_000
BATCH_BYTES = 8 * 1024 * 1024
MAX_MESSAGE = 16 * 1024 * 1024
MAX_DOCS = 10_000
MAX_DEVICES = 20_000
# Entries of an admitter's log sent before the admission they lead to (`admission_proof`).
PROOF_ENTRIES = 200


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


# -- messages: a JSON part and a run of raw entries --------------------------------------------

def pack(meta: dict, entries: list[bytes] = ()) -> bytes:
    """One message: u32 JSON length, JSON, then each entry as u32 length + bytes."""
    head = json.dumps(meta, separators=(",", ":")).encode()
    parts = [struct.pack(">I", len(head)), head]
    for raw in entries:
        parts.append(struct.pack(">I", len(raw)))
        parts.append(raw)
    return b"".join(parts)


def unpack(data: bytes) -> tuple[dict, list[bytes]]:
    """Split a message; raises ProtocolError on anything malformed, truncated or too large."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < 4:
        raise ProtocolError("message is truncated")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("message is too large")
    (hlen,) = struct.unpack_from(">I", data, 0)
    if 4 + hlen > len(data):
        raise ProtocolError("message is truncated")
    try:
        meta = json.loads(data[4:4 + hlen])
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("message header is not JSON") from None
    if not isinstance(meta, dict):
        raise ProtocolError("message header must be a JSON object")
    entries, at = [], 4 + hlen
    while at < len(data):
        if at + 4 > len(data):
            raise ProtocolError("message is truncated")
        (n,) = struct.unpack_from(">I", data, at)
        if at + 4 + n > len(data):
            raise ProtocolError("message is truncated")
        entries.append(bytes(data[at + 4:at + 4 + n]))
        at += 4 + n
        if len(entries) > BATCH_ENTRIES:
            raise ProtocolError(f"message carries more than {BATCH_ENTRIES} entries")
    return meta, entries


def check_vectors(value) -> dict[str, dict[str, int]]:
    """A {doc: {device: seq}} map from a peer, shape-checked."""
    if not isinstance(value, dict) or len(value) > MAX_DOCS:
        raise ProtocolError("vectors must be a map of documents")
    out = {}
    for doc, vector in value.items():
        if not (isinstance(doc, str) and len(doc) == 64) or not isinstance(vector, dict) or len(vector) > MAX_DEVICES:
            raise ProtocolError("a document vector is malformed")
        for device, seq in vector.items():
            if not isinstance(device, str) or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
                raise ProtocolError("a version vector entry is malformed")
            if not is_key_id(device):
                raise ProtocolError("a version vector names a malformed device")
        out[doc] = vector
    return out


# -- what each side computes --------------------------------------------------------------------

def shared_docs(service, peer_member: str) -> list[str]:
    """Documents I hold that `peer_member` may see: those they are an active member of."""
    return [doc for doc, limit in peer_scope(service, peer_member).items() if limit is None]


def peer_scope(service, peer_member: str) -> dict[str, int | None]:
    """Documents `peer_member` may receive entries of, each with a limit: None for an active
    member; for one who left or was removed, the stored position of their exit, so their node
    learns that they are out (and why) but nothing written after that. None of a crew whose
    congregation they are gone from (their node learns that from the congregation)."""
    out = {}
    for doc, state in service.states.items():
        member = state.members.get(peer_member)
        if member is None:
            limit = void_admission_limit(service, doc, state, peer_member)
            if limit:
                out[doc] = limit
            continue
        if member.status == "active":
            if records_reach(service.states, state, peer_member):
                out[doc] = None
            continue
        if gone_from_congregation(service.states, state, peer_member):
            # The crew's records stopped reaching them when they went from its congregation:
            # what the crew wrote since, their removal from it included, is none of theirs.
            continue
        exits = [x for x in state.exits.get(peer_member, ()) if x.kind != "retired"]
        if exits:
            limit = service.store.rowid_of(max(exits, key=lambda x: x.key).hash) or 0
            # Readmitted by an entry that does not count: they must learn that too.
            out[doc] = max(limit, void_admission_limit(service, doc, state, peer_member) or 0)
    return out


def void_admission_limit(service, doc: str, state, peer_member: str) -> int | None:
    """For a peer admitted (or admitted again) by entries that do not count (written by a
    member after they were removed or left): the stored position of the later of that
    admission and its author's exit, so that the peer's node learns its admission does not
    count, and why, and nothing written after. None for anyone else."""
    if peer_member not in state.void_admitted:
        return None
    limit = 0
    for rowid, author, entry in service.store.void_admissions(doc):
        if entry.op.get("member") != peer_member:
            continue
        exits = [service.store.rowid_of(x.hash) or 0 for x in state.exits.get(author, ()) if x.kind != "retired"]
        limit = max(limit, rowid, *exits)
    return limit or None


def vectors(service, docs) -> dict[str, dict[str, int]]:
    """My version vectors for `docs`: device -> last seq held on its kept branch (void entries
    count: they are held and relayed too). Empty for a document I do not hold."""
    return {doc: {dev: seq for dev, (seq, _) in service.ledger.doc_heads(doc).items()} for doc in docs}


def heads(service, docs) -> dict[str, dict[str, str]]:
    """The hash at the end of each device's kept branch: a peer whose branch differs has a fork."""
    return {doc: {dev: h for dev, (_, h) in service.ledger.doc_heads(doc).items()} for doc in docs}


def fork_counts(service, docs) -> dict[str, dict[str, int]]:
    """For each device whose log I know forked: how many of its entries I hold, every branch.

    Heads and vectors name only the kept branch, so a node on that branch would never learn of
    a dropped one; a peer holding more entries of a forked device sends them all.
    """
    out = {}
    for doc in docs:
        state = service.states.get(doc)
        if state is not None and state.forks:
            out[doc] = {dev: service.store.device_count(doc, dev) for dev in {f["device"] for f in state.forks}}
    return out


def summary(service, docs) -> dict:
    """Vectors, branch heads and forked devices of `docs`, as one side tells the other."""
    docs = list(docs)
    return {"have": vectors(service, docs), "heads": heads(service, docs), "forks": fork_counts(service, docs)}


def offer(service, peer_member: str) -> dict:
    """The client's opening: my summary of everything the peer may see. Of a document it left
    or was removed from, only how far it had come then (it may learn that it is out, and why,
    but not how far the document has come since), and no heads."""
    scope = peer_scope(service, peer_member)
    out = summary(service, [doc for doc, limit in scope.items() if limit is None])
    out["have"].update({doc: service.store.vector_upto(doc, limit) for doc, limit in scope.items() if limit is not None})
    return out


def check_heads(value) -> dict[str, dict[str, str]]:
    """A {doc: {device: hash}} map from a peer, shape-checked."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_DOCS:
        raise ProtocolError("heads must be a map of documents")
    for doc, devices in value.items():
        if not isinstance(devices, dict) or len(devices) > MAX_DEVICES or \
                not all(isinstance(d, str) and isinstance(h, str) and len(h) == 64 for d, h in devices.items()):
            raise ProtocolError("a document's heads are malformed")
    return value


def check_forks(value) -> dict[str, dict[str, int]] | None:
    """A peer's {doc: {device: count}} of forked devices; None when it sent none (an older node)."""
    return None if value is None else check_vectors(value)


def forked_devices(service, doc: str, their_vector: dict, their_heads: dict, their_forks=None) -> list[str]:
    """Devices whose branch the peer holds differs from mine, or of whose forked log I hold
    more entries than the peer: they need every branch I hold."""
    out = []
    mine = service.ledger.doc_heads(doc)
    if their_forks is not None:
        for device, count in fork_counts(service, [doc]).get(doc, {}).items():
            if count > their_forks.get(device, 0):
                out.append(device)
    for device, their_hash in their_heads.items():
        if device in out or mine.get(device, (0, ""))[1] == their_hash:
            continue
        status = service.store.status_of(their_hash)
        if status is not None:
            if status[1] and status[1].startswith("forked log"):
                out.append(device)
        elif service.store.hashes_at(doc, device, their_vector.get(device, 0)):
            out.append(device)
    return out


def missing_for(service, peer_member: str, have: dict, limit: int | None = None,
                their_heads: dict | None = None, their_forks: dict | None = None) -> tuple[list[bytes], bool]:
    """Entries the peer lacks, of documents they may see and gave their vectors for (`have`: a
    peer gives none of a document it knows I am out of); (entries, more left).

    `their_forks` (None from a peer that does not send it) is the peer's `fork_counts`."""
    entries, more, _ = missing_batch(service, peer_member, have, limit, their_heads, their_forks, within=set(have))
    return entries, more


def missing_batch(service, peer_member: str, have: dict, limit: int | None = None,
                  their_heads: dict | None = None, their_forks: dict | None = None,
                  after: dict | None = None, within: set | None = None) -> tuple[list[bytes], bool, dict]:
    """(entries, more left, cursor): entries the peer lacks, only of documents they may see,
    skipping what a previous batch of the same exchange covered (`after`: document -> the
    stored position up to which it was sent); the cursor says how far this batch got.

    The cursor matters for a document the peer holds but did not offer (it does not know yet
    that I may see it): without one, every batch would start again with entries it holds.
    """
    limit = BATCH_ENTRIES if limit is None else limit
    their_heads = their_heads or {}
    after = after or {}
    out: list[bytes] = []
    cursor: dict[str, int] = {}
    size = 0
    for doc, upto in peer_scope(service, peer_member).items():
        if within is not None and doc not in within:
            continue
        if len(out) >= limit or size >= BATCH_BYTES:
            return out, True, cursor
        vector = have.get(doc, {})
        batch = []
        forks = None if their_forks is None else their_forks.get(doc, {})
        for device in forked_devices(service, doc, vector, their_heads.get(doc, {}), forks) if upto is None else ():
            batch.extend((None, raw) for raw in service.store.device_entries(doc, device))
        if not batch and vector == vectors(service, [doc])[doc]:
            continue
        batch += service.store.missing_rows(doc, vector, limit - len(out) + 1, upto, after.get(doc, 0))
        for rowid, raw in batch:
            if len(out) >= limit or size + len(raw) > BATCH_BYTES:
                return out, True, cursor
            out.append(raw)
            size += len(raw)
            if rowid is not None:
                cursor[doc] = rowid
    return out, False, cursor


def check_after(value) -> dict[str, int]:
    """A {doc: stored position} cursor from a peer, shape-checked."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_DOCS:
        raise ProtocolError("after must be a map of documents")
    for doc, rowid in value.items():
        if not (isinstance(doc, str) and len(doc) == 64) or not isinstance(rowid, int) \
                or isinstance(rowid, bool) or rowid < 0:
            raise ProtocolError("a cursor entry is malformed")
    return value


def pushable(service, peer_member: str, docs) -> list[str]:
    """Of `docs`, those the peer may push: all but those I know it is out of (it left, was
    removed, or is gone from a crew's congregation), of which it learns nothing more. Receiving
    is safe from anyone (every entry is checked on its own signature and author), and a
    document I do not know the peer in may be one whose news of its admission it carries."""
    states = service.states
    return [doc for doc in docs if doc not in states or peer_member not in states[doc].members
            or records_reach(states, states[doc], peer_member)]


def wanted(service, peer_member: str, docs) -> dict:
    """What I tell a peer of `docs` so that it pushes only what I lack: my summary of those it
    may see, and of the others it may push (a document I hold without knowing it a member, or
    do not hold) an empty vector, as if I held nothing of them: a stranger who knows a
    document's id learns neither who writes in it nor how much, nor that I hold it. (A member
    whose admission has not reached me pushes that first: `admission_proof`.)"""
    states = service.states
    docs = pushable(service, peer_member, docs)
    out = summary(service, [d for d in docs if d in states and records_reach(states, states[d], peer_member)])
    out["have"] = {doc: out["have"].get(doc, {}) for doc in docs}
    return out


def admission_proof(service, peer_member: str, told: dict) -> list[bytes]:
    """For documents the peer may see whose vector it gave empty (it does not hold them, or does
    not know me a member: `wanted`), the entries that admitted me, each after up to
    PROOF_ENTRIES entries of its author's log before it (the invite it uses, say), so that the
    peer can take it in and tell me what it lacks, rather than being sent everything."""
    out: list[bytes] = []
    size = 0
    for doc, limit in peer_scope(service, peer_member).items():
        if limit is not None or told.get(doc) != {}:
            continue
        for _, _, device, seq in service.states[doc].admitted_by.get(service.me, ()):
            for raw in service.store.log_entries(doc, device, max(1, seq - PROOF_ENTRIES + 1), seq):
                if len(out) >= BATCH_ENTRIES or size + len(raw) > BATCH_BYTES:
                    return out
                out.append(raw)
                size += len(raw)
    return out


def answer_exchange(service, peer_member: str, meta: dict) -> bytes:
    """The server's answer to an exchange: what the client lacks, and my vectors."""
    have = check_vectors(meta.get("have", {}))
    after = check_after(meta.get("after"))
    limit = meta.get("limit", BATCH_ENTRIES)            # the client's; mine caps it
    if type(limit) is not int or limit < 1:
        raise ProtocolError("limit must be a positive number of entries")
    entries, more, cursor = missing_batch(service, peer_member, have, min(limit, BATCH_ENTRIES), check_heads(meta.get("heads")),
                                          check_forks(meta.get("forks")), after)
    # My vectors for what the client offered and for what it may see (it may hold those now,
    # from this very exchange): what the client pushes next is then only what I lack.
    want = wanted(service, peer_member, dict.fromkeys([*have, *peer_scope(service, peer_member)]))
    return pack({"more": more, "want": want["have"], "want_heads": want["heads"], "want_forks": want["forks"],
                 "after": {**after, **cursor}},
                entries)


def take_entries(service, entries, allowed_docs=None, sender: str | None = None):
    """Ingest entries from a peer, `sender` (raw, or a CheckedBatch) and tell listeners; returns
    the IngestResult."""
    result = service.ledger.ingest(entries, allowed_docs, sender=sender)
    service.changed(result.taken)
    return result


def receive_push(service, peer_member: str, meta: dict, entries) -> bytes:
    """The server's side of a push: take entries of the documents it was offered."""
    docs = meta.get("docs", [])
    if not isinstance(docs, list) or len(docs) > MAX_DOCS:
        raise ProtocolError("docs must be a list of document ids")
    allowed = {d for d in docs if isinstance(d, str)}
    result = take_entries(service, entries, allowed, peer_member)
    service.store.catch_up()            # the answer says what is stored: stored it is, not on its way
    want = wanted(service, peer_member, sorted(allowed))
    return pack({"accepted": result.accepted_count + result.void, "pending": result.pending,
                 "known": result.known, "refused": [reason for _, reason in result.refused][:20],
                 "want": want["have"], "want_heads": want["heads"], "want_forks": want["forks"]})


def read_message(body: bytes) -> tuple[dict, CheckedBatch]:
    """Split a message and check the entries it carries (batches.check_batch). Needs no node:
    the listener's or the sync client's thread does it, and the node's thread gets entries
    ready to take in."""
    meta, entries = unpack(body)
    return meta, check_batch(entries)


def serve(service, peer_member: str, name: str, body) -> bytes:
    """Answer one protocol call of an authenticated peer (on the node thread); `body` is the
    request's bytes, or what read_message made of them."""
    meta, entries = body if isinstance(body, tuple) else unpack(body)
    if name == "exchange":
        return answer_exchange(service, peer_member, meta)
    if name == "push":
        return receive_push(service, peer_member, meta, entries)
    raise ProtocolError(f"no such sync call: {name}")


def lacking(have: dict, want: dict) -> int:
    """How many entries the peer's vectors (`want`) are ahead of mine (`have`)."""
    return sum(seq - have.get(doc, {}).get(device, 0) for doc, vector in want.items()
               for device, seq in vector.items() if seq > have.get(doc, {}).get(device, 0))


def next_limit(left: int) -> int:
    """How many entries to ask for next, with about `left` still to come: full batches, and
    a last one as small as the first, so that the sync ends soon after it arrives (the last
    batch is checked, taken in and stored with nothing left to overlap it)."""
    if 2 * FIRST_BATCH < left <= BATCH_ENTRIES + FIRST_BATCH:
        return left - FIRST_BATCH
    return BATCH_ENTRIES


def run_exchange(run, peer_member: str, remote, prefetch: bool = False) -> tuple[int, int]:
    """The client's side of one full exchange; returns (received, sent).

    `run(fn, *args)` calls `fn(service, *args)` on my node; `remote(name, body) -> bytes` asks
    the peer. Over HTTPS these are NodeThread.call and SyncClient.call; in a simulation, plain
    function calls, so many nodes can be driven in one process.

    With `prefetch` (when `remote` may be called from another thread), the next batch is fetched
    while this one is checked and taken in (sync.readahead): each request carries the cursor of
    the batch before it, so the peer sends what follows.
    """
    received = sent = 0
    want: dict = {}
    want_heads: dict = {}
    want_forks: dict | None = None
    after: dict = {}
    asked = 0
    fetched = 0                                         # entries fetched in this round

    def fetch(request: dict) -> tuple[dict, list[bytes]]:
        nonlocal asked, fetched
        asked += 1
        meta, entries = unpack(remote("exchange", pack(request)))
        fetched += len(entries)
        return meta, entries

    def follow(request: dict, meta: dict) -> dict | None:
        moved = check_after(meta.get("after"))
        if not meta.get("more") or moved == request.get("after", {}) or asked >= MAX_ROUNDS:
            return None                                 # the last batch, or the peer's cursor stalled
        left = lacking(opening["have"], check_vectors(meta.get("want", {}))) - fetched
        return {**opening, "after": moved, "limit": next_limit(left)}

    for round_ in range(MAX_ROUNDS):
        # Each round offers what I hold now; a round ends when the peer's cursor stops moving.
        opening = run(offer, peer_member)
        fetched = 0
        if after:
            opening["after"] = after
        first = opening if round_ else {**opening, "limit": FIRST_BATCH}
        batches = ReadAhead(fetch, first, follow) if prefetch else nullcontext(serial_batches(fetch, first, follow))
        more = progress = False
        with batches as stream:
            for reply_meta, entries in stream:
                want = check_vectors(reply_meta.get("want", {}))
                want_heads = check_heads(reply_meta.get("want_heads"))
                want_forks = check_forks(reply_meta.get("want_forks"))
                after = check_after(reply_meta.get("after"))
                more = bool(reply_meta.get("more"))
                result = run(take_entries, entries, None, peer_member)
                received += result.accepted_count + result.void
                progress = bool(result.taken or result.void)
        if not (more and progress) or asked >= MAX_ROUNDS:
            break                                       # all sent; or no progress: stop rather than ask again

    def push(entries: list[bytes]) -> int:
        nonlocal sent, want, want_heads, want_forks
        reply_meta, _ = unpack(remote("push", pack({"docs": sorted(want)}, entries)))
        accepted = int(reply_meta.get("accepted", 0))
        sent += accepted
        want = check_vectors(reply_meta.get("want", {}))
        want_heads = check_heads(reply_meta.get("want_heads"))
        want_forks = check_forks(reply_meta.get("want_forks"))
        return accepted

    proof = run(admission_proof, peer_member, want)
    if proof:
        push(proof)
    for _ in range(MAX_ROUNDS):
        entries, more = run(missing_for, peer_member, want, None, want_heads, want_forks)
        if not entries or not push(entries) or not more:
            break
    return received, sent
