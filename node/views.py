"""The JSON shapes of API.md, read from document states.

Derived facts that cost a pass over a document (who is active, each agreement's status, what is
due for me) are memoised per document revision, so reading a big congregation again is cheap and
an accepted entry invalidates only its own document.
"""
import datetime as dt
import weakref

from .docstate import Agreement, Commitment, DocState

CREW_SIZE_ADVICE = 8
_MEMO: "weakref.WeakKeyDictionary[DocState, tuple]" = weakref.WeakKeyDictionary()
_FACTS: "weakref.WeakKeyDictionary[DocState, dict]" = weakref.WeakKeyDictionary()
_MEMBERS: "weakref.WeakKeyDictionary[DocState, frozenset]" = weakref.WeakKeyDictionary()


def plural(count: int, one: str, many: str | None = None) -> str:
    """A count and its noun: 1 member, 3 members."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


def iso(ms: int) -> str:
    """Milliseconds since the epoch as an ISO 8601 UTC time."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def revision(state: DocState) -> tuple:
    """Changes whenever an entry is folded into the state (or the state is rebuilt)."""
    return (state.count, id(state.members), id(state.agreements), id(state.commitments))


def memo(state: DocState, key, compute):
    """`compute()`, remembered for `state` until its revision changes."""
    slot = _MEMO.get(state)
    rev = revision(state)
    if slot is None or slot[0] != rev:
        slot = (rev, {})
        _MEMO[state] = slot
    if key not in slot[1]:
        slot[1][key] = compute()
    return slot[1][key]


def active_set(state: DocState) -> frozenset:
    """Ids of the document's active members."""
    return memo(state, "active", lambda: frozenset(m for m, status, _ in membership(state) if status == "active"))


def membership(state: DocState) -> frozenset:
    """(member, status, joined): what agreement rounds depend on besides their own entries.
    While the membership stays the same this is the same object, so comparing it is instant."""
    def compute():
        fresh = frozenset((m.id, m.status, m.joined) for m in state.members.values())
        known = _MEMBERS.get(state)
        if known == fresh:
            return known
        _MEMBERS[state] = fresh
        return fresh
    return memo(state, "membership", compute)


def current_responses(agreement: Agreement, current: str | None = None) -> dict:
    """member -> (response, reason): each member's latest answer to the current version
    (what `Agreement.response_of` gives, for every member in one pass)."""
    current = current or agreement.current.hash
    out = {}
    for member, answers in agreement.responses.items():
        mine = [(key, value) for (version, key), value in answers.items() if version == current]
        if mine:
            out[member] = max(mine)[1]
    return out


def agreement_facts(state: DocState, agreement: Agreement) -> dict:
    """An agreement's current version, answers, entitled active members and status.

    Remembered per agreement until its own entries or the document's membership change, so an
    answer to one agreement does not make a node recompute a thousand others.
    """
    return facts_reader(state)(agreement)


def facts_reader(state: DocState):
    """`agreement_facts` for many agreements of one document (looks its caches up once)."""
    cache = _FACTS.get(state)
    if cache is None:
        cache = _FACTS[state] = {}
    members = membership(state)
    active = active_set(state)

    def read(agreement: Agreement) -> dict:
        key = (len(agreement.proposals), len(agreement.revisions), agreement.retired,
               sum(map(len, agreement.responses.values())), members)
        hit = cache.get(agreement.id)
        if hit is not None and hit[0] == key:
            return hit[1]
        current = agreement.current
        entitled, given, status = _round(agreement, current.hash, active)
        if agreement.retired:
            status = "retired"
        elif current.retiring:
            # A proposal to retire changes nothing until it is agreed: till then the agreement
            # stands as the round of its last text left it.
            last_text = max((v for v in agreement.versions.values() if not v.retiring), key=lambda v: (v.at, v.hash))
            status = "retired" if status == "agreed" else _round(agreement, last_text.hash, active)[2]
        facts = {"current": current, "responses": given, "entitled": entitled, "status": status}
        cache[agreement.id] = (key, facts)
        return facts

    return read


def _round(agreement: Agreement, version: str, active: frozenset) -> tuple[list, dict, str]:
    """(who the round of `version` waits for, their answers, the round's outcome so far)."""
    entitled = [m for m in agreement.asked_in(version) if m in active]
    given = current_responses(agreement, version)
    answers = [given.get(m) for m in entitled]
    if any(a and a[0] == "object" for a in answers):
        return entitled, given, "objected"
    if entitled and all(a and a[0] in ("consent", "stand_aside") for a in answers):
        return entitled, given, "agreed"
    return entitled, given, "proposed"


def agreement_status(state: DocState, agreement: Agreement) -> str:
    """proposed / objected / agreed / retired, by the consent rules of issue 2."""
    return agreement_facts(state, agreement)["status"]


def waiting_entitled(state: DocState, agreement: Agreement) -> list[str]:
    """Those entitled to respond who are still active members of the scope."""
    return list(agreement_facts(state, agreement)["entitled"])


def agreement_view(state: DocState, agreement: Agreement, names: DocState | None = None) -> dict:
    """An agreement as API.md shapes it, plus the round's details for the page."""
    names = names or state
    facts = agreement_facts(state, agreement)
    current, entitled, given = facts["current"], facts["entitled"], facts["responses"]
    responses = {}
    for member in entitled:
        answer = given.get(member)
        if answer:
            responses[member] = {"response": answer[0], "reason": answer[1]}
    versions = sorted(agreement.versions.values(), key=lambda v: (v.at, v.hash))
    return {
        "id": agreement.id,
        "kind": agreement.kind,
        "title": current.title,
        "text": current.text,
        "status": facts["status"],
        "proposed_by": agreement.proposed_by,
        "review_by": current.review_by,
        "responses": responses,
        "entitled": entitled,
        "waiting_for": [m for m in entitled if m not in responses],
        "subject": agreement.subject,
        "scope": {"type": state.type, "id": state.id},
        "created_at": iso(agreement.first[1].at),
        "version": current.hash,
        "retiring": current.retiring,
        "versions": [{"title": v.title, "text": v.text, "review_by": v.review_by, "by": v.author,
                      "at": iso(v.at), "current": v.hash == current.hash, "retiring": v.retiring}
                     for v in versions],
        "names": {m: names.name_of(m) for m in {agreement.proposed_by, *entitled, *(v.author for v in versions)}},
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


def open_invites(state: DocState, now: int) -> list[dict]:
    """Invites neither used, withdrawn nor expired at `now` (ms), the soonest to expire first:
    codes that someone could still join with."""
    found = [{"key": key, "note": invite["note"], "by": invite["by"], "by_name": state.name_of(invite["by"]),
              "expires": iso(invite["expires"])}
             for key, invite in state.invites.items()
             if invite["used_by"] is None and key not in state.withdrawn and invite["expires"] >= now]
    return sorted(found, key=lambda i: (i["expires"], i["key"]))


def crew_summary(crew: DocState) -> dict:
    """A crew as listed inside its congregation."""
    return {"id": crew.id, "name": crew.meta_value("name"), "purpose": crew.meta_value("purpose"),
            "members": crew.active_members()}


def crew_view(crew: DocState, names: DocState) -> dict:
    """A crew as API.md shapes it, with the member names of `names` (docstate.names_for)."""
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


def due_in(state: DocState, me: str, today: str) -> dict:
    """What one document asks of `me` today: my open commitments, proposals awaiting my answer,
    agreements due for review (the parts of `Service.due_view`, without names), remembered per
    revision of the document."""
    return memo(state, ("due", me, today), lambda: _due_in(state, me, today))


def _due_in(state: DocState, me: str, today: str) -> dict:
    scope = {"type": state.type, "id": state.id, "name": state.meta_value("name")}
    commitments, waiting, reviews = [], [], []
    for commitment in state.commitments.values():
        view = commitment_view(commitment)
        if view["by"] == me and view["status"] == "open":
            view["overdue"] = bool(view["due"] and view["due"] < today)
            commitments.append({**view, "scope": scope})
    read = facts_reader(state)
    for agreement in state.agreements.values():
        facts = read(agreement)
        status, current = facts["status"], facts["current"]
        if status in ("proposed", "objected") and me in facts["entitled"] and me not in facts["responses"]:
            waiting.append({"id": agreement.id, "title": current.title, "status": status, "scope": scope})
        if status == "agreed" and current.review_by and current.review_by <= today:
            reviews.append({"id": agreement.id, "title": current.title, "review_by": current.review_by,
                            "scope": scope})
    return {"commitments": commitments, "awaiting_response": waiting, "reviews_due": reviews}
