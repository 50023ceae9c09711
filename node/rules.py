"""The documents' rules: which operations exist, who may write them, what they must hold.

`check_op` decides an entry against the state built from the entries accepted so far. It
answers by returning (accept), raising `Pending` (something it depends on has not arrived yet:
keep it and try again later) or raising `Refused` (it can never be accepted). Every rule is
monotone: once an entry's dependencies are present, every node gives the same answer,
whatever order entries arrived in. So no rule may depend on which of two entries came first
(say, two proposals reusing one id): those are settled when state is read, by a fixed order.
"""
import datetime as dt
import hashlib
import functools
import re

from .identity import IdentityError, check_device_cert, verify
from .ids import b32, canonical_json, is_key_id, unb32

RESPONSES = ("consent", "object", "stand_aside")
COMMITMENT_STATUSES = ("open", "done", "released")
AGREEMENT_KINDS = ("agreement", "removal")
MAX_TITLE = 200
MAX_TEXT = 20_000
MAX_NAME = 80
MAX_REASON = 2_000
INVITE_MAX_DAYS = 30                # a code read aloud should not stay good for long
JOIN_CONTEXT = b"crewnode-join-v1:"
RETIRE_CONTEXT = b"crewnode-retire-device-v1:"


class Refused(ValueError):
    """An entry that breaks a rule; it changes nothing."""


class Pending(Exception):
    """An entry whose dependencies (an author's admission, an agreement) have not arrived."""


class Void(Exception):
    """A signed, well-chained entry that cannot count: it was written after its author left or
    was removed, lies on the losing branch of a forked log, or builds on such an entry.

    Unlike a refused entry it is kept and relayed, so that every node holds the same entries
    and so decides the same; it just never enters the state.
    """


def require(condition, message: str) -> None:
    """Refuse with `message` unless `condition` holds."""
    if not condition:
        raise Refused(message)


def check_text(value, what: str, limit: int, required: bool = True) -> str:
    """A string field, trimmed, within `limit` characters; returns it."""
    # (Plain ifs, not `require`: its message would be formatted for every entry that passes.)
    if not isinstance(value, str):
        raise Refused(f"{what} must be text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:                  # a lone surrogate (JSON "\ud800"): not storable text
        raise Refused(f"{what} must be valid Unicode text") from None
    value = value.strip()
    if required and not value:
        raise Refused(f"{what} must not be empty")
    if len(value) > limit:
        raise Refused(f"{what} is longer than {limit} characters")
    return value


_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_date(value, what: str) -> str | None:
    """An optional ISO date (YYYY-MM-DD); returns it or None."""
    if value in (None, ""):
        return None
    # fromisoformat alone also takes week and ordinal dates (2026-W01-1), which sort wrongly as text
    try:
        if not (isinstance(value, str) and _DATE.fullmatch(value)):
            raise ValueError(value)
        dt.date.fromisoformat(value)
    except ValueError:
        raise Refused(f"{what} must be an ISO date like 2026-12-31") from None
    return value


def check_member_id(value, what: str = "member id") -> str:
    """A member id: a base32 Ed25519 public key."""
    require(is_key_id(value), f"{what} is not a member id")
    return value


def check_member_ids(values: list, what: str = "member id") -> None:
    """Every item of a list is a member id (as check_member_id). A proposal lists every member,
    and the same list comes again and again, so the answer for a whole list is cached."""
    try:
        ok = _all_member_ids(tuple(values))
    except TypeError:                                  # something unhashable: not ids
        ok = False
    require(ok, f"{what} is not a member id")


@functools.lru_cache(maxsize=256)
def _all_member_ids(values: tuple) -> bool:
    return all(is_key_id(v) for v in values)


def invite_message(invite_key: str, member_id: str) -> bytes:
    """What a newcomer signs with the invite's key to prove they hold the code.

    It names the newcomer, so a proof overheard on the way cannot admit anyone else.
    """
    return JOIN_CONTEXT + invite_key.encode() + b":" + member_id.encode()


def record_id(doc: str, device: str, seq: int) -> str:
    """The id of the agreement or commitment that the entry at `seq` of `device`'s log in `doc`
    creates.

    Bound to its place in its author's log, so no one else can write a record with that id (a
    reused id with an earlier time would otherwise take the record over).
    """
    return b32(hashlib.sha256(f"{doc}:{device}:{seq}".encode()).digest()[:10])


def bind_record_id(op: dict, doc: str, device: str, seq: int) -> dict:
    """Fill in the id of a propose or commit operation whose id is None, for the entry about to
    be written at `seq` of `device`'s log."""
    field = {"propose": "agreement", "commit": "commitment"}.get(op.get("t"))
    if field and op.get(field, "") is None:
        op[field] = record_id(doc, device, seq)
    return op


def check_genesis(entry) -> None:
    """Rules for a document's first entry."""
    op = entry.op
    require(op["t"] == "genesis", "a document must start with a genesis entry")
    require(op.get("type") in ("congregation", "crew"), "unknown document type")
    if op["type"] == "crew":
        require(isinstance(op.get("congregation"), str), "a crew names its congregation")
        require("members" in op, "a crew lists its members")
    members = op.get("members", [])
    require(isinstance(members, list) and len(members) <= 500, "members must be a list of member ids")
    for member in members:
        check_member_id(member)
    check_text(op.get("name") or "", "name", MAX_NAME, required=False)


def _ref(op, key: str, what: str) -> str:
    """An id field that points at another fact; anything but text is refused (not a dict key)."""
    value = op.get(key)
    require(isinstance(value, str), f"{what} id is malformed")
    return value


def check_op(entry, author: str, state) -> None:
    """Decide a non-genesis entry by `author` against `state` (a DocState)."""
    op = entry.op
    kind = op["t"]
    check = OPS.get((state.type, kind)) or OPS.get(("*", kind))
    if check is None:
        raise Refused(f"operation {kind!r} does not exist in a {state.type}")
    if author not in state.members:
        raise Pending(f"author {author} is not (yet) a member of this {state.type}")
    if state.effective_exits:                          # (is_cut finds nothing without exits)
        why = state.is_cut(author, entry.device, entry.seq)
        if why:
            raise Void(why)
    if state.void_ids and kind not in ("propose", "commit"):
        for ref in ("agreement", "commitment"):
            if op.get(ref) in state.void_ids:
                raise Void(f"it builds on an entry that does not count (its {ref} was written after its author left or was removed)")
    check(entry, author, state)


def _name(entry, author, state):
    check_text(entry.op.get("name"), "name", MAX_NAME)


def _meta(entry, author, state):
    # Nothing to check. The ledger holds most of these by short paths that do not come here
    # (Ledger._take_content, Ledger._take_run): a rule added here must be added there too.
    pass


def _invite(entry, author, state):
    op = entry.op
    try:
        require(len(unb32(op.get("key", ""))) == 32, "invite key is malformed")
    except ValueError:
        raise Refused("invite key is malformed") from None
    require(isinstance(op.get("expires"), int), "invite expiry must be a time")
    require(op["expires"] <= entry.at + INVITE_MAX_DAYS * 86_400_000,
            f"an invite may be valid for at most {INVITE_MAX_DAYS} days")
    check_text(op.get("note", ""), "note", MAX_REASON, required=False)


def _withdraw(entry, author, state):
    # Whether the invite is held does not matter: withdrawing a code that has not arrived yet
    # only keeps it from being shown or used here once it does.
    try:
        require(len(unb32(_ref(entry.op, "invite", "invite"))) == 32, "invite key is malformed")
    except ValueError:
        raise Refused("invite key is malformed") from None


def _admit(entry, author, state):
    op = entry.op
    member = check_member_id(op.get("member"))
    if "resume" in op:
        _check_devices(op["resume"])
    if "cert" in op:
        try:
            person, _ = check_device_cert(op["cert"])
        except IdentityError as exc:
            raise Refused(f"the newcomer's device certificate does not hold: {exc}") from None
        require(person == member, "the newcomer's device certificate is for someone else")
    check_text(op.get("name") or "", "name", MAX_NAME, required=False)
    invite = state.invites.get(_ref(op, "invite", "invite"))
    if invite is None:
        raise Pending("the invite this admission uses has not arrived")
    require(entry.at <= invite["expires"], "the invite code has expired")
    try:
        proof = unb32(op.get("proof", ""))
    except ValueError:
        raise Refused("the invite proof is malformed") from None
    require(verify(unb32(op["invite"]), proof, invite_message(op["invite"], member)),
            "the invite proof does not hold: forged or for someone else")


def _propose(entry, author, state):
    op = entry.op
    require(op.get("agreement") == record_id(entry.doc, entry.device, entry.seq),
            "an agreement's id must be the one its entry's place in the author's log gives")
    if op.get("kind") == "removal":
        subject = op.get("subject")
        require(subject != author, "you cannot propose your own removal: leave instead")
    require(op.get("kind", "agreement") in AGREEMENT_KINDS, "unknown agreement kind")
    check_text(op.get("title"), "title", MAX_TITLE)
    check_text(op.get("text", ""), "text", MAX_TEXT, required=False)
    check_date(op.get("review_by"), "review_by")
    # The list is the proposer's view, kept for people to read; who may respond is worked out
    # from membership (Agreement.entitled), never taken from it.
    entitled = op.get("entitled", [])
    require(isinstance(entitled, list), "entitled must be a list of member ids")
    check_member_ids(entitled)
    if op.get("kind") == "removal":
        subject = check_member_id(op.get("subject"), "member to remove")
        require(subject not in entitled, "the member concerned cannot respond to their own removal")


def _agreement(state, op):
    agreement = state.agreements.get(_ref(op, "agreement", "agreement"))
    if agreement is None:
        raise Pending("the agreement this refers to has not arrived")
    return agreement


def _revise(entry, author, state):
    # no check of `retired` here: a revision made before its author saw the retirement must count
    # on every node, whichever of the two arrived first (the Service refuses to revise a retired one)
    agreement = _agreement(state, entry.op)
    check_text(entry.op.get("title"), "title", MAX_TITLE)
    check_text(entry.op.get("text", ""), "text", MAX_TEXT, required=False)
    check_date(entry.op.get("review_by"), "review_by")
    require(isinstance(entry.op.get("retire", False), bool), "retire must be true or false")
    # Consent to a removal's versions is the evidence its cut carries: a version that means
    # "do not remove" must not be one of them. A removal is dropped by retiring it outright.
    require(not (entry.op.get("retire") and agreement.kind == "removal"),
            "a removal is not retired by a round: retire it outright")


def _respond(entry, author, state):
    op = entry.op
    agreement = _agreement(state, op)
    require(op.get("response") in RESPONSES, "response must be consent, object or stand_aside")
    reason = check_text(op.get("reason", ""), "reason", MAX_REASON, required=False)
    require(op["response"] != "object" or reason, "an objection needs a reason")
    if not agreement.has_version(_ref(op, "version", "version")):
        raise Pending("the version this responds to has not arrived")
    require(agreement.may_answer(author, op["version"]),
            "you are not among the members entitled to respond to this agreement")


def _retire(entry, author, state):
    _agreement(state, entry.op)


def _add(entry, author, state):
    check_member_id(entry.op.get("member"))
    if "resume" in entry.op:
        _check_devices(entry.op["resume"])


def _commit(entry, author, state):
    op = entry.op
    require(op.get("commitment") == record_id(entry.doc, entry.device, entry.seq),
            "a commitment's id must be the one its entry's place in the author's log gives")
    check_text(op.get("what"), "what", MAX_TITLE * 5)
    check_date(op.get("due"), "due")
    check_member_id(op.get("by"), "by")
    if op["by"] not in state.members:
        raise Pending("the member this commitment is by has not joined the crew yet")


def _status(entry, author, state):
    op = entry.op
    commitment = state.commitments.get(_ref(op, "commitment", "commitment"))
    if commitment is None:
        raise Pending("the commitment this refers to has not arrived")
    require(op.get("status") in COMMITMENT_STATUSES, "status must be open, done or released")


def retire_message(doc: str, device: str, upto: int) -> bytes:
    """What the person key signs to retire one of its devices in `doc` after seq `upto`."""
    return RETIRE_CONTEXT + canonical_json({"doc": doc, "device": device, "upto": upto})


def _device(entry, author, state):
    """A device announces itself (its first entry carries its certificate, with its sealing key)."""
    require(entry.cert is not None, "a device announcement carries the device's certificate")


def _retire_device(entry, author, state):
    """Only the person key may retire a device, and only one of its own (issue 7)."""
    op = entry.op
    upto = op.get("upto")
    require(isinstance(upto, int) and not isinstance(upto, bool) and upto >= 0, "upto must be a seq")
    try:
        person, device = check_device_cert(op.get("cert"))
    except IdentityError as exc:
        raise Refused(f"the retired device's certificate does not hold: {exc}") from None
    require(person == author and device == op.get("device"), "a member can retire only their own devices")
    try:
        sig = unb32(op.get("sig", ""))
    except ValueError:
        raise Refused("the retirement signature is malformed") from None
    require(verify(unb32(author), sig, retire_message(state.id, device, upto)),
            "the retirement is not signed by the member's person key")


def _leave(entry, author, state):
    devices = entry.op.get("devices")
    _check_devices(devices)
    require(devices.get(entry.device) == entry.seq, "a leave keeps the leaving device's entries up to itself")


def _check_devices(devices) -> None:
    require(isinstance(devices, dict) and len(devices) <= 1000, "devices must map device ids to seqs")
    for device, seq in devices.items():
        require(isinstance(device, str) and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0,
                "devices must map device ids to seqs")


def _cut(entry, author, state):
    """A removal takes effect: allowed only with proof that the removal round was agreed."""
    op = entry.op
    agreement = _agreement(state, op)
    require(agreement.kind == "removal" and agreement.subject == op.get("member"),
            "a cut must name the member its removal agreement is about")
    _check_devices(op.get("devices"))
    # Written by the removed member, a cut would not keep itself: another member carries it out.
    require(op.get("member") != author, "a member's removal is carried out by another member")
    evidence = op.get("evidence")
    require(isinstance(evidence, dict), "a cut carries the evidence of consent")
    # Whether a removal was agreed depends on who was entitled to respond, which entries arriving
    # later can change: what the cut lacks makes it void (held, and decided again by every
    # recompute), never refused, so that every node holds it and decides it alike. Members
    # admitted only through the removed member's entries that this very cut drops do not count.
    dropped = state.admitted_through(op["member"], op["devices"], agreement.first[0])
    for member in agreement.entitled:
        if member in dropped:
            continue
        proof = evidence.get(member)
        if not isinstance(proof, str):
            raise Void(f"the removal was not agreed: no consent of {member[:8]}, who is entitled to respond")
        if proof in state.void:
            raise Void("the removal was not agreed: its evidence includes an entry that does not count")
        consented = _consented(agreement, member, proof)
        if consented is False:
            raise Void(f"the removal was not agreed: the evidence for {member[:8]} is not their consent")
        if consented is None:
            exited = _exited(state, member, proof)
            if exited is False:
                raise Void(f"the removal was not agreed: {member[:8]} is a member again and has not answered")
            if exited is None:
                raise Pending("the responses that agreed this removal have not all arrived")


def _consented(agreement, member: str, proof: str) -> bool | None:
    """Whether `proof` is the member's consent (or stand-aside) to the removal; None if no
    response of theirs has that hash (yet)."""
    for (version, key), (response, _) in agreement.responses.get(member, {}).items():
        if key[1] == proof:
            return version == agreement.first[1].hash and response in ("consent", "stand_aside")
    return None


def _exited(state, member: str, proof: str) -> bool | None:
    """Whether `proof`, an exit of the member, stands for their answer: only while they are out
    (one admitted again must answer); None if no exit of theirs has that hash (yet)."""
    if not any(e.hash == proof for e in state.exits.get(member, ())):
        return None
    return state.members[member].status != "active"


def _split(entry, author, state):
    op = entry.op
    require(isinstance(op.get("child"), str) and len(op["child"]) == 64, "a split names the new congregation")
    for member in op.get("members", []):
        check_member_id(member)


def _move(entry, author, state):
    require(isinstance(entry.op.get("congregation"), str) and len(entry.op["congregation"]) == 64,
            "a crew moves to a congregation id")


OPS = {
    ("*", "name"): _name,
    ("*", "meta"): _meta,
    ("*", "propose"): _propose,
    ("*", "revise"): _revise,
    ("*", "respond"): _respond,
    ("*", "retire"): _retire,
    ("*", "device"): _device,
    ("*", "retire_device"): _retire_device,
    ("*", "leave"): _leave,
    ("*", "cut"): _cut,
    ("congregation", "split"): _split,
    ("crew", "move"): _move,
    ("congregation", "invite"): _invite,
    ("congregation", "withdraw"): _withdraw,
    ("congregation", "admit"): _admit,
    ("crew", "add"): _add,
    ("crew", "commit"): _commit,
    ("crew", "status"): _status,
}
