"""The accept pipeline: every entry, local or received, is checked here before it counts.

Checks, in order: shape and size (entries.decode_entry), signature (one per hash-chained run),
the device certificate, the device's hash chain, the author's membership and the document's
rules. An entry whose dependencies are missing waits in `pending`; a bad one is refused with a
reason and changes nothing.
"""
from dataclasses import dataclass, field

from .docstate import DocState
from .entries import EntryError, decode_entry, verify_runs
from .rules import Pending, Refused, check_genesis, check_op

MAX_PENDING = 200_000
SNAPSHOT_EVERY = 2_000


@dataclass
class IngestResult:
    """What became of a batch of entries."""

    accepted: list = field(default_factory=list)
    pending: int = 0
    known: int = 0
    refused: list = field(default_factory=list)      # (hash or None, reason)

    def as_dict(self) -> dict:
        return {"accepted": len(self.accepted), "pending": self.pending, "known": self.known,
                "refused": [{"entry": h, "reason": r} for h, r in self.refused]}


class Ledger:
    """Accepted entries of every document this node holds, and their states."""

    def __init__(self, store):
        self.store = store
        self.states: dict[str, DocState] = {}
        self.devices: dict[str, str] = {}                # device id -> member id
        self.heads: dict[tuple, tuple] = store.heads()   # (doc, device) -> (seq, hash)
        self._since_snapshot: dict[str, int] = {}
        self._load()

    def _load(self) -> None:
        for doc in self.store.doc_ids():
            snap = self.store.snapshot(doc)
            upto, state_bytes = snap if snap else (0, None)
            state = None
            for rowid, author, entry in self.store.entries_of(doc):
                if state is None:
                    state = DocState(doc, entry)
                    if state_bytes:
                        state.ydoc.apply_update(state_bytes)
                if rowid <= upto:
                    body, entry.body = entry.body, b""   # already in the snapshot
                    state.apply(entry, author)
                    entry.body = body
                else:
                    state.apply(entry, author)
                self.devices[entry.device] = author
            if state is not None:
                self.states[doc] = state

    # -- accepting ---------------------------------------------------------------------------

    def ingest(self, raws: list[bytes], allowed_docs=None, retry_docs=()) -> IngestResult:
        """Check and store a batch of received entries; retry what waited on them.

        With `allowed_docs`, entries of any other document are refused: a peer may only send
        what was asked of it. Entries waiting in the documents of `retry_docs` are retried too.
        """
        result = IngestResult()
        fresh = {}
        for raw in raws:
            try:
                entry = decode_entry(raw)
            except EntryError as exc:
                result.refused.append((None, str(exc)))
                continue
            if allowed_docs is not None and entry.doc not in allowed_docs:
                result.refused.append((entry.hash, "this document was not part of the exchange"))
                continue
            if entry.hash in fresh or self.store.has(entry.hash):
                result.known += 1
                continue
            fresh[entry.hash] = entry
        signed = verify_runs(list(fresh.values()))
        for h in [h for h, ok in signed.items() if not ok]:
            result.refused.append((h, "signature does not hold"))
            del fresh[h]
        docs = {e.doc for e in fresh.values()} | set(retry_docs)
        # Every waiting entry of these documents, one that has just arrived again included: it
        # must count as waiting, so that its row goes once it is accepted or refused.
        waiting = {}
        for raw in self.store.pending_raw(docs):
            entry = decode_entry(raw)
            waiting[entry.hash] = entry
        candidates = {**waiting, **fresh}
        accepted, reasons = self._settle(candidates, result)
        for h, reason in reasons.items():
            if h in fresh:
                result.pending += 1
        self._commit(accepted, reasons, candidates, set(waiting))
        result.accepted = [e for e, _ in accepted]
        return result

    def append(self, entry) -> None:
        """Check and store one entry written here; raises Refused with the reason."""
        accepted, reasons = self._settle({entry.hash: entry}, IngestResult(), strict=True)
        if not accepted:
            raise Refused(next(iter(reasons.values()), "the entry was not accepted"))
        self._commit(accepted, {}, {}, set())
        if self.store.pending_raw([entry.doc]):          # some may have waited for this one (an admission)
            self.ingest([], retry_docs=[entry.doc])

    def _settle(self, candidates: dict, result: IngestResult, strict: bool = False):
        """Accept what can be accepted, repeating while acceptance unlocks more."""
        remaining = sorted(candidates.values(), key=lambda e: (not e.is_genesis, e.at, e.seq))
        accepted: list[tuple] = []
        reasons: dict[str, str] = {}
        progress = True
        while remaining and progress:
            progress = False
            still = []
            for entry in remaining:
                try:
                    author = self._decide(entry)
                except Pending as exc:
                    if strict:
                        raise Refused(str(exc)) from None
                    reasons[entry.hash] = str(exc)
                    still.append(entry)
                    continue
                except (Refused, TypeError, KeyError, AttributeError) as exc:
                    if strict:
                        raise
                    # a rule tripping over a malformed field of a received entry is a refusal too
                    reason = str(exc) if isinstance(exc, Refused) else f"malformed operation ({exc!r})"
                    result.refused.append((entry.hash, reason))
                    reasons.pop(entry.hash, None)
                    continue
                if author is None:                         # already held
                    result.known += 1
                    continue
                self._accept(entry, author)
                accepted.append((entry, author))
                reasons.pop(entry.hash, None)
                progress = True
            remaining = still
        return accepted, {e.hash: reasons[e.hash] for e in remaining}

    def _decide(self, entry) -> str | None:
        """The author of an acceptable entry; None if held already; else Pending/Refused."""
        if entry.is_genesis:
            check_genesis(entry)
            return None if entry.hash in self.states else entry.cert["person"]
        state = self.states.get(entry.doc)
        if state is None:
            raise Pending("its document has not arrived")
        head = self.heads.get((entry.doc, entry.device), (0, ""))
        if entry.seq <= head[0]:
            held = self.store.hash_at(entry.doc, entry.device, entry.seq)
            if held == entry.hash or held is None:
                return None
            raise Refused(f"forked log: device {entry.device[:8]} already wrote another entry at seq {entry.seq}")
        if entry.seq > head[0] + 1:
            raise Pending(f"entries before seq {entry.seq} of this device have not arrived")
        if entry.prev != head[1]:
            raise Refused("broken hash chain: prev does not match the device's previous entry")
        author = entry.cert["person"] if entry.cert else self.devices.get(entry.device)
        if author is None:
            raise Pending("the certificate of this device has not arrived")
        if entry.cert is None and entry.seq == 1:
            raise Refused("a device's first entry must carry its certificate")
        check_op(entry, author, state)
        return author

    def _accept(self, entry, author: str) -> None:
        if entry.is_genesis:
            self.states[entry.hash] = DocState(entry.hash, entry)
        self.states[entry.doc].apply(entry, author)
        self.heads[(entry.doc, entry.device)] = (entry.seq, entry.hash)
        self.devices[entry.device] = author

    def _commit(self, accepted, reasons, candidates, was_pending: set) -> None:
        rows = [(e.hash, e.doc, e.device, e.seq, author, e.at, e.op["t"], e.raw) for e, author in accepted]
        newly_waiting = [(h, candidates[h].doc, candidates[h].raw, reason, candidates[h].at)
                         for h, reason in reasons.items() if h not in was_pending]
        done = [h for h in was_pending if h not in reasons]
        room = MAX_PENDING - self.store.pending_count()
        with self.store.atomic():
            self.store.insert_entries(rows)
            self.store.add_pending(newly_waiting[:max(room, 0)])
            self.store.drop_pending(done)
        for entry, _ in accepted:
            self._since_snapshot[entry.doc] = self._since_snapshot.get(entry.doc, 0) + 1
        for doc, count in list(self._since_snapshot.items()):
            if count >= SNAPSHOT_EVERY:
                self.snapshot(doc)

    def snapshot(self, doc: str | None = None) -> None:
        """Save pycrdt snapshots (of one or all documents) so the next start skips replay."""
        upto = self.store.max_rowid()
        for doc_id in [doc] if doc else list(self.states):
            state = self.states[doc_id]
            self.store.save_snapshot(doc_id, upto, state.ydoc.get_update())
            self._since_snapshot[doc_id] = 0
