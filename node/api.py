"""The JSON API of API.md, as a Flask blueprint; each route hands its work to the node thread."""
from flask import Blueprint, Response, current_app, jsonify, request

from .errors import Invalid
from .service import INVITE_DAYS, Service

api = Blueprint("api", __name__, url_prefix="/api")


def node():
    """The NodeThread of this app."""
    return current_app.config["NODE"]


def body() -> dict:
    """The request's JSON object, or a 400 that says what is wrong."""
    if not request.data:
        return {}
    try:
        data = request.get_json(silent=True)
    except RecursionError:                      # nested deeper than the parser goes: not "silent"
        data = None
    if data is None:
        raise Invalid("the request body is not valid JSON")
    if not isinstance(data, dict):
        raise Invalid("the request body must be a JSON object")
    return data


def field(data: dict, name: str, required: bool = True):
    """A field of the body; a missing required field is a 400."""
    if required and name not in data:
        raise Invalid(f"the field {name!r} is required")
    return data.get(name)


@api.get("/health")
def health():
    return {"ok": True}


@api.get("/me")
def get_me():
    return node().call(Service.me_view)


@api.patch("/me")
def patch_me():
    return node().call(Service.set_name, field(body(), "name"))


@api.get("/due")
def get_due():
    return node().call(Service.due_view)


@api.get("/congregations")
def list_congregations():
    return jsonify(node().call(Service.list_congregations))


@api.post("/congregations")
def create_congregation():
    data = body()
    return node().call(Service.create_congregation, field(data, "name"), data.get("purpose", "")), 201


@api.get("/congregations/<cid>")
def get_congregation(cid):
    return node().call(Service.congregation_view, cid)


@api.get("/congregations/<cid>/history")
def congregation_history(cid):
    return jsonify(node().call(Service.history, cid))


@api.get("/crews/<crew_id>/history")
def crew_history(crew_id):
    node().call(Service.crew_state, crew_id)
    return jsonify(node().call(Service.history, crew_id))


@api.post("/congregations/<cid>/invites")
def create_invite(cid):
    data = body()
    return node().call(Service.create_invite, cid, data.get("note", ""), data.get("days", INVITE_DAYS)), 201


@api.delete("/congregations/<cid>/invites/<key>")
def withdraw_invite(cid, key):
    return node().call(Service.withdraw_invite, cid, key)


@api.post("/congregations/<cid>/crews")
def create_crew(cid):
    data = body()
    return node().call(Service.create_crew, cid, field(data, "name"), data.get("purpose", ""),
                       data.get("members", [])), 201


@api.get("/crews/<crew_id>")
def get_crew(crew_id):
    return node().call(Service.crew_view, crew_id)


@api.post("/crews/<crew_id>/members")
def add_crew_member(crew_id):
    return node().call(Service.add_crew_member, crew_id, field(body(), "member_id"))


@api.post("/congregations/<doc_id>/agreements")
def propose_in_congregation(doc_id):
    node().call(Service.congregation_state, doc_id)
    return _propose(doc_id)


@api.post("/crews/<doc_id>/agreements")
def propose_in_crew(doc_id):
    node().call(Service.crew_state, doc_id)
    return _propose(doc_id)


def _propose(doc_id):
    data = body()
    return node().call(Service.propose, doc_id, field(data, "title"), data.get("text", ""),
                       data.get("review_by")), 201


@api.post("/congregations/<doc_id>/leave")
def leave_congregation(doc_id):
    node().call(Service.congregation_state, doc_id)
    return node().call(Service.leave, doc_id)


@api.post("/crews/<doc_id>/leave")
def leave_crew(doc_id):
    node().call(Service.crew_state, doc_id)
    return node().call(Service.leave, doc_id)


@api.post("/congregations/<doc_id>/removals")
def propose_removal_in_congregation(doc_id):
    node().call(Service.congregation_state, doc_id)
    return _propose_removal(doc_id)


@api.post("/crews/<doc_id>/removals")
def propose_removal_in_crew(doc_id):
    node().call(Service.crew_state, doc_id)
    return _propose_removal(doc_id)


def _propose_removal(doc_id):
    data = body()
    return node().call(Service.propose_removal, doc_id, field(data, "member_id"), field(data, "reason")), 201


@api.post("/congregations/<cid>/fork")
def fork_congregation(cid):
    data = body()
    return node().call(Service.fork_congregation, cid, field(data, "name"), data.get("crews", []),
                       data.get("members", []), data.get("purpose")), 201


@api.get("/agreements/<aid>")
def get_agreement(aid):
    return node().call(Service.agreement_view, aid)


@api.patch("/agreements/<aid>")
def revise_agreement(aid):
    data = body()
    given = {name: data[name] for name in ("title", "text", "review_by") if name in data}
    return node().call(Service.revise, aid, **given)


@api.post("/agreements/<aid>/retire")
def retire_agreement(aid):
    return node().call(Service.retire, aid)


@api.post("/agreements/<aid>/responses")
def respond(aid):
    data = body()
    return node().call(Service.respond, aid, field(data, "response"), data.get("reason", ""))


@api.post("/crews/<crew_id>/commitments")
def commit(crew_id):
    data = body()
    return node().call(Service.commit, crew_id, field(data, "what"), data.get("due"), data.get("by")), 201


@api.patch("/commitments/<commitment_id>")
def set_commitment_status(commitment_id):
    return node().call(Service.set_commitment_status, commitment_id, field(body(), "status"))


@api.get("/events")
def events():
    """Server-sent events: a `change` event whenever entries are accepted (for the live page)."""
    thread = node()

    def stream():
        seen = thread.revision
        yield "retry: 2000\n\n"
        while True:
            now = thread.wait_for_change(seen, timeout=15)
            if now > seen:
                seen = now
                yield f"event: change\ndata: {now}\n\n"
            else:
                yield ": keep-alive\n\n"

    return Response(stream(), mimetype="text/event-stream", headers={"Cache-Control": "no-store"})
