"""The accept pipeline: every entry, local or received, is checked here before it counts.

Checks, in order: shape and size (entries.decode_entry), signature (one per hash-chained run),
the device certificate, the device's hash chain, the author's membership and the document's
rules. An entry whose dependencies are missing waits in `pending`; a bad one is refused with a
reason and changes nothing.

An entry that is signed and chained but cannot count (written after its author left or was
removed, on the losing branch of a forked log, or building on such an entry) is *held* as void:
kept and relayed like any other, never applied. Leaving, removal, readmission and forks change
which entries count, so they trigger `recompute`: the document's state is computed again from
every held entry by a fixed procedure, the same on every node whatever order entries arrived in.
"""
import functools
import gc
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from operator import attrgetter

from . import snapshots
from .batches import CheckedBatch, ContentRun, check_batch
from .docstate import BadContent, DocState, membership_event, order_key
from .entries import EntryError, decode_entry
from .ids import now_ms
from .packed_rows import SharedRows
from .rules import Pending, Refused, Void, check_genesis, check_op, record_id

# Entries waiting for what they depend on, at most: every batch of their documents tries them
# again, so the bound is also a bound on what a batch costs. Past it, an entry is not kept: its
# sender still holds it, and sends it again at the next sync.
MAX_PENDING = 10_000
MAX_PENDING_BYTES = 32 * 2 ** 20
# Of those places, at most this many hold entries brought by any one peer: a member filling them
# with entries that can never be decided still leaves room for others' entries that must wait.
MAX_PENDING_PER_PEER = 2_500
SNAPSHOT_EVERY = 2_000
# A recompute that took at least COSTLY_S seconds: one that a peer's entries call for again
# within RECOMPUTE_SPACING times as long after it waits for a quiet moment (`run_due`), so
# that a peer sending entry after entry that each call for one (a former member's void
# leaves, say) cannot keep the node's thread busy with nothing else.
COSTLY_S = 0.2
RECOMPUTE_SPACING = 4
DUE_KEY = "recompute_due"
FORKED = "forked log: another entry of this device at the same seq was kept"
DEPENDS = "it depends on an entry that does not count"
PARADOX = "it would make an earlier leaving, removal or readmission not count, and with it the grounds it rests on"
MEMBERSHIP_OPS = {"leave", "cut", "retire_device"}
_TIME_ORDER = attrgetter("at", "seq")
_IS_GENESIS = attrgetter("is_genesis")


def _entries_in(item) -> int:
    """How many entries a decided item or a row stands for: a ContentRun or SharedRows, many."""
    return len(item.hashes) if type(item) in (ContentRun, SharedRows) else 1


def _without_cyclic_gc(method):
    """Run `method` with Python's cyclic garbage collector paused. A batch makes tens of
    thousands of short-lived objects without cycles (freed by reference counting); meanwhile
    the collector would walk every object of every document's state again and again."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            return method(*args, **kwargs)
        finally:
            if paused:
                gc.enable()
    return wrapper


@dataclass
class IngestResult:
    """What became of a batch of entries."""

    taken: list = field(default_factory=list)        # accepted entries and ContentRuns, in order
    void: int = 0
    pending: int = 0
    known: int = 0
    refused: list = field(default_factory=list)      # (hash or None, reason)

    @property
    def accepted(self) -> list:
        """The accepted entries, each on its own (runs decoded)."""
        return [e for item in self.taken for e in (item.entries() if type(item) is ContentRun else (item,))]

    @property
    def accepted_count(self) -> int:
        """How many entries were accepted."""
        return sum(len(item) if type(item) is ContentRun else 1 for item in self.taken)

    def as_dict(self) -> dict:
        return {"accepted": self.accepted_count, "void": self.void, "pending": self.pending, "known": self.known,
                "refused": [{"entry": h, "reason": r} for h, r in self.refused]}


class Ledger:
    """Held entries of every document this node holds, and their states."""

    def __init__(self, store):
        self.store = store
        store.on_lost_writes = self.reload
        self.reload()
        self.run_due()                                   # what a stop (or a crash) left waiting

    def reload(self) -> None:
        """Everything from the store: at start, and when a batch written behind could not be
        stored (its entries are forgotten; the peers that sent them still hold them)."""
        store = self.store
        self.states: dict[str, DocState] = {}
        self.devices: dict[str, str] = {}                # device id -> member id
        self.heads: dict[tuple, tuple] = store.heads()   # (doc, device) -> (seq, hash) of the kept branch
        self._since_snapshot: dict[str, int] = {}
        self._facts_at: dict[str, int] = {}               # doc -> its entry count when its facts were saved
        self._facts_due: set[str] = set()                # docs whose facts wait for a quiet moment
        self._batch: dict[tuple, list] = {}              # (doc, device, seq) -> hashes held in this batch
        self._batch_runs: dict[tuple, list] = {}         # (doc, device) -> ContentRuns held in this batch
        self._held: set[str] = set()                     # candidates of this batch held already
        # The entries waiting in `pending`, decoded, kept here as well (doc -> {hash: entry}):
        # a batch tries them again without asking the store, so taking in a batch need not wait
        # for the previous one to be written (Store.write_behind), nor decode them again.
        self._waiting: dict[str, dict] = {}
        self._waiting_count = self._waiting_bytes = 0
        self._waiting_from: dict[str, str] = {}          # hash -> the peer that brought it (not mine)
        self._waiting_per_peer: Counter = Counter()
        self._recomputed: dict[str, tuple] = {}          # doc -> (when its last recompute ended, seconds it took)
        self._load_waiting()
        self._load()

    def _load_waiting(self) -> None:
        # Rows an older version kept with laxer checks, or past today's bounds, go.
        dropped = []
        for hash_, raw, sender in self.store.pending_raw():
            try:
                entry = decode_entry(raw)
            except EntryError:
                dropped.append(hash_)
                continue
            if self._room_to_wait(entry, sender):
                self._wait(entry, sender)
            else:
                dropped.append(hash_)
        if dropped:
            self.store.drop_pending(dropped)

    def _wait(self, entry, sender: str | None) -> None:
        self._waiting.setdefault(entry.doc, {})[entry.hash] = entry
        self._waiting_count += 1
        self._waiting_bytes += len(entry.raw)
        if sender is not None:
            self._waiting_from[entry.hash] = sender
            self._waiting_per_peer[sender] += 1

    def _stop_waiting(self, entry) -> None:
        waiting = self._waiting.get(entry.doc, {})
        if waiting.pop(entry.hash, None) is not None:
            self._waiting_count -= 1
            self._waiting_bytes -= len(entry.raw)
            sender = self._waiting_from.pop(entry.hash, None)
            if sender is not None:
                self._waiting_per_peer[sender] -= 1
                if not self._waiting_per_peer[sender]:
                    del self._waiting_per_peer[sender]
            if not waiting:
                del self._waiting[entry.doc]

    def _room_to_wait(self, entry, sender: str | None) -> bool:
        return self._waiting_count < MAX_PENDING and self._waiting_bytes + len(entry.raw) <= MAX_PENDING_BYTES \
            and (sender is None or self._waiting_per_peer[sender] < MAX_PENDING_PER_PEER)

    def _load(self) -> None:
        self.devices.update(self.store.device_authors())
        for doc in self.store.doc_ids():
            snap = self.store.snapshot(doc)
            upto, state_bytes = snap if snap else (0, None)
            # The facts as of a snapshot, when usable: then only the entries after it are replayed.
            restored = snapshots.load_facts(self.store.snapshot_facts(doc), state_bytes) if snap else None
            facts_upto, state = restored if restored else (0, None)
            if state is not None:
                self._facts_at[doc] = state.count
            for rowid, author, entry, status, reason in self.store.held_entries(doc, facts_upto):
                self.devices[entry.device] = author
                if state is None:
                    state = DocState(doc, entry)
                    if state_bytes:
                        state.ydoc.apply_update(state_bytes)
                if status != "accepted":
                    self._note_void(state, entry, reason)
                    continue
                if rowid <= upto:
                    body, entry.body = entry.body, b""   # already in the snapshot
                    state.apply(entry, author)
                    entry.body = body
                else:
                    state.apply(entry, author)
            if state is None:
                continue
            self.states[doc] = state
            # What was stored came out of a full recompute, so every event accepted is in effect.
            state.take_effect(accepted_events(state))
            if FORKED in state.void.values():          # every void entry held is noted there, with its reason
                self.recompute(doc)

    # -- accepting ---------------------------------------------------------------------------

    @_without_cyclic_gc
    def ingest(self, raws, allowed_docs=None, retry_docs=(), sender: str | None = None) -> IngestResult:
        """Check and store a batch of received entries (raw bytes, or a CheckedBatch made by
        batches.check_batch); retry what waited on them.

        With `allowed_docs`, entries of any other document are refused: a peer may only send
        what was asked of it. Entries waiting in the documents of `retry_docs` are retried too.
        `sender`: the peer member the entries came from, whose entries wait in a bounded share
        of the places (None: from this node's own user, a bundle say).
        """
        checked = raws if isinstance(raws, CheckedBatch) else check_batch(raws)
        vouched = self._vouched_for(checked.unsigned)
        result = IngestResult(refused=[r for r in checked.refused if r[0] not in vouched])
        decoded = checked.entries + list(vouched.values())
        runs = []
        for run in checked.runs:
            # A run that may hold entries held already, or that starts with one waiting here
            # (which must stay a candidate of its own), is taken entry by entry.
            if self._may_be_stored(run.doc, run.device, run.seq) or run.hash in self._waiting.get(run.doc, ()):
                decoded += run.entries()
            else:
                runs.append(run)
        if allowed_docs is not None:
            for item in decoded + runs:
                if item.doc not in allowed_docs:
                    result.refused += [(h, "this document was not part of the exchange")
                                       for h in (item.hashes if type(item) is ContentRun else (item.hash,))]
            decoded = [e for e in decoded if e.doc in allowed_docs]
            runs = [r for r in runs if r.doc in allowed_docs]
        held = self._held_among(decoded)
        fresh = {run.hash: run for run in runs}
        for entry in decoded:
            if entry.hash in fresh or entry.hash in held:
                result.known += 1
                continue
            fresh[entry.hash] = entry
        # Documents whose first entry waits (a crew waiting for its founder's admission) are
        # retried with every batch: what unlocks them lives in another document.
        docs = {e.doc for e in fresh.values()} | set(retry_docs) | \
            {d for d, waiting in self._waiting.items() if d in waiting and d not in self.states}
        # Every waiting entry of these documents, one that has just arrived again included: it
        # must count as waiting, so that its row goes once it is accepted or refused.
        waiting = {h: e for d in docs & self._waiting.keys() for h, e in self._waiting[d].items()}
        candidates = {**waiting, **fresh}
        # One pycrdt transaction per document for the whole batch: the same state as applying
        # each update on its own (checked byte for byte), about three times faster.
        with ExitStack() as transactions:
            for doc in docs:
                if doc in self.states:
                    transactions.enter_context(self.states[doc].ydoc.transaction())
            # (Fresh entries are not held: only the waiting ones may have been meanwhile.)
            decided, reasons, recompute = self._settle(candidates, result, held=self._held_among(waiting.values()))
        result.pending = sum(1 for h in reasons if h not in waiting)
        later = {doc for doc in recompute if sender is not None and self._recomputed_lately(doc)}
        # Received entries are still held by whoever sent them: no fsync of their own (Store.atomic).
        self._commit(decided, reasons, candidates, set(waiting), durable=False, sender=sender,
                     recompute_due=self.due() | later if later else None)
        result.taken = [e for e, _, why in decided if why is None]
        result.void = sum(1 for _, _, why in decided if why is not None)
        for doc in recompute - later:
            self.recompute(doc)
        return result

    def _recomputed_lately(self, doc: str) -> bool:
        ended, took = self._recomputed.get(doc, (None, 0.0))
        return took >= COSTLY_S and time.monotonic() - ended < RECOMPUTE_SPACING * took

    def due(self) -> set[str]:
        """Documents whose recompute waits for a quiet moment."""
        return set(self.store.get(DUE_KEY, []))

    def run_due(self) -> list[str]:
        """Carry out the recomputes that wait (at a quiet moment, and at start); returns their documents."""
        due = sorted(self.due())
        for doc in due:
            if doc in self.states:
                self.recompute(doc)
        if due:
            self.store.put(DUE_KEY, [])
        return due

    def _vouched_for(self, unsigned: list) -> dict:
        """Those of `unsigned` (entries whose own signature does not hold) that a waiting entry
        names as the one before it in its log, by hash: its signature, checked when it came,
        vouches for them, as the last signature of a run does for the run (batches.unsigned_among).

        Else an entry held on a later entry's word would be refused by a node that got it in
        another batch than that later entry, and nodes would hold different entries for good.
        """
        if not unsigned or not self._waiting:
            return {}
        by_hash = {e.hash: e for e in unsigned}
        vouchers = [e for doc in {u.doc for u in unsigned} for e in self._waiting.get(doc, {}).values()]
        vouched = {}
        while vouchers:
            found = []
            for voucher in vouchers:
                entry = by_hash.get(voucher.prev)
                if entry is not None and (entry.doc, entry.device, entry.seq + 1) == \
                        (voucher.doc, voucher.device, voucher.seq) and entry.hash not in vouched:
                    vouched[entry.hash] = entry
                    found.append(entry)              # which may vouch for the one before it
            vouchers = found
        return vouched

    def append(self, entry) -> None:
        """Check and store one entry written here; raises Refused with the reason."""
        decided, reasons, recompute = self._settle({entry.hash: entry}, IngestResult(), strict=True)
        if not decided or decided[0][2] is not None:
            why = decided[0][2] if decided else next(iter(reasons.values()), "the entry was not accepted")
            raise Refused(why)
        self._commit(decided, {}, {}, set())
        for doc in recompute:
            self.recompute(doc)
        if entry.doc in self._waiting:                   # some may have waited for this one (an admission)
            self.ingest([], retry_docs=[entry.doc])

    def _settle(self, candidates: dict, result: IngestResult, strict: bool = False, held: set | None = None):
        """Decide what can be decided, repeating while each decision unlocks more.

        Returns ([(entry, author, void reason or None)], {hash: why still waiting}, docs to recompute).
        `held`: which candidates are held already, when the caller knows.
        """
        # In time order, first entries of documents first (stable sorts: C key functions, no lambda).
        remaining = sorted(candidates.values(), key=_TIME_ORDER)
        remaining.sort(key=_IS_GENESIS, reverse=True)
        decided: list[tuple] = []
        reasons: dict[str, str] = {}
        recompute: set[str] = set()
        self._batch, self._batch_runs = {}, {}
        self._held = self._held_among(candidates.values()) if held is None else held
        progress = True
        while remaining and progress:
            progress = False
            still = []
            for entry in remaining:
                if type(entry) is ContentRun:
                    author, apart = self._take_run(entry)
                    if author is not None:
                        decided.append((entry, author, None))
                    if apart:                              # taken apart: its entries, in the next round
                        candidates.update((e.hash, e) for e in apart)
                        still += apart
                    progress = True
                    continue
                try:
                    if entry.cert is None and entry.op["t"] == "meta":
                        author = self._take_content(entry)
                        if author is not None:
                            decided.append((entry, author, None))
                            reasons.pop(entry.hash, None)
                            progress = True
                            continue
                    author, why, again = self._decide(entry)
                    if author is not None:
                        self._hold(entry, author, why)
                except Pending as exc:
                    if strict:
                        raise Refused(str(exc)) from None
                    reasons[entry.hash] = str(exc)
                    still.append(entry)
                    continue
                except (Refused, TypeError, KeyError, AttributeError) as exc:
                    if strict:
                        raise Refused(str(exc)) from None
                    # a rule tripping over a malformed field of a received entry is a refusal too
                    reason = str(exc) if isinstance(exc, Refused) else f"malformed operation ({exc!r})"
                    result.refused.append((entry.hash, reason))
                    reasons.pop(entry.hash, None)
                    continue
                if author is None:                         # already held
                    result.known += 1
                    reasons.pop(entry.hash, None)
                    continue
                decided.append((entry, author, why))
                reasons.pop(entry.hash, None)
                if again:
                    recompute.add(entry.doc)
                progress = True
            remaining = still
        self._batch, self._batch_runs, self._held = {}, {}, set()
        return decided, {e.hash: reasons[e.hash] for e in remaining}, recompute

    def _take_content(self, entry) -> str | None:
        """Hold at once an entry that needs no deciding, and return its author: shared content
        only, the next entry of its device's kept branch, by a member, in a document with no
        exits or void entries in play (as `_decide` would, for most entries of a long history,
        at a fraction of the cost). None: decide it the long way."""
        author = self._next_by_member(entry)
        if author is not None:
            self._hold(entry, author, None)
        return author

    def _take_run(self, run: ContentRun) -> tuple[str | None, list]:
        """Hold at once a run of content-only entries (batches.ContentRun), as `_take_content`
        would each of its entries in turn. Returns its author (None: none of it was held) and
        the entries to take apart: all of them, or those from the first whose body is not a
        pycrdt update on (the run keeps those before it)."""
        author = self._next_by_member(run)
        if author is None:
            return None, run.entries()
        taken = self.states[run.doc].apply_run(run, author)
        apart = run.cut(taken) if taken < len(run) else []
        if not taken:
            return None, apart
        self._held.update(run.hashes)
        self._batch_runs.setdefault((run.doc, run.device), []).append(run)
        self.heads[(run.doc, run.device)] = (run.last_seq, run.hashes[-1])
        self.devices[run.device] = author
        return author, apart

    def _next_by_member(self, entry) -> str | None:
        """The author of an entry (or run) that is next on its device's kept branch, by a member,
        in a document with no exits or void entries in play; else None."""
        state = self.states.get(entry.doc)
        head = self.heads.get((entry.doc, entry.device))
        if state is None or head is None or entry.seq != head[0] + 1 or entry.prev != head[1] \
                or state.effective_exits or state.void_ids or entry.hash in self._held:
            return None
        author = self.devices.get(entry.device)
        return author if author is not None and author in state.members else None

    def _may_be_stored(self, doc: str, device: str, seq: int) -> bool:
        """False where no entry can be stored: past the end of the device's kept branch, in a
        log that never forked (a dropped branch may be longer). Saves the store lookups of a
        sync of new entries, and of entries waiting for a gap to fill."""
        head = self.heads.get((doc, device))
        return head is not None and (seq <= head[0] or getattr(self.states.get(doc), "forks", True))

    def _held_among(self, entries) -> set[str]:
        """Hashes of `entries` held here already (looked up only where they may be)."""
        maybe = [e.hash for e in entries if e.is_genesis or self._may_be_stored(e.doc, e.device, e.seq)]
        return self.store.held_among(maybe) if maybe else set()

    def doc_heads(self, doc: str) -> dict[str, tuple]:
        """device -> (seq, hash) at the end of its kept branch, for one document."""
        return {dev: head for (d, dev), head in self.heads.items() if d == doc}

    def _held_at(self, doc: str, device: str, seq: int) -> list[str]:
        in_batch = self._batch.get((doc, device, seq), [])
        runs = self._batch_runs.get((doc, device))
        if runs:
            in_batch = in_batch + [run.hashes[seq - run.seq] for run in runs if run.seq <= seq <= run.last_seq]
        if not self._may_be_stored(doc, device, seq):
            return in_batch
        return self.store.hashes_at(doc, device, seq) + in_batch

    def _decide(self, entry) -> tuple:
        """(author, void reason or None, recompute?) for an entry to hold; (None, ..) if held
        already; else raises Pending or Refused."""
        if entry.is_genesis:
            check_genesis(entry)
            if entry.hash in self.states:
                return None, None, False
            founder = entry.cert["person"]
            if entry.op["type"] == "crew":
                # A crew belongs to a congregation: only one of its members may start one there.
                congregation = self.states.get(entry.op["congregation"])
                if congregation is None or founder not in congregation.members:
                    raise Pending("the crew's congregation, or its founder's admission to it, has not arrived")
            return founder, None, False
        state = self.states.get(entry.doc)
        if state is None:
            raise Pending("its document has not arrived")
        key = (entry.doc, entry.device)
        head = self.heads.get(key, (0, ""))
        if entry.hash in self._held:                    # held already (here, or earlier in this batch)
            return None, None, False
        if entry.seq > 1 and entry.prev != head[1] and entry.prev not in self._held_at(entry.doc, entry.device, entry.seq - 1):
            if self._held_at(entry.doc, entry.device, entry.seq - 1):
                # Not refused: the entry it names may be on another branch of a forked log that
                # has not arrived yet; refusing would leave nodes holding different entries.
                raise Pending("broken hash chain, or a forked branch: its previous entry has not arrived")
            raise Pending(f"entries before seq {entry.seq} of this device have not arrived")
        author = entry.cert["person"] if entry.cert else self.devices.get(entry.device)
        if author is None:
            raise Pending("the certificate of this device has not arrived")
        if entry.cert is not None and entry.cert["person"] != self.devices.get(entry.device, author):
            raise Refused("this device is certified for another member")
        if entry.seq <= head[0]:
            return author, FORKED, True                 # a second entry at a seq: settle the fork
        if entry.seq != head[0] + 1 or entry.prev != head[1]:
            return author, FORKED, False                # continues a branch that was not kept
        op = entry.op
        # Recompute where an entry may undo a decision made without it: an admission of someone
        # whose entries were void for want of one, an invite whose key a void invite named
        # first (admissions using it were void, waits_on_void), membership events.
        again = op["t"] in MEMBERSHIP_OPS or (op["t"] in ("admit", "add") and (
            "resume" in op or op.get("member") in state.void_admitted or _before_a_removal(state, entry))) \
            or (op["t"] == "invite" and op.get("key") in state.void_invites)
        try:
            check_op(entry, author, state)
        except Void as exc:
            # A membership event void under the exits in effect here may come first in the fixed
            # order and void those exits instead: only a recompute can tell.
            return author, str(exc), again
        except Pending:
            # Waiting for what is held already but does not count would be waiting for ever here,
            # while a recompute elsewhere holds the entry as void: decide it as void now. (What
            # could still make it count, a valid admission of its author, triggers a recompute.)
            if not waits_on_void(state, entry, author):
                raise
            return author, DEPENDS, again
        return author, None, again

    def _hold(self, entry, author: str, why: str | None) -> None:
        """Take a decided entry into the state (or note it as void) and onto its device's branch.

        Raises Refused, holding nothing, for an entry to count whose body is not a pycrdt update.
        """
        state = DocState(entry.hash, entry) if entry.is_genesis else self.states[entry.doc]
        if why is None:
            try:
                state.apply(entry, author)
            except BadContent as exc:
                raise Refused(str(exc)) from None
        else:
            self._note_void(state, entry, why)
        if entry.is_genesis:
            self.states[entry.hash] = state
        self.devices[entry.device] = author
        self._batch.setdefault((entry.doc, entry.device, entry.seq), []).append(entry.hash)
        self._held.add(entry.hash)
        if why != FORKED:
            self.heads[(entry.doc, entry.device)] = (entry.seq, entry.hash)

    @staticmethod
    def _note_void(state: DocState, entry, why: str) -> None:
        state.void[entry.hash] = why
        kind = entry.op.get("t")
        if kind in ("propose", "commit") and why != FORKED:
            # An id is bound to its entry's place in the log, and that place's id is what is
            # void, whatever id the entry names: a void entry (a former member's, say) naming
            # a live agreement would otherwise void everything written on it from then on.
            # (A dropped branch's entry shares its id with the kept one at the same seq, which
            # defines it.)
            state.void_ids.add(record_id(entry.doc, entry.device, entry.seq))
        elif kind in ("admit", "add") and isinstance(entry.op.get("member"), str):
            state.void_admitted.add(entry.op["member"])
        elif kind == "invite" and isinstance(entry.op.get("key"), str):
            state.void_invites.add(entry.op["key"])

    def _commit(self, decided, reasons, candidates, was_pending: set, durable: bool = True,
                sender: str | None = None, recompute_due: set | None = None) -> None:
        """Store a settled batch: held entries, what waits now, and the snapshots due; with
        `recompute_due`, the documents whose recompute waits (in the same transaction: a crash loses
        both or neither).

        Not `durable` (received entries): finished on the store's writer thread while this
        thread goes on (Store.write_behind); everything it writes is made here first.
        """
        rows = [SharedRows(e.doc, e.device, author, "meta", "accepted", None, e.hashes, e.seq, e.ats, e.raws)
                if type(e) is ContentRun else
                (e.hash, e.doc, e.device, e.seq, author, e.at, e.op["t"], e.raw, "accepted" if why is None else "void", why)
                for e, author, why in decided]
        done = [h for h in was_pending if h not in reasons]
        for h in done:
            self._stop_waiting(candidates[h])
        newly_waiting = []
        for h, reason in reasons.items():
            if h not in was_pending and self._room_to_wait(candidates[h], sender):
                self._wait(candidates[h], sender)
                newly_waiting.append((h, candidates[h].doc, candidates[h].raw, reason, now_ms(), sender))
        for e, _, _ in decided:
            self._since_snapshot[e.doc] = self._since_snapshot.get(e.doc, 0) + _entries_in(e)
        due = [doc for doc, count in self._since_snapshot.items() if count >= SNAPSHOT_EVERY]
        # The snapshots are as of this batch's last row. Received batches learn its rowid on the
        # writer thread, once the rows are in (`upto` None: facts are not saved with them).
        upto = self.store.max_rowid() + sum(map(_entries_in, rows)) if due and durable else None
        snaps = [self._snapshot_row(doc, upto, facts="due" if durable else "later") for doc in due]

        def write_rest(store) -> None:
            if recompute_due is not None:
                store.put(DUE_KEY, sorted(recompute_due))
            store.add_pending(newly_waiting)
            store.drop_pending(done)
            last = store.max_rowid()
            # (Every row up to the last one is in these states: rows are written only from here,
            # and each batch's after the one before.)
            if snaps and (upto is None or last == upto):  # else a row was held already: none now
                for doc, _, content, facts in snaps:
                    store.save_snapshot(doc, last, content, facts)

        if durable:
            with self.store.atomic():
                self.store.insert_entries(rows)
                write_rest(self.store)
        else:
            self.store.write_behind(rows, write_rest)

    # -- recomputing -------------------------------------------------------------------------

    def recompute(self, doc: str) -> DocState:
        """Compute a document's state again from every entry held, and store what counts.

        1. Each device's log keeps one branch: at every fork, the entry with the lowest hash.
        2. Leaving, removal and readmission take effect one at a time in the fixed order
           (time, then hash); after each, entries are decided again from scratch, so an exit
           whose own evidence stopped counting is dropped and nothing depends on arrival order.
        3. Should taking events into effect and dropping them go round in a circle (a cut that
           voids the readmission its own evidence needs: no state holds them all), the latest
           event of the circle is void, and the rest is decided again.
        """
        started = time.monotonic()
        held, stored = [], {}
        for _, author, entry, status, reason in self.store.held_entries(doc):
            held.append((entry, author))
            stored[entry.hash] = reason if status == "void" else None
        authors = {e.hash: a for e, a in held}
        genesis = next(e for e, _ in held if e.is_genesis)
        kept, forks = kept_branches([e for e, _ in held], authors)
        kept = [e for e in kept if not e.is_genesis]
        applied: list[str] = []
        banned: set[str] = set()
        seen: set[tuple] = set()
        order = {e.hash: (e.at, e.hash) for e in kept}
        rounds = 4 * sum(1 for e in kept if e.op.get("t") in MEMBERSHIP_OPS | {"admit", "add"}) + 4
        for _ in range(rounds * (rounds + 1)):
            state, verdicts = replay(doc, genesis, authors, kept, set(applied), banned)
            seen.add(tuple(applied))
            events = sorted(membership_events(state), key=lambda ev: ev[0])
            live = {ev[1] for ev in events}
            still = [h for h in applied if h in live]
            if still != applied:
                if tuple(still) in seen:
                    circle = {h for step in seen for h in step} - {h for h in still if h in applied}
                    banned.add(max(circle or set(applied), key=order.__getitem__))
                    applied, seen = [], set()
                    continue
                applied = still
                continue
            fresh = [ev[1] for ev in events if ev[1] not in applied]
            if not fresh:
                break
            applied.append(fresh[0])
        state.forks = forks
        for entry in (e for e, _ in held if not e.is_genesis and e.hash not in verdicts):
            verdicts[entry.hash] = FORKED
            Ledger._note_void(state, entry, FORKED)
        for entry_hash, why in verdicts.items():
            if why is not None:
                state.void[entry_hash] = why
        with self.store.atomic():
            # Only what changed: most of a long history counts as it did.
            self.store.set_statuses({h: why for h, why in verdicts.items() if h not in stored or stored[h] != why})
            self.store.drop_snapshot(doc)
            due = self.due()
            if doc in due:
                self.store.put(DUE_KEY, sorted(due - {doc}))
        self._facts_at.pop(doc, None)
        self.states[doc] = state
        for key in [k for k in self.heads if k[0] == doc]:
            del self.heads[key]
        self.heads.update(branch_heads([genesis, *kept]))
        ended = time.monotonic()
        self._recomputed[doc] = (ended, ended - started)
        return state

    def snapshot(self, docs=None) -> None:
        """Save a snapshot of every document (or of `docs`), content and facts, so the next
        start skips replay."""
        upto = self.store.max_rowid()
        snaps = [self._snapshot_row(doc, upto, facts="now") for doc in (self.states if docs is None else docs)]
        with self.store.atomic():
            for snap in snaps:
                self.store.save_snapshot(*snap)

    def save_facts_due(self) -> None:
        """Save the facts of documents whose facts came due while entries were arriving."""
        due, self._facts_due = [d for d in self._facts_due if d in self.states], set()
        if due:
            self.snapshot(due)

    def _snapshot_row(self, doc: str, upto: int, facts: str) -> tuple:
        """(doc, upto, content, facts or None): a document's snapshot as of rowid `upto`.

        Every SNAPSHOT_EVERY entries a document saves its pycrdt content, and its facts only
        when it has doubled since they were last saved, so that saving them costs little in
        all (they are much bigger). `facts`: "now" (a clean stop), "due" (when doubled), or
        "later": when doubled, noted for `save_facts_due`, so a sync under way does not wait
        for them.
        """
        state = self.states[doc]
        blob = None
        last = self._facts_at.get(doc, 0)
        if facts == "now" or state.count - last >= max(SNAPSHOT_EVERY, last):
            if facts == "later":
                self._facts_due.add(doc)
            else:
                blob = snapshots.dump_facts(state, upto)
                self._facts_at[doc] = state.count
                self._facts_due.discard(doc)
        self._since_snapshot[doc] = 0
        return doc, upto, state.ydoc.get_update(), blob


def waits_on_void(state: DocState, entry, author: str) -> bool:
    """True when what a waiting entry needs is held here but void: its author (or the member a
    commitment is by) was admitted only by void entries, its admission uses a void invite, or
    its response answers a void revision."""
    op = entry.op
    if author not in state.members:
        return author in state.void_admitted
    kind = op.get("t")
    if kind == "admit":
        return op.get("invite") not in state.invites and op.get("invite") in state.void_invites
    if kind == "commit":
        return op.get("by") not in state.members and op.get("by") in state.void_admitted
    if kind == "respond":
        agreement = state.agreements.get(op.get("agreement"))
        return agreement is not None and op.get("version") not in agreement.versions and op.get("version") in state.void
    return False


def _before_a_removal(state: DocState, entry) -> bool:
    """True when an admission comes before the proposal of a removal carried out here: the
    member it admits was entitled to answer that round, so whether the cut counts may change."""
    key = order_key(entry)
    for exits in state.exits.values():
        for exit_ in exits:
            agreement = state.agreements.get(exit_.agreement) if exit_.kind == "removed" else None
            if agreement is not None and key < agreement.first[0]:
                return True
    return False


def kept_branches(entries: list, authors: dict) -> tuple[list, list]:
    """The entries on each device's kept branch, and evidence of every fork found.

    At each seq where a device's log splits, the entry with the lowest hash is kept: a fixed
    rule, so every node keeps the same branch.
    """
    by_device: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    for entry in entries:
        by_device[entry.device][entry.prev].append(entry)
    kept, forks = [], []
    for device, children in sorted(by_device.items()):
        prev, seq = "", 1
        while True:
            options = sorted((e for e in children.get(prev, []) if e.seq == seq), key=lambda e: e.hash)
            if not options:
                break
            if len(options) > 1:
                forks.append({"device": device, "member": authors.get(options[0].hash), "seq": seq,
                              "kept": options[0].hash, "dropped": [e.hash for e in options[1:]],
                              "entries": [_evidence(e) for e in options]})
            kept.append(options[0])
            prev, seq = options[0].hash, seq + 1
    return kept, forks


def _evidence(entry) -> dict:
    from .ids import b64
    return {"hash": entry.hash, "seq": entry.seq, "at": entry.at, "op": entry.op.get("t"), "raw": b64(entry.raw)}


def branch_heads(kept: list) -> dict:
    """(doc, device) -> (seq, hash) of each kept branch's last entry."""
    heads: dict[tuple, tuple] = {}
    for entry in kept:
        key = (entry.doc, entry.device)
        if entry.seq > heads.get(key, (0, ""))[0]:
            heads[key] = (entry.seq, entry.hash)
    return heads


def membership_events(state: DocState) -> list[tuple]:
    """(order key, hash) of every accepted exit and readmission of a document."""
    events = [(x.key, x.hash) for exits in state.exits.values() for x in exits]
    events += [(key, key[1]) for readmits in state.readmissions.values() for key, _ in readmits]
    return events


def accepted_events(state: DocState) -> list[tuple]:
    """Every accepted exit and readmission, in the form `DocState.take_effect` takes."""
    events = [("exit", member, x) for member, exits in state.exits.items() for x in exits]
    events += [("readmit", member, r) for member, readmits in state.readmissions.items() for r in readmits]
    return events


def replay(doc: str, genesis, authors: dict, kept: list, applied: set,
           banned: frozenset | set = frozenset()) -> tuple[DocState, dict]:
    """Decide every kept entry from scratch with the given membership events in effect.

    Returns the state and {hash: void reason or None}. An entry that can no longer be decided
    (what it needs does not count any more) is void, and its device's later entries go on.
    Entries in `banned` (events that would go round in a circle) are void.
    """
    state = DocState(doc, genesis)
    # One pycrdt transaction for the whole replay, as Ledger.ingest does for a batch: the same
    # content, without a transaction opened and closed for each update (docstate.apply_content).
    with state.ydoc.transaction():
        return _replay_into(state, genesis, authors, kept, applied, banned)


def _replay_into(state: DocState, genesis, authors: dict, kept: list, applied: set, banned) -> tuple[DocState, dict]:
    state.take_effect([ev for ev in (membership_event(e, authors[e.hash]) for e in kept if e.hash in applied) if ev])
    state.apply(genesis, authors[genesis.hash])
    verdicts: dict[str, str | None] = {genesis.hash: None}
    done: dict[str, int] = defaultdict(int)
    done[genesis.device] = 1
    remaining = sorted(kept, key=lambda e: (e.at, e.seq, e.hash))
    while remaining:
        progress, still = False, []
        for entry in remaining:
            if entry.seq != done[entry.device] + 1:
                still.append(entry)
                continue
            author = authors[entry.hash]
            try:
                if entry.hash in banned:
                    raise Void(PARADOX)
                check_op(entry, author, state)
                state.apply(entry, author)
            except Pending:
                still.append(entry)
                continue
            except (Void, Refused, BadContent, TypeError, KeyError, AttributeError) as exc:
                # (BadContent: held as void, a body that is not a pycrdt update may come to count
                # here, as the kept side of a fork; it cannot, and changed nothing.)
                verdicts[entry.hash] = str(exc)
                Ledger._note_void(state, entry, str(exc))
            else:
                verdicts[entry.hash] = None
            done[entry.device] = entry.seq
            progress = True
        if not progress:
            stuck = [e for e in still if e.seq == done[e.device] + 1]
            for entry in stuck:
                why = DEPENDS
                verdicts[entry.hash] = why
                Ledger._note_void(state, entry, why)
                done[entry.device] = entry.seq
            if not stuck:
                break
        remaining = [e for e in still if e.hash not in verdicts]
    return state, verdicts
