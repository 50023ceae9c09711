"""A document's state: the facts folded from its accepted entries, and its pycrdt content.

Facts are kept as sets of operations with a fixed "latest wins" order (entry time, then hash),
so folding the same entries in any order gives the same state (DESIGN principle 3).
Attributed facts (membership, names, proposals, responses, commitments) come from the signed
operations, so no member can put words in another's mouth; the free-form shared content that
members may all edit (name, purpose) lives in the pycrdt document, where concurrent edits merge.
"""
import weakref
from dataclasses import dataclass, field
from functools import partial

from pycrdt import Doc, Map

from .rules import MAX_TEXT, MAX_TITLE

# Shared content from a peer is any pycrdt update, not only what this node's forms allow: where
# it is read, a text is cut to the length a member may write through them.
_META_LIMITS = {"name": MAX_TITLE, "purpose": MAX_TEXT}


def order_key(entry) -> tuple:
    """The fixed order in which concurrent facts are settled: time, then hash."""
    return (entry.at, entry.hash)


class BadContent(ValueError):
    """An entry's body that is not a pycrdt update (applying it changed nothing)."""


def apply_content(ydoc: Doc, updates) -> int:
    """Apply pycrdt updates (an iterable of them; empty ones are none) to a document's content,
    up to the first that is not a pycrdt update, which changes nothing; returns how many were
    applied.

    Inside a transaction already open on `ydoc` (the ledger opens one per document for a whole
    batch), the updates go straight to that transaction: pycrdt's own `apply_update` opens and
    closes a nested Python-level transaction for each update, which costs as much as applying it.
    """
    txn = getattr(ydoc, "_txn", None)                 # pycrdt 0.14: the open Transaction, if any
    low = getattr(txn, "_txn", None)
    apply = ydoc.apply_update if low is None else partial(ydoc._doc.apply_update, low)
    done = 0
    for update in updates:
        if update:
            try:
                apply(update)
            except ValueError:                          # pycrdt: "Cannot decode update"
                return done
        done += 1
    return done


@dataclass
class Version:
    """One text of an agreement; a new version starts a new consent round."""

    hash: str
    title: str
    text: str
    review_by: str | None
    author: str
    at: int
    retiring: bool = False                              # a version that proposes to retire the agreement


@dataclass
class Agreement:
    """A proposal and its consent round(s)."""

    id: str
    members: dict = field(default_factory=dict, repr=False)   # the document's members (shared)
    proposals: list = field(default_factory=list)      # (order key, entry, author)
    revisions: dict = field(default_factory=dict)      # hash -> Version
    responses: dict = field(default_factory=dict)      # member -> {(version, key): (response, reason)}
    retired: bool = False

    @property
    def first(self):
        """The proposal that defines the agreement (a reused id is settled by the fixed order)."""
        return min(self.proposals, key=lambda p: p[0])

    @property
    def kind(self) -> str:
        return self.first[1].op.get("kind", "agreement")

    @property
    def subject(self) -> str | None:
        return self.first[1].op.get("subject")

    @property
    def proposed_by(self) -> str:
        return self.first[2]

    @property
    def entitled(self) -> list:
        """Who may respond: the scope's members admitted before the proposal, not the member a
        removal is about. Worked out here, not taken from the proposer, so no one can propose
        with only themselves entitled and agree alone."""
        key, subject = self.first[0], self.subject
        members = sorted(self.members.values(), key=lambda m: m.joined)
        return [m.id for m in members if m.joined < key and m.id != subject]

    def is_entitled(self, member: str) -> bool:
        """`member in self.entitled`, without sorting every member to build the list."""
        found = self.members.get(member)
        return found is not None and found.joined < self.first[0] and member != self.subject

    def round_key(self, version: str) -> tuple:
        """Where the round of `version` began in the fixed order: its proposal or its revision."""
        revision = self.revisions.get(version)
        return (revision.at, revision.hash) if revision is not None else self.first[0]

    def may_answer(self, member: str, version: str) -> bool:
        """Whether the rules take `member`'s answer to `version`: a removal's rounds are for those
        entitled by its proposal (they settle who must consent to the cut); an agreement's each
        round is for the members admitted before it began, so a new text asks those who came since."""
        if self.kind == "removal":
            return self.is_entitled(member)
        found = self.members.get(member)
        return found is not None and found.joined < self.round_key(version)

    def asked_in(self, version: str) -> list:
        """Who the round of `version` waits for, as far as the document's members go (the caller
        keeps those still active): for an agreement, the members who were in when the round
        began and have not been out since, so one who was away and came back does not reopen
        what was decided without them."""
        if self.kind == "removal":
            return self.entitled
        key = self.round_key(version)
        members = sorted(self.members.values(), key=lambda m: m.joined)
        return [m.id for m in members if m.joined < key and m.in_since(key)]

    @property
    def versions(self) -> dict:
        """Version hash -> Version, the proposal's own text first."""
        entry, author = self.first[1], self.first[2]
        op = entry.op
        base = Version(entry.hash, op["title"], op.get("text", ""), op.get("review_by"), author, entry.at)
        return {entry.hash: base, **self.revisions}

    def has_version(self, version: str) -> bool:
        """`version in self.versions`, without building every version."""
        return version in self.revisions or version == self.first[1].hash

    @property
    def current(self) -> Version:
        return max(self.versions.values(), key=lambda v: (v.at, v.hash))

    def response_of(self, member: str):
        """The member's latest response to the current version, or None."""
        current = self.current.hash
        mine = [(key, value) for (version, key), value in self.responses.get(member, {}).items() if version == current]
        return max(mine)[1] if mine else None


@dataclass
class Commitment:
    """Who promised what, by when; its status is the latest status entry."""

    id: str
    creations: list = field(default_factory=list)      # (order key, entry, author)
    statuses: list = field(default_factory=list)       # (order key, status)

    @property
    def first(self):
        return min(self.creations, key=lambda c: c[0])

    @property
    def status(self) -> str:
        return max(self.statuses)[1] if self.statuses else "open"


@dataclass
class Member:
    """A member of a document; `joined` orders the member list.

    Status is the latest of the member's admissions and exits (leave, removal), by the fixed
    order, so it does not depend on which arrived first.
    """

    id: str
    joined: tuple
    status: str = "active"
    events: list = field(default_factory=list)         # (order key, "active" | "left" | "removed")

    def settle_status(self) -> None:
        self.status = max(self.events)[1] if self.events else "active"

    def in_since(self, key: tuple) -> bool:
        """Whether the member was in just before `key` in the fixed order, and has not been out
        since (one who left and came back in between was away for part of it)."""
        before = [event for event in self.events if event[0] < key]
        return (max(before)[1] if before else "active") == "active" and \
            all(status == "active" for at, status in self.events if at > key)


@dataclass
class Exit:
    """A member's leaving or removal: their devices' entries after `devices` (device -> last
    seq kept; a device not named keeps nothing) are refused, until they are admitted again."""

    key: tuple
    hash: str
    member: str
    kind: str                                           # "left", "removed" or "retired" (one device)
    devices: dict
    agreement: str | None = None                        # the removal agreement a cut carries out

    def keeps(self, device: str) -> int | None:
        """The last seq of `device` this exit keeps; None when it does not concern the device."""
        if self.kind == "retired":
            return self.devices.get(device)
        return self.devices.get(device, 0)


def membership_event(entry, author: str):
    """("exit" | "readmit", member, Exit or (order key, resume)) for a leave, cut, device
    retirement or readmission entry; None for any other."""
    op, key = entry.op, order_key(entry)
    kind = op.get("t")
    if kind == "leave":
        return "exit", author, Exit(key, entry.hash, author, "left", op["devices"])
    if kind == "cut":
        return "exit", op["member"], Exit(key, entry.hash, op["member"], "removed", op["devices"], op.get("agreement"))
    if kind == "retire_device":
        return "exit", author, Exit(key, entry.hash, author, "retired", {op["device"]: op["upto"]})
    if kind in ("admit", "add") and "resume" in op:
        return "readmit", op["member"], (key, op["resume"])
    return None


class _MovedCrewNames:
    """The names a crew that a split moved shows: its congregation's, and for those not in it
    (added by a member who had not heard of the split) the congregation's it was made in. In all
    else it is its congregation."""

    def __init__(self, congregation: "DocState", origin: "DocState"):
        self.congregation, self.origin = congregation, origin

    @property
    def names(self) -> dict:
        return {**self.origin.names, **self.congregation.names}

    def name_of(self, member: str) -> str:
        return (self.congregation if member in self.congregation.names else self.origin).name_of(member)

    def __getattr__(self, attr):
        return getattr(self.congregation, attr)


# One for each moved crew while its two congregations stay the same objects, so that what is
# remembered per names document (views.memo) stays remembered.
_MOVED_CREW_NAMES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def names_for(states: dict, state: "DocState"):
    """The document whose member names `state` shows: a crew's congregation as held here (else
    the one it was made in: a split may have moved it to one not held here), or itself."""
    if state.type != "crew":
        return state
    congregation, origin = states.get(state.congregation), states.get(state.genesis.op.get("congregation"))
    if congregation is None or origin is None or congregation is origin:
        return congregation or origin or state
    known = _MOVED_CREW_NAMES.get(state)
    if known is None or known.congregation is not congregation or known.origin is not origin:
        known = _MOVED_CREW_NAMES[state] = _MovedCrewNames(congregation, origin)
    return known


def moved_away(states: dict, crew: "DocState", member: str) -> str | None:
    """The name of the congregation a split moved `crew` to, when `member` did not go there
    (the crew's own record of the move may not have reached their node, but its old
    congregation's record of the split has); None otherwise."""
    names = names_for(states, crew)
    return next((split["name"] for split in names.splits
                 if crew.id in split["crews"] and member not in split["members"]
                 and split["id"] not in states), None)


def gone_from_congregation(states: dict, crew: "DocState", member: str) -> bool:
    """Whether `member` is not an active member of the congregation of `crew`, as held here:
    left, removed, or never in it (added to the crew before a split moved it to a congregation
    they did not go to). A crew's members are congregation members: one who is gone no longer
    receives the crew's records, though the crew counts them as a member until it removes them
    (whether an entry counts never depends on another document, so every node decides alike)."""
    congregation = states.get(crew.congregation) if crew.type == "crew" else None
    if congregation is None:
        return False
    found = congregation.members.get(member)
    return found is None or found.status != "active"


def records_reach(states: dict, state: "DocState", member: str) -> bool:
    """Whether a document's records go to `member`: an active member of it, and for a crew
    not gone from its congregation."""
    found = state.members.get(member)
    return found is not None and found.status == "active" and not gone_from_congregation(states, state, member)


class DocState:
    """Everything known about one document, built from its accepted entries."""

    def __init__(self, doc_id: str, genesis):
        self.id = doc_id
        self.genesis = genesis
        op = genesis.op
        self.type: str = op["type"]
        self.congregation: str | None = op.get("congregation")
        self.lineage = op.get("forked_from")           # {"id", "name", "vector"} of the parent, if forked
        self.forked_from = self.lineage["id"] if self.lineage else None
        self.inherited = op.get("inherited", [])
        self.members: dict[str, Member] = {}
        self.names: dict[str, tuple] = {}              # member -> (order key, name)
        self.invites: dict[str, dict] = {}
        self.withdrawn: dict[str, tuple] = {}          # invite key -> (order key, member) of its first withdrawal
        self.agreements: dict[str, Agreement] = {}
        self.commitments: dict[str, Commitment] = {}
        self.retired_devices: dict[str, int] = {}      # device -> last seq of it that counts
        self.admitted_by: dict[str, list] = {}          # member -> [(order key, author, device, seq)] of admissions
        self.devices: dict[str, str] = {}               # device -> member, for devices that wrote here
        self.exits: dict[str, list] = {}                # member -> [Exit]
        self.readmissions: dict[str, list] = {}         # member -> [(order key, {device: seq})]
        # Exits and readmissions in effect, set by the ledger: during a recompute they are chosen
        # up front, so that they apply to every entry whatever order entries are decided in.
        self.effective_exits: dict[str, list] = {}
        self.effective_readmissions: dict[str, list] = {}
        self.forks: list[dict] = []                     # evidence of forked device logs (set by the ledger)
        self.void: dict[str, str] = {}                  # hash -> why a held entry does not count
        self.void_ids: set[str] = set()                 # agreement/commitment ids defined by void entries
        self.void_admitted: set[str] = set()            # members named by void admissions
        self.void_invites: set[str] = set()             # invite keys of void invites
        self.splits: list[dict] = []                    # congregations split off from this one
        self.moves: list[tuple] = []                    # (order key, congregation) a crew moved to
        self.vector: dict[str, int] = {}
        self.count = 0
        self.latest_at = 0                              # the latest time of an entry that counts
        self.ydoc = Doc()
        self.meta = self.ydoc.get("meta", type=Map)

    # -- folding ---------------------------------------------------------------------------

    def apply_run(self, run, author: str) -> int:
        """Fold a run of content-only entries (batches.ContentRun) by `author`, as `apply` would
        each of them, up to the first whose body is not a pycrdt update; returns how many."""
        done = apply_content(self.ydoc, run.bodies)
        if done:
            self.count += done
            self.latest_at = max(self.latest_at, max(run.ats[:done]))
            last = run.seq + done - 1
            if last > self.vector.get(run.device, 0):
                self.vector[run.device] = last
            self.devices[run.device] = author
        return done

    def apply(self, entry, author: str) -> None:
        """Fold one accepted entry into the state; raises BadContent, changing nothing, when its
        body is not a pycrdt update."""
        if entry.body and not apply_content(self.ydoc, (entry.body,)):
            raise BadContent("its content is not a pycrdt update")
        op = entry.op
        kind = op["t"]
        self.count += 1
        if entry.at > self.latest_at:
            self.latest_at = entry.at
        device = entry.device
        if entry.seq > self.vector.get(device, 0):
            self.vector[device] = entry.seq
        self.devices[device] = author
        if kind == "meta":                              # most entries: content only
            return
        key = order_key(entry)
        admitter = (key, author, entry.device, entry.seq)
        if kind == "genesis":
            self._admit(author, key, admitter)
            self._name(author, key, op.get("name"))
            for member, name in (op.get("names") or {}).items():
                self._name(member, key, name)
            for member in op.get("members", []):
                self._admit(member, key, admitter)
        elif kind == "name":
            self._name(author, key, op["name"])
        elif kind == "invite":
            self.invites[op["key"]] = {"expires": op["expires"], "note": op.get("note", ""), "by": author,
                                       "at": entry.at, "used_by": None}
        elif kind == "withdraw":
            if op["invite"] not in self.withdrawn or key < self.withdrawn[op["invite"]][0]:
                self.withdrawn[op["invite"]] = (key, author)
        elif kind == "admit":
            if "resume" in op:
                self.readmissions.setdefault(op["member"], []).append((key, op["resume"]))
            self._admit(op["member"], key, admitter)
            self._name(op["member"], key, op.get("name"))
            invite = self.invites.get(op["invite"])
            if invite is not None:
                invite["used_by"] = op["member"]
        elif kind == "add":
            if "resume" in op:
                self.readmissions.setdefault(op["member"], []).append((key, op["resume"]))
            self._admit(op["member"], key, admitter)
        elif kind == "propose":
            agreement = self.agreements.setdefault(op["agreement"], Agreement(op["agreement"], self.members))
            agreement.proposals.append((key, entry, author))
        elif kind == "revise":
            self.agreements[op["agreement"]].revisions[entry.hash] = Version(
                entry.hash, op["title"], op.get("text", ""), op.get("review_by"), author, entry.at,
                op.get("retire") is True)
        elif kind == "respond":
            slot = self.agreements[op["agreement"]].responses.setdefault(author, {})
            slot[(op["version"], key)] = (op["response"], op.get("reason", ""))
        elif kind == "retire":
            self.agreements[op["agreement"]].retired = True
        elif kind == "commit":
            commitment = self.commitments.setdefault(op["commitment"], Commitment(op["commitment"]))
            commitment.creations.append((key, entry, author))
        elif kind == "status":
            self.commitments[op["commitment"]].statuses.append((key, op["status"]))
        elif kind in ("leave", "cut"):
            member = author if kind == "leave" else op["member"]
            self.exits.setdefault(member, []).append(
                Exit(key, entry.hash, member, "left" if kind == "leave" else "removed", op["devices"],
                     op.get("agreement")))
            self.members[member].events.append((key, "left" if kind == "leave" else "removed"))
            self.members[member].settle_status()
        elif kind == "split":
            self.splits.append({"id": op["child"], "name": op.get("name", ""), "members": op.get("members", []),
                                "crews": op.get("crews", []), "by": author, "at": entry.at})
            self.splits.sort(key=lambda split: (split["at"], split["id"]))    # not in arrival order
        elif kind == "move":
            self.moves.append((key, op["congregation"]))
            self.congregation = max(self.moves)[1]
        elif kind == "retire_device":
            cut = self.retired_devices.get(op["device"])
            self.retired_devices[op["device"]] = op["upto"] if cut is None else min(cut, op["upto"])
            self.exits.setdefault(author, []).append(
                Exit(key, entry.hash, author, "retired", {op["device"]: op["upto"]}))

    def take_effect(self, events: list) -> None:
        """Put these membership events (from `membership_event`) into effect."""
        self.effective_exits, self.effective_readmissions = {}, {}
        for kind, member, value in events:
            target = self.effective_exits if kind == "exit" else self.effective_readmissions
            target.setdefault(member, []).append(value)

    def _admit(self, member: str, key: tuple, admitter: tuple) -> None:
        self.admitted_by.setdefault(member, []).append(admitter)
        known = self.members.get(member)
        if known is None:
            known = self.members[member] = Member(member, key)
        known.joined = min(known.joined, key)
        known.events.append((key, "active"))
        known.settle_status()

    def is_cut(self, member: str, device: str, seq: int) -> str | None:
        """Why an entry of `member`'s `device` at `seq` falls after their leaving or removal, or None.

        An exit keeps each device's entries up to its recorded seq; an admission after the exit
        lets the device write again after the seq it had reached when readmitted.
        """
        for exit_ in self.effective_exits.get(member, ()):
            kept = exit_.keeps(device)
            if kept is None or seq <= kept:
                continue
            resumed = any(key > exit_.key and seq > resume.get(device, 0) >= kept
                          for key, resume in self.effective_readmissions.get(member, ()))
            if not resumed:
                return {"left": "written after its author left", "removed": "written after its author was removed",
                        "retired": "written by a retired device, beyond what its member's node had of it when retiring it"}[exit_.kind]
        return None

    def admitted_through(self, member: str, devices: dict, before: tuple) -> set[str]:
        """Members whose every admission before `before` is an entry of `member`'s devices after
        the seqs `devices` keeps (a device not named keeps nothing), or one by such a member:
        those a cut of `member` at `devices` takes out with the entries it does not keep."""
        out: set[str] = set()
        grown = True
        while grown:
            grown = False
            for other, admissions in self.admitted_by.items():
                if other in out or other == member:
                    continue
                early = [a for a in admissions if a[0] < before]
                if early and all((author == member and seq > devices.get(device, 0)) or author in out
                                 for _, author, device, seq in early):
                    out.add(other)
                    grown = True
        return out

    def _name(self, member: str, key: tuple, name: str | None) -> None:
        if name and (member not in self.names or key > self.names[member][0]):
            self.names[member] = (key, name)

    # -- reading ---------------------------------------------------------------------------

    def name_of(self, member: str) -> str:
        """A member's display name, or a short form of their id when none is known."""
        found = self.names.get(member)
        return found[1] if found else f"member {member[:8]}"

    def active_members(self) -> list[str]:
        """Ids of active members, in the order they joined."""
        members = sorted(self.members.values(), key=lambda m: m.joined)
        return [m.id for m in members if m.status == "active"]

    def meta_value(self, key: str, default: str = "") -> str:
        """A text field of the shared pycrdt `meta` map, at most as long as a member may write it."""
        value = self.meta.get(key)
        return value[:_META_LIMITS.get(key, MAX_TEXT)] if isinstance(value, str) else default
