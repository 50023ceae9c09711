"""The JSON shapes of API.md, read from document states."""
import datetime as dt

from .docstate import Agreement, Commitment, DocState

CREW_SIZE_ADVICE = 8


def iso(ms: int) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC time."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def agreement_status(state: DocState, agreement: Agreement) -> str:
    """proposed / objected / agreed / retired, by the consent rules of issue 2."""
    if agreement.retired:
        return "retired"
    entitled = waiting_entitled(state, agreement)
    answers = [agreement.response_of(m) for m in entitled]
    if any(a and a[0] == "object" for a in answers):
        return "objected"
    if entitled and all(a and a[0] in ("consent", "stand_aside") for a in answers):
        return "agreed"
    return "proposed"


def waiting_entitled(state: DocState, agreement: Agreement) -> list[str]:
    """Those entitled to respond who are still active members of the scope."""
    active = {m.id for m in state.members.values() if m.status == "active"}
    return [m for m in agreement.entitled if m in active]


def agreement_view(state: DocState, agreement: Agreement, names: DocState | None = None) -> dict:
    """An agreement as API.md shapes it, plus the round's details for the page."""
    names = names or state
    current = agreement.current
    entitled = waiting_entitled(state, agreement)
    responses = {}
    for member in entitled:
        answer = agreement.response_of(member)
        if answer:
            responses[member] = {"response": answer[0], "reason": answer[1]}
    versions = sorted(agreement.versions.values(), key=lambda v: (v.at, v.hash))
    return {
        "id": agreement.id,
        "kind": agreement.kind,
        "title": current.title,
        "text": current.text,
        "status": agreement_status(state, agreement),
        "proposed_by": agreement.proposed_by,
        "review_by": current.review_by,
        "responses": responses,
        "entitled": entitled,
        "waiting_for": [m for m in entitled if m not in responses],
        "subject": agreement.subject,
        "scope": {"type": state.type, "id": state.id},
        "created_at": iso(agreement.first[1].at),
        "version": current.hash,
        "versions": [{"title": v.title, "text": v.text, "review_by": v.review_by, "by": v.author,
                      "at": iso(v.at), "current": v.hash == current.hash} for v in versions],
        "names": {m: names.name_of(m) for m in {agreement.proposed_by, *entitled}},
    }


def agreements_view(state: DocState, names: DocState | None = None) -> list[dict]:
    """All agreements of a document, newest first."""
    items = sorted(state.agreements.values(), key=lambda a: a.first[0], reverse=True)
    return [agreement_view(state, a, names) for a in items]


def commitment_view(commitment: Commitment, names: DocState | None = None) -> dict:
    """A commitment as API.md shapes it."""
    entry, author = commitment.first[1], commitment.first[2]
    op = entry.op
    view = {"id": commitment.id, "what": op["what"], "by": op["by"], "due": op.get("due"),
            "status": commitment.status, "created_at": iso(entry.at), "created_by": author}
    if names is not None:
        view["by_name"] = names.name_of(op["by"])
    return view


def member_list(state: DocState) -> list[dict]:
    """Members in the order they joined, with name and status."""
    members = sorted(state.members.values(), key=lambda m: m.joined)
    return [{"id": m.id, "name": state.name_of(m.id), "status": m.status} for m in members]


def crew_summary(crew: DocState) -> dict:
    """A crew as listed inside its congregation."""
    return {"id": crew.id, "name": crew.meta_value("name"), "purpose": crew.meta_value("purpose"),
            "members": crew.active_members()}


def crew_view(crew: DocState, congregation: DocState | None) -> dict:
    """A crew as API.md shapes it."""
    names = congregation or crew
    commitments = sorted(crew.commitments.values(), key=lambda c: (c.first[1].op.get("due") or "9999", c.first[0]))
    view = {
        **crew_summary(crew),
        "congregation_id": crew.congregation,
        "member_names": {m: names.name_of(m) for m in crew.members},
        "agreements": agreements_view(crew, names),
        "commitments": [commitment_view(c, names) for c in commitments],
    }
    if len(view["members"]) > CREW_SIZE_ADVICE:
        view["warning"] = (f"this crew has {len(view['members'])} members; crews work best with 3 to "
                           f"{CREW_SIZE_ADVICE} people around one table")
    return view
