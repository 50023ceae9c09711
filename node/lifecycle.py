"""Membership over time: leaving, removal by consent, readmission and splitting a congregation.

Each action writes ordinary signed entries; what they mean for which entries count is settled
by the ledger's recompute, the same on every node (see node/ledger.py).
"""
import unicodedata

from .docstate import names_for
from .errors import Conflict, Invalid, NodeError, NotFound
from .rules import MAX_REASON, MAX_TEXT, MAX_TITLE, Refused, check_member_id, check_text


def my_devices(service, doc: str, member: str) -> dict[str, int]:
    """device -> last held seq on its kept branch, for `member`'s devices in `doc`."""
    state = service.states[doc]
    return {dev: seq for dev, (seq, _) in service.ledger.doc_heads(doc).items()
            if state.devices.get(dev) == member or service.ledger.devices.get(dev) == member}


def leave(service, doc: str) -> dict:
    """Leave a congregation (and my crews in it) or a crew: my history stays, attributed."""
    state = service.states.get(doc)
    if state is None or service.me not in state.members:
        raise NotFound(f"no congregation or crew {doc} here")
    service._writable(state, leaving=True)
    docs = [doc]
    if state.type == "congregation":
        docs += [c.id for c in service.crews_of(doc) if service._is_active(c)]
    for target in docs:
        devices = my_devices(service, target, service.me)
        mine = service.identity.device_id
        devices[mine] = service.ledger.heads.get((target, mine), (0, ""))[0] + 1
        service._write(target, {"t": "leave", "devices": devices})
    return {"id": doc, "status": "left"}


def propose_removal(service, doc: str, member, reason) -> dict:
    """Open a removal round about `member`; they are not among those who respond."""
    state = service.states.get(doc)
    if state is None or service.me not in state.members:
        raise NotFound(f"no congregation or crew {doc} here")
    service._writable(state)
    try:
        member = check_member_id(member, "member_id")
        reason = check_text(reason, "reason", MAX_REASON)
    except Refused as exc:
        raise Invalid(f"{exc} (a removal needs a reason: say what happened)") from None
    if member == service.me:
        raise Invalid("you cannot propose your own removal: leave instead")
    if not service._is_active(state, member):
        raise Invalid(f"{member} is not an active member of this {state.type}")
    title = f"Remove {names_for(service.states, state).name_of(member)}"[:MAX_TITLE]
    return service.propose(doc, title, reason, kind="removal", subject=member)


def removal_evidence(state, agreement) -> dict | None:
    """For each member entitled to respond: the hash of their consent (or stand-aside) to the
    removal, or of their own leaving or removal; None while any is missing."""
    first = agreement.first[1].hash
    evidence = {}
    for member in agreement.entitled:
        answers = [(key, value) for (version, key), value in agreement.responses.get(member, {}).items()
                   if version == first]
        latest = max(answers)[1] if answers else None
        if latest and latest[0] in ("consent", "stand_aside"):
            evidence[member] = max(answers)[0][1]
        elif state.exits.get(member) and state.members[member].status != "active":
            evidence[member] = max(state.exits[member], key=lambda x: x.key).hash
        else:
            return None
    return evidence


def finalize_removals(service) -> int:
    """Write the cut of every agreed removal not yet in effect; returns how many were written.

    Any member's node but the removed member's own may write it; if several do at once, the
    earliest cut wins everywhere. Each cut is chosen from the state as it stands after the
    previous one (a cut makes the ledger recompute). A cut this node cannot write (its own
    entries no longer count, say) is left to the others: it never fails what called it, a
    sync for one.
    """
    written = 0
    for _ in range(sum(len(s.agreements) for s in service.states.values())):
        cut = _next_cut(service)
        if cut is None:
            break
        try:
            service._write(*cut)
        except NodeError:
            break
        written += 1
    return written


def _next_cut(service) -> tuple[str, dict] | None:
    """(document, cut operation) of an agreed removal not yet carried out, or None."""
    for state in list(service.states.values()):
        if not service._is_active(state):
            continue
        cut_agreements = _accepted_cuts(service, state)
        for agreement in list(state.agreements.values()):
            # (retired and kind first: this runs after every batch received, over every agreement)
            if agreement.retired or agreement.kind != "removal" or agreement.id in cut_agreements:
                continue
            subject = agreement.subject
            if subject == service.me or subject not in state.members or state.members[subject].status != "active":
                continue
            evidence = removal_evidence(state, agreement)
            if evidence is None:
                continue
            devices = {dev: seq for dev, seq in state.vector.items() if state.devices.get(dev) == subject}
            return state.id, {"t": "cut", "agreement": agreement.id, "member": subject,
                              "devices": devices, "evidence": evidence}
    return None


def _accepted_cuts(service, state):
    """Agreement ids whose removal already has a cut accepted here."""
    return {x.agreement for exits in state.exits.values() for x in exits if x.kind == "removed"}


def resume_vector(service, doc: str, member: str) -> dict:
    """The seqs a readmitted member's devices had reached: only their later entries count."""
    return my_devices(service, doc, member)


def _plain(name: str) -> str:
    """A name as people tell names apart: case, width, spacing and invisible characters aside."""
    text = unicodedata.normalize("NFKC", name)
    return " ".join("".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc")).split()).casefold()


def fork_congregation(service, cid: str, name, crews, members, purpose=None) -> dict:
    """Split a congregation: a new one with the members and crews named, linked to its parent;
    its purpose is the parent's unless another is given."""
    parent = service.congregation_state(cid)
    service._writable(parent)
    try:
        name = check_text(name, "name", MAX_TITLE)
        purpose = check_text(purpose or "", "purpose", MAX_TEXT, required=False)
    except Refused as exc:
        raise Invalid(str(exc)) from None
    taken = {_plain(split["name"]): f"“{split['name']}” already split off from here"
             for split in parent.splits}
    taken[_plain(parent.meta_value("name"))] = "that is this congregation's own name"
    if _plain(name) in taken:
        raise Invalid(f"{taken[_plain(name)]}: give the new congregation a name of its own, "
                      "so that people can tell them apart")
    if not isinstance(crews, list) or not isinstance(members, list):
        raise Invalid("crews and members must be lists of ids")
    chosen = []
    for member in [service.me, *members]:
        if not isinstance(member, str) or not service._is_active(parent, member):
            raise Invalid(f"{member} is not an active member of this congregation")
        if member not in chosen:
            chosen.append(member)
    mine = {c.id: c for c in service.crews_of(cid)}
    for crew in crews:
        if crew not in mine:
            raise Invalid(f"{crew} is not a crew of this congregation that you belong to")
        if not service._is_active(mine[crew]):
            raise Conflict(f"you are no longer an active member of crew {crew}")
        # A crew goes with its people: one left behind would be in a crew whose congregation
        # they are not in, and never receive it (nor the names it shows).
        behind = [m for m in mine[crew].active_members() if m not in chosen]
        if behind:
            names = ", ".join(parent.name_of(m) for m in behind)
            who = f"its members {names} do not" if len(behind) > 1 else f"its member {names} does not"
            raise Invalid(f"{mine[crew].meta_value('name')} goes with the new congregation, but {who}: "
                          "choose them too, or leave the crew here")
    from . import views
    inherited = [{"id": a["id"], "kind": a["kind"], "title": a["title"], "text": a["text"],
                  "status": a["status"], "review_by": a["review_by"]} for a in views.agreements_view(parent)]
    vector = {dev: seq for dev, (seq, _) in service.ledger.doc_heads(cid).items()}
    op = {"t": "genesis", "type": "congregation", "members": chosen, "crews": list(crews),
          "names": {m: parent.name_of(m) for m in chosen}, "inherited": inherited,
          "forked_from": {"id": cid, "name": parent.meta_value("name"), "vector": vector}}
    child = service._genesis(op, {"name": name, "purpose": purpose or parent.meta_value("purpose")})
    for crew in crews:
        service._write(crew, {"t": "move", "congregation": child})
    service._write(cid, {"t": "split", "child": child, "name": name, "members": chosen, "crews": list(crews)})
    return service.congregation_view(child)
