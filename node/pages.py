"""The local page: server-rendered HTML for every workflow of a member.

Every form posts to a route here that calls the node and redirects (Post/Redirect/Get), so the
page works with JavaScript off. On an error the same page is rendered again, the error in words
next to the form and everything typed kept. `web/static/crewnode.js` only enhances: it refreshes
the page's content when `/api/events` says entries were accepted, keeping what is being typed.

Page data is gathered in one call on the node thread (`NodeThread.call`), so one page costs one
hop. Agreement lists of a big congregation are paged, and what a page derives from a document is
remembered until that document changes (`views.memo`, `views.agreement_facts`), so a page stays
fast with thousands of records (bench/page.py).
"""
import datetime as dt
import hashlib
import hmac
import secrets
import time
import urllib.parse
import weakref
from collections import OrderedDict

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from markupsafe import Markup, escape

from . import views
from .docstate import gone_from_congregation, names_for
from .errors import Invalid, NodeError, NotFound
from .ids import now_ms
from .service import INVITE_DAYS, Service

pages = Blueprint("pages", __name__)

PER_PAGE = 25                   # agreements per page on a congregation page
DUE_SHOWN = 12                  # commitments / proposals / reviews shown on the home page before "show all"
HISTORY_SHOWN = 300
NAMES_SHOWN = 40                # names per list in an agreement card among many (its own page shows all)
INVITES_KEPT = 50               # invites shown again after their redirect (in memory only)
INHERITED_SHOWN = 100           # inherited agreements shown on a forked congregation's page
FILTERS = ("all", "open", "agreed", "retired")
OPEN = ("proposed", "objected")
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


class SyncUnavailable(NodeError):
    """Joining and syncing need the sync engine, which this node does not run."""

    status = 503


def node():
    """The NodeThread of this app."""
    return current_app.config["NODE"]


def _state():
    """Per-app memory of the page: invites just created (their codes are never stored)."""
    return current_app.extensions.setdefault("crewnode_pages", {"invites": OrderedDict()})


# -- security: CSRF token in every form (on top of the app's Origin/Sec-Fetch-Site check) -------

def csrf_token() -> str:
    return hmac.new(current_app.config["TOKEN"].encode(), b"crewnode-form-v1", hashlib.sha256).hexdigest()


@pages.before_request
def check_form_token():
    if request.method == "POST" and not hmac.compare_digest(request.form.get("csrf", ""), csrf_token()):
        return render_template("message.html", title="Form expired",
                               message="This form came from an old or foreign page. Go back, reload "
                                       "the page and try again."), 403
    return None


@pages.after_request
def page_headers(response):
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")   # no-referrer would send Origin: null
        response.headers.setdefault("Cache-Control", "no-store")
    return response


@pages.app_context_processor
def page_globals():
    return {"csrf": csrf_token()}


@pages.errorhandler(NodeError)
def node_error(exc: NodeError):
    title = {404: "Not here", 403: "Not allowed", 409: "Not now"}.get(exc.status, "Something is wrong")
    return render_template("message.html", title=title, message=exc.message), exc.status


# -- filters ---------------------------------------------------------------------------------

def _parse_time(value):
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000, dt.timezone.utc)
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


@pages.app_template_filter("when")
def when(value) -> Markup:
    """A time as a <time> element (the script shows it in local time)."""
    moment = _parse_time(value)
    if moment is None:
        return Markup("never")
    moment = moment.astimezone(dt.timezone.utc)
    text = f"{moment.day} {moment:%b %Y, %H:%M} UTC"
    return Markup('<time datetime="{}">{}</time>').format(moment.isoformat().replace("+00:00", "Z"), text)


@pages.app_template_filter("day")
def day(value) -> str:
    """An ISO date as 'Tue 3 Jun 2025'."""
    try:
        date = dt.date.fromisoformat(str(value))
    except ValueError:
        return str(value)
    return f"{date:%a} {date.day} {date:%b %Y}"


@pages.app_template_filter("due_note")
def due_note(value) -> str:
    """How far a due date is from today, in words."""
    try:
        days = (dt.date.fromisoformat(str(value)) - dt.date.today()).days
    except ValueError:
        return ""
    if days == 0:
        return "due today"
    if days == 1:
        return "due tomorrow"
    if days > 1:
        return f"in {days} days"
    return "overdue by 1 day" if days == -1 else f"overdue by {-days} days"


@pages.app_template_global()
def checklist(name: str, prefix: str, items, picked=()) -> Markup:
    """Checkboxes for a list of {id, name} (members, crews) as <li> items, `picked` ticked.
    Built here, not in a template loop: a congregation's member list can be long, and this is
    several times cheaper to render."""
    picked = set(picked)
    out = []
    for item in items:
        key = escape(item["id"])
        fid = f"{prefix}-{key}"
        out.append(f'<li><input type="checkbox" name="{name}" value="{key}" id="{fid}"'
                   f'{" checked" if item["id"] in picked else ""}><label for="{fid}">{escape(item["name"])}</label></li>')
    return Markup("\n".join(out))


@pages.app_template_global()
def options(items, chosen: str = "") -> Markup:
    """<option>s for a list of {id, name}, `chosen` selected (see `checklist`)."""
    return Markup("".join(f'<option value="{escape(item["id"])}"{" selected" if item["id"] == chosen else ""}>'
                          f'{escape(item["name"])}</option>' for item in items))


pages.app_template_filter("plural")(views.plural)


# -- gathering page data on the node thread ----------------------------------------------------

def _summaries(state) -> list[dict]:
    """Every agreement of a document as {id, status}, newest first; cached per revision."""
    def compute():
        ordered = sorted(state.agreements.values(), key=lambda a: a.first[0], reverse=True)
        read = views.facts_reader(state)
        return [{"id": a.id, "status": read(a)["status"]} for a in ordered]
    return views.memo(state, "page-summaries", compute)


_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # DocState -> {aid: (key, view)}
_NAMES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # DocState -> frozenset of names


def names_fingerprint(names) -> frozenset:
    """The names a document knows; the same object while they stay the same."""
    def compute():
        fresh = frozenset((member, found[1]) for member, found in names.names.items())
        known = _NAMES.get(names)
        if known == fresh:
            return known
        _NAMES[names] = fresh
        return fresh
    return views.memo(names, "names-fingerprint", compute)


def _agreement_views(service, state, ids) -> list[dict]:
    """Agreement views for a page, each remembered until that agreement, the membership or the
    names change, so an answer to one agreement re-renders only its own card's data."""
    names = names_for(service.states, state)
    cache = _VIEWS.get(state)
    if cache is None:
        cache = _VIEWS[state] = {}
    known = names_fingerprint(names)
    read = views.facts_reader(state)
    out = []
    for aid in ids:
        agreement = state.agreements[aid]
        facts = read(agreement)
        hit = cache.get(aid)
        if hit is not None and hit[0] is facts and hit[1] is known and hit[2] == service.me:
            out.append(hit[3])
            continue
        view = decorate(views.agreement_view(state, agreement, names), service.me, names=names)
        cache[aid] = (facts, known, service.me, view)
        out.append(view)
    return out


def decorate(a: dict, me: str, limit: int | None = NAMES_SHOWN, names=None) -> dict:
    """Add the round's state in names: who consented, stood aside, objected, has not answered.
    Lists of names are joined here (escaped once by the template) and cut at `limit` names in
    lists of many agreements; the agreement's own page shows them all. A removal also gets the
    name of the member it is about (`names`: the document that knows names)."""
    if a.get("subject"):
        a["subject_name"] = names.name_of(a["subject"]) if names is not None else \
            a["names"].get(a["subject"]) or f"member {a['subject'][:8]}"

    def name(member):
        known = a["names"].get(member) or f"member {member[:8]}"
        return f"{known} (you)" if member == me else known

    def cut(items):
        items = sorted(items, key=str.lower)
        shown = items if limit is None else items[:limit]
        return {"n": len(items), "text": ", ".join(shown), "more": len(items) - len(shown)}

    consent, aside, objections = [], [], []
    for member, answer in a["responses"].items():
        if answer["response"] == "consent":
            consent.append(name(member))
        elif answer["response"] == "stand_aside":
            reason = answer.get("reason") or ""
            aside.append(f"{name(member)} (“{reason}”)" if reason else name(member))
        else:
            objections.append({"name": name(member), "reason": answer.get("reason") or ""})
    a["round"] = {"consent": cut(consent), "stand_aside": cut(aside),
                  "objections": sorted(objections, key=lambda x: x["name"].lower()),
                  "waiting": cut(name(m) for m in a["waiting_for"])}
    return a


_DUE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()     # Service -> (key, due view)


def due_view(service) -> dict:
    """`Service.due_view` (assembled from per-document parts cached per revision, `views.due_in`),
    remembered as a whole until one of my documents changes (or the day does)."""
    today = dt.date.today().isoformat()
    mine = [s for s in list(service.states.values()) if service.me in s.members]
    key = (today, tuple((id(s), views.revision(s)) for s in mine))
    hit = _DUE.get(service)
    if hit is not None and hit[0] == key:
        return hit[1]
    due = service.due_view()
    _DUE[service] = (key, due)
    return due


def home_data(service, show_all: bool) -> dict:
    me = service.me_view()
    congregations = service.list_congregations()
    for congregation in congregations:
        cards = [views.memo(c, "home-card", lambda c=c: {"id": c.id, "name": c.meta_value("name"),
                                                         "size": len(c.active_members())})
                 for c in service.crews_of(congregation["id"])
                 if c.members[service.me].status == "active" and not service.cut_off(c)]
        congregation["crews"] = sorted(cards, key=lambda c: c["name"].lower())
        lineage = service.states[congregation["id"]].lineage
        congregation["forked_from_name"] = lineage.get("name") if lineage else None
    due = due_view(service)
    return {"me": me, "congregations": congregations, "due": due, "show_all": show_all, "due_shown": DUE_SHOWN,
            "overdue": sum(1 for c in due["commitments"] if c["overdue"])}


def congregation_data(service, cid: str, show: str, page: int) -> dict:
    """The congregation page; its parts are remembered until the congregation (or a crew) changes."""
    state = service.congregation_state(cid)
    me = service.me
    summaries = _summaries(state)
    counts = {"all": len(summaries), "open": 0, "agreed": 0, "retired": 0}
    for s in summaries:
        counts["open" if s["status"] in OPEN else s["status"]] += 1
    chosen = [s for s in summaries if show == "all" or s["status"] == show
              or (show == "open" and s["status"] in OPEN)]
    pages_total = max(1, -(-len(chosen) // PER_PAGE))
    page = min(max(page, 1), pages_total)
    shown = tuple(s["id"] for s in chosen[(page - 1) * PER_PAGE: page * PER_PAGE])
    members = views.memo(state, "page-members", lambda: views.member_list(state))
    crews = sorted(service.crews_of(cid), key=lambda c: c.meta_value("name").lower())
    cards = [views.memo(c, "page-card", lambda c=c: {**views.crew_summary(c), "size": len(c.active_members())})
             for c in crews]
    cards = [{**card, "went": service.cut_off(c)} for card, c in zip(cards, crews)]
    others = views.memo(state, ("page-others", me),
                        lambda: [p for p in members if p["status"] == "active" and p["id"] != me])
    return {
        "me": me, "my_name": service.my_name(),
        "congregation": {"id": cid, "name": state.meta_value("name"), "purpose": state.meta_value("purpose"),
                         "forked_from": state.forked_from, "my_status": state.members[me].status},
        "members": members,
        "others": others,
        # the long lists of the removal and fork forms, as nothing is chosen yet
        "others_options": views.memo(state, ("page-others-options", me), lambda: options(others)),
        "others_checks": views.memo(state, ("page-others-checks", me),
                                    lambda: checklist("fork_members", "fork-m", others)),
        "active_count": len(views.active_set(state)),
        "open_invites": views.open_invites(state, now_ms()),
        "crews": cards,
        "my_crews": [card for card, c in zip(cards, crews) if c.members[me].status == "active" and not card["went"]],
        "agreements": _agreement_views(service, state, shown),
        "counts": counts, "show": show, "page": page, "pages_total": pages_total,
        "status_note": status_note(state, me),
        "changes": page_changes(service, state),
        "inherited_shown": INHERITED_SHOWN,
        # Going in a split does not end one's membership here: only leaving does.
        "went": _went(state),
        "taken_elsewhere": _taken_elsewhere(service, state),
    }


def _went(state) -> dict[str, str]:
    """member -> the congregations they went to in splits, in words."""
    went: dict[str, list] = {}
    for split in state.splits:
        for member in split["members"]:
            went.setdefault(member, []).append(split["name"])
    return {member: " and ".join(names) for member, names in went.items()}


def _taken_elsewhere(service, state) -> list[dict]:
    """Crews this congregation was split off with that a split made at the same time took
    elsewhere (a crew belongs where its latest move puts it, on every node)."""
    out = []
    for crew_id in state.genesis.op.get("crews", []):
        crew = service.states.get(crew_id)
        if crew is None or service.me not in crew.members or crew.congregation == state.id \
                or any(crew_id in split["crews"] for split in state.splits):     # moved on from here later
            continue
        there = service.states.get(crew.congregation)
        out.append({"name": crew.meta_value("name"),
                    "to": there.meta_value("name") if there is not None else "another congregation"})
    return out


# -- membership over time: my status, lineage, entries that do not count -------------------------

OP_WORDS = {"genesis": "the document's first entry", "name": "a change of name", "invite": "an invite",
            "admit": "an admission", "add": "an addition to the crew", "propose": "a proposal",
            "revise": "a new version of a proposal", "respond": "an answer to a proposal",
            "retire": "the retiring of an agreement", "commit": "a commitment",
            "status": "a change of a commitment's status", "leave": "a leaving", "cut": "a removal",
            "split": "a split", "move": "a crew's move", "meta": "an edit of the name or purpose",
            "retire_device": "the retiring of a device",
            "withdraw": "the withdrawing of an invite"}


def status_note(state, me: str) -> dict | None:
    """When I am no longer active in a document: how (left / removed), since when, and the
    removal agreement that did it (which I can still read)."""
    member = state.members.get(me)
    if member is None or member.status == "active":
        return None
    since = max(member.events)[0][0] if member.events else None
    agreement = None
    if member.status == "removed":
        cuts = [x for x in state.exits.get(me, ()) if x.kind == "removed"]
        found = state.agreements.get(max(cuts, key=lambda x: x.key).agreement) if cuts else None
        if found is not None:
            agreement = {"id": found.id, "title": found.current.title}
    return {"status": member.status, "since": since, "agreement": agreement}


def _linkable(service, doc_id: str | None) -> bool:
    """Whether this node holds `doc_id` with me among its members (so its page opens)."""
    held = service.states.get(doc_id) if doc_id else None
    return held is not None and service.me in held.members


def page_changes(service, state, names=None) -> dict:
    """`Service.changes_view` for the page: lineage with links where the other half is held
    here, inherited agreements, forked logs and entries that do not count. Remembered until the
    document changes, an entry of it is held as void, or the other halves come or go."""
    parent = state.lineage["id"] if state.lineage else None
    held = tuple(_linkable(service, d) for d in (parent, *(s["id"] for s in state.splits)))
    key = ("page-changes", len(state.void), len(state.forks), held, id(names))
    return views.memo(state, key, lambda: _page_changes(service, state, names, held))


_VOID: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()    # DocState -> (key, void entries)


def void_entries(service, state, names=None) -> list[dict]:
    """`Service.void_view`, remembered until another entry of the document is held as void or
    the names change: reading them costs a pass over the document's stored entries."""
    key = (len(state.void), names_fingerprint(names or state))
    hit = _VOID.get(state)
    if hit is not None and hit[0] == key:
        return hit[1]
    found = service.void_view(state, names)
    _VOID[state] = (key, found)
    return found


def _page_changes(service, state, names, held) -> dict:
    found = service.changes_view(state, names, void=void_entries(service, state, names))
    lineage = found["lineage"]
    parent = dict(lineage["parent"], linkable=held[0]) if lineage["parent"] else None
    children = [dict(child, linkable=link) for child, link in zip(lineage["children"], held[1:])]
    forks = []
    for fork in found["forks"]:
        entries = [{**e, "what": OP_WORDS.get(e["op"], e["op"] or "an entry"), "kept": e["hash"] == fork["kept"]}
                   for e in fork["entries"]]
        forks.append({**fork, "entries": sorted(entries, key=lambda e: not e["kept"])})
    return {"parent": parent, "children": children, "inherited": found["inherited"], "forks": forks,
            "void_entries": found["void_entries"],
            "any_void": bool(found["void_entries"] or forks)}


def crew_data(service, crew_id: str) -> dict:
    """The crew page; remembered until the crew or its congregation (names) changes, or the day."""
    crew = service.crew_state(crew_id)
    congregation = service.states.get(crew.congregation)
    names = names_for(service.states, crew)
    today = dt.date.today().isoformat()
    key = ("page", service.me, today, views.revision(names), congregation is None, len(crew.void), len(crew.forks))
    return views.memo(crew, key, lambda: _crew_data(service, crew, congregation, names, today))


def _crew_data(service, crew, congregation, names, today: str) -> dict:
    view = service.crew_view(crew.id)
    moved_to = service.cut_off(crew)
    # Active in the crew but gone from its congregation: the crew's records no longer reach them.
    gone = {m: congregation.members[m].status if m in congregation.members else "outside" for m in crew.members
            if crew.members[m].status == "active" and gone_from_congregation(service.states, crew, m)}
    members = [{"id": m, "name": view["member_names"].get(m, m[:8]), "status": crew.members[m].status,
                "gone": gone.get(m)}
               for m in sorted(crew.members, key=lambda m: crew.members[m].joined)]
    candidates = []
    if congregation is not None:
        candidates = [m for m in views.member_list(congregation)
                      if m["status"] == "active" and m["id"] not in crew.members]
    for a in view["agreements"]:
        decorate(a, service.me, names=names)
    for commitment in view["commitments"]:
        commitment["overdue"] = bool(commitment["status"] == "open" and commitment["due"] and commitment["due"] < today)
    return {
        "me": service.me, "crew": view, "members": members, "candidates": candidates,
        "active": [m for m in members if m["status"] == "active"],
        "gone": [m for m in members if m["gone"]],
        "congregation": {"id": crew.congregation if congregation and not moved_to else None,
                         "name": congregation.meta_value("name") if congregation else "its congregation"},
        "moved_to": moved_to,
        "my_status": crew.members[service.me].status,
        "status_note": status_note(crew, service.me),
        "changes": page_changes(service, crew, names),
    }


def agreement_data(service, aid: str) -> dict:
    state, _ = service.find_agreement(aid)
    agreement = decorate(service.agreement_view(aid), service.me, limit=None, names=names_for(service.states, state))
    my_status, cut_off = state.members[service.me].status, service.cut_off(state)
    return {"me": service.me, "agreement": agreement,
            "scope": {"type": state.type, "id": state.id, "name": state.meta_value("name")},
            "parent": _crumb_parent(service, state), "my_status": my_status, "cut_off": cut_off,
            "can_write": my_status == "active" and not cut_off}


def _crumb_parent(service, state) -> dict | None:
    """For a crew's pages below its own: the congregation to name in the breadcrumb, if mine here."""
    congregation = service.states.get(state.congregation) if state.type == "crew" else None
    if congregation is None or service.me not in congregation.members or service.cut_off(state):
        return None
    return {"id": congregation.id, "name": congregation.meta_value("name")}


def history_data(service, doc_id: str, kind: str) -> dict:
    state = service.congregation_state(doc_id) if kind == "congregation" else service.crew_state(doc_id)
    entries = service.history(doc_id, limit=HISTORY_SHOWN)
    return {"scope": {"type": kind, "id": doc_id, "name": state.meta_value("name")}, "entries": entries,
            "limit": HISTORY_SHOWN, "parent": _crumb_parent(service, state)}


# -- sync features (the sync engine may or may not be there) --------------------------------------

def _engine():
    return current_app.config.get("SYNC")


def join(code: str, address: str | None) -> dict:
    engine = _engine()
    if engine is not None and hasattr(engine, "join"):
        return engine.join(code, address)
    if hasattr(Service, "join"):
        return node().call(Service.join, code, address)
    raise SyncUnavailable("sync not available yet: this node cannot join a congregation yet")


def peers() -> list[dict] | None:
    engine = _engine()
    if engine is not None and hasattr(engine, "peers"):
        return engine.peers()
    if hasattr(Service, "peers_view"):
        return node().call(Service.peers_view)
    return None


def pending_joins() -> list[dict]:
    engine = _engine()
    return engine.pending_joins() if engine is not None and hasattr(engine, "pending_joins") else []


def sync_now(address: str) -> dict:
    engine = _engine()
    if engine is not None and hasattr(engine, "sync_with"):
        return engine.sync_with(address)
    if hasattr(Service, "sync_now"):
        return node().call(Service.sync_now, address)
    raise SyncUnavailable("sync not available yet")


# -- rendering -------------------------------------------------------------------------------

def _render(template: str, data: dict, form: str | None = None, error: str | None = None,
            status: int = 200, live_url: str | None = None):
    values = request.form if form else {}
    html = render_template(template, **data, form=form, error=error, values=values,
                           live_url=live_url or request.full_path.rstrip("?"))
    return html, status


def _error_status(exc: NodeError) -> int:
    return exc.status if exc.status != 404 else 400


def render_home(form=None, error=None, status=200):
    data = node().call(home_data, request.args.get("all") == "1")
    data["notice"] = _notice()
    data["joins"] = pending_joins()
    live = request.full_path.rstrip("?") if request.method == "GET" else url_for(".home")
    return _render("home.html", data, form, error, status, live_url=live)


def _notice() -> str | None:
    """A message carried by a redirect's query string (no server-side session needed)."""
    note = request.args.get("note")
    return {
        "joining": "Your invite code is noted. You will be in as soon as your node syncs with a member's "
                   "node that knows the invite: on this network, or at the address you gave. This page "
                   "updates by itself.",
        "name": "Your name is saved.",
    }.get(note)


def _congregation_args(args) -> tuple[str, int]:
    show = args.get("show", "all")
    if show not in FILTERS:
        show = "all"
    try:
        page = int(args.get("page", "1"))
    except ValueError:
        page = 1
    return show, page


def render_congregation(cid, form=None, error=None, status=200, args=None):
    args = request.args if args is None else args
    show, page = _congregation_args(args)
    data = node().call(congregation_data, cid, show, page)
    invite = None
    handle = args.get("invite")
    if handle:
        found = _state()["invites"].get(handle)
        if found and found["congregation_id"] == cid:
            invite = found
    data["invite"] = invite
    query = {k: v for k, v in (("show", show), ("page", str(data["page"])), ("invite", handle)) if v and
             not (k == "show" and v == "all") and not (k == "page" and v == "1")}
    live = url_for(".congregation", cid=cid) + ("?" + urllib.parse.urlencode(query) if query else "")
    return _render("congregation.html", data, form, error, status, live_url=live)


def render_crew(crew_id, form=None, error=None, status=200):
    data = node().call(crew_data, crew_id)
    return _render("crew.html", data, form, error, status, live_url=url_for(".crew", crew_id=crew_id))


def render_agreement(aid, form=None, error=None, status=200):
    data = node().call(agreement_data, aid)
    return _render("agreement.html", data, form, error, status, live_url=url_for(".agreement", aid=aid))


def render_peers(form=None, error=None, status=200):
    found = peers()
    data = {"peers": found, "available": found is not None or _engine() is not None,
            "result": None, "me": node().call(Service.me_view)}
    if request.method == "GET" and "received" in request.args:
        data["result"] = {"received": request.args.get("received"), "sent": request.args.get("sent")}
    return _render("peers.html", data, form, error, status, live_url=url_for(".peers_page"))


def sync_addresses() -> list[str]:
    """The addresses at which another member's node can reach this node's sync listener: the
    machine's LAN addresses when it listens on all of them, else the one it listens on."""
    engine = _engine()
    if engine is None:
        return []
    return lan_addresses() if engine.listens_everywhere else [engine.host]


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (what another member types to reach it)."""
    try:
        import ifaddr
    except ImportError:
        return []
    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith(("127.", "169.254.")) and ip.ip not in found:
                found.append(ip.ip)
    return found


def render_settings(form=None, error=None, status=200):
    data = {"me": node().call(Service.me_view), "saved": request.args.get("note") == "name",
            "addresses": sync_addresses(),
            "devices_url": url_for("carry_pages.devices_page") if "carry_pages.devices_page" in current_app.view_functions
            else None}
    return _render("settings.html", data, form, error, status, live_url=url_for(".settings"))


def field(name: str) -> str:
    return request.form.get(name, "")


def _local_path(value: str | None, fallback: str) -> str:
    """A redirect target from a form, only if it is a path on this node."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return fallback


# -- pages: home, me, settings -----------------------------------------------------------------------

@pages.get("/")
def home():
    return render_home()


@pages.post("/me")
def save_name():
    back = request.form.get("back")
    try:
        node().call(Service.set_name, field("name"))
    except NodeError as exc:
        if back == "settings":
            return render_settings("name", exc.message, _error_status(exc))
        return render_home("name", exc.message, _error_status(exc))
    if back == "settings":
        return redirect(url_for(".settings", note="name"), 303)
    return redirect(url_for(".home"), 303)


@pages.get("/settings")
def settings():
    return render_settings()


@pages.post("/congregations")
def create_congregation():
    try:
        made = node().call(Service.create_congregation, field("name"), field("purpose"))
    except NodeError as exc:
        return render_home("congregation", exc.message, _error_status(exc))
    return redirect(url_for(".congregation", cid=made["id"]), 303)


@pages.post("/join")
def join_page():
    code = field("code").strip()
    address = field("address").strip() or None
    try:
        if not code:
            raise Invalid("type the invite code you were given, like ABCD-EFGH-JKMN")
        result = join(code, address)
    except NodeError as exc:
        return render_home("join", exc.message, _error_status(exc))
    if result.get("status") == "joined" and result.get("congregation_id"):
        return redirect(url_for(".congregation", cid=result["congregation_id"]), 303)
    return redirect(url_for(".home", note="joining"), 303)


@pages.post("/joins/<key>/forget")
def forget_join_page(key):
    engine = _engine()
    if engine is None or not hasattr(engine, "forget_join"):
        raise SyncUnavailable("sync not available: this node is not joining anything")
    engine.forget_join(key)
    return redirect(url_for(".home"), 303)


# -- forms of congregation and crew pages ---------------------------------------------------------

def _submit(kind: str, doc_id: str, form: str, act, anchor=lambda made: ""):
    """A form on a congregation's or a crew's page (`kind`): `act()` on the node; refused, the
    page again with the reason next to `form`; else back to the page, at `anchor(what act made)`."""
    crew = kind == "crew"
    node().call(Service.crew_state if crew else Service.congregation_state, doc_id)   # 404 if not held
    try:
        made = act()
    except NodeError as exc:
        if crew:
            return render_crew(doc_id, form, exc.message, _error_status(exc))
        return _congregation_form_error(doc_id, form, exc)
    page = url_for(".crew", crew_id=doc_id) if crew else url_for(".congregation", cid=doc_id)
    return redirect(page + anchor(made), 303)


def _proposal(kind: str, doc_id: str):
    """The form proposing an agreement."""
    return _submit(kind, doc_id, "propose", lambda: node().call(
        Service.propose, doc_id, field("title"), field("text"), field("review_by") or None), _agreement_anchor)


def _removal(kind: str, doc_id: str):
    """The form proposing to remove a member."""
    return _submit(kind, doc_id, "removal", lambda: node().call(
        Service.propose_removal, doc_id, field("member_id"), field("reason")), _agreement_anchor)


def _confirmed_leaving() -> None:
    """Leaving asks for a ticked box (the browser asks first; this is for when it did not)."""
    if request.form.get("confirm") != "yes":
        raise Invalid("tick “I want to leave” to confirm, then press Leave again")


def _leaving(kind: str, doc_id: str):
    """The form leaving a congregation or a crew."""
    def leave():
        _confirmed_leaving()
        return node().call(Service.leave, doc_id)
    return _submit(kind, doc_id, "leave", leave)


def _agreement_anchor(made) -> str:
    return f"#a-{made['id']}"


# -- congregation ---------------------------------------------------------------------------------

@pages.get("/c/<cid>")
def congregation(cid):
    return render_congregation(cid)


def _congregation_form_error(cid, form, exc):
    args = urllib.parse.parse_qs(urllib.parse.urlsplit(request.form.get("back", "")).query)
    args = {k: v[0] for k, v in args.items()}
    return render_congregation(cid, form, exc.message, _error_status(exc), args=args)


@pages.post("/c/<cid>/invites")
def create_invite(cid):
    try:
        days = field("days") or str(INVITE_DAYS)
        invite = node().call(Service.create_invite, cid, field("note"), int(days) if days.isdigit() else days)
    except NodeError as exc:
        if isinstance(exc, NotFound):
            raise
        return _congregation_form_error(cid, "invite", exc)
    kept = _state()["invites"]
    handle = secrets.token_urlsafe(9)
    sync_port = node().call(Service.me_view).get("sync_port")
    kept[handle] = {**invite, "note": field("note").strip(), "qr": qr_svg(invite["code"]), "made": time.time(),
                    "addresses": [f"{ip}:{sync_port}" for ip in sync_addresses()] if sync_port else []}
    while len(kept) > INVITES_KEPT:
        kept.popitem(last=False)
    return redirect(url_for(".congregation", cid=cid, invite=handle) + "#invite", 303)


@pages.post("/c/<cid>/invites/<key>/withdraw")
def withdraw_invite(cid, key):
    try:
        node().call(Service.withdraw_invite, cid, key)
    except NodeError as exc:                    # (an unknown congregation: its page says 404)
        return _congregation_form_error(cid, "invite", exc)
    return redirect(url_for(".congregation", cid=cid) + "#open-invites-heading", 303)


@pages.post("/c/<cid>/agreements")
def propose_in_congregation(cid):
    return _proposal("congregation", cid)


@pages.post("/c/<cid>/crews")
def create_crew(cid):
    try:
        made = node().call(Service.create_crew, cid, field("crew_name"), field("crew_purpose"),
                           request.form.getlist("members"))
    except NodeError as exc:
        if isinstance(exc, NotFound):
            raise
        return _congregation_form_error(cid, "crew", exc)
    return redirect(url_for(".crew", crew_id=made["id"]), 303)


@pages.post("/c/<cid>/leave")
def leave_congregation(cid):
    return _leaving("congregation", cid)


@pages.post("/c/<cid>/removals")
def propose_removal_in_congregation(cid):
    return _removal("congregation", cid)


@pages.post("/c/<cid>/fork")
def fork_congregation(cid):
    node().call(Service.congregation_state, cid)
    try:
        if request.form.get("confirm") != "yes":
            raise Invalid("tick “I want to split this congregation” to confirm, then press Fork congregation again")
        made = node().call(Service.fork_congregation, cid, field("fork_name"),
                           request.form.getlist("fork_crews"), request.form.getlist("fork_members"),
                           field("fork_purpose"))
    except NodeError as exc:
        return _congregation_form_error(cid, "fork", exc)
    return redirect(url_for(".congregation", cid=made["id"]), 303)


@pages.get("/c/<cid>/history")
def congregation_history(cid):
    data = node().call(history_data, cid, "congregation")
    return _render("history.html", data, live_url=url_for(".congregation_history", cid=cid))


# -- crew -----------------------------------------------------------------------------------------

@pages.get("/crews/<crew_id>")
def crew(crew_id):
    return render_crew(crew_id)


@pages.post("/crews/<crew_id>/agreements")
def propose_in_crew(crew_id):
    return _proposal("crew", crew_id)


@pages.post("/crews/<crew_id>/commitments")
def make_commitment(crew_id):
    return _submit("crew", crew_id, "commit", lambda: node().call(
        Service.commit, crew_id, field("what"), field("due") or None, field("by") or None),
        lambda made: f"#k-{made['id']}")


@pages.post("/crews/<crew_id>/members")
def add_member(crew_id):
    return _submit("crew", crew_id, "add", lambda: node().call(Service.add_crew_member, crew_id, field("member_id")),
                   lambda _: "#members")


@pages.post("/crews/<crew_id>/leave")
def leave_crew(crew_id):
    return _leaving("crew", crew_id)


@pages.post("/crews/<crew_id>/removals")
def propose_removal_in_crew(crew_id):
    return _removal("crew", crew_id)


@pages.get("/crews/<crew_id>/history")
def crew_history(crew_id):
    data = node().call(history_data, crew_id, "crew")
    return _render("history.html", data, live_url=url_for(".crew_history", crew_id=crew_id))


@pages.post("/commitments/<commitment_id>/status")
def commitment_status(commitment_id):
    crew_id = node().call(lambda s: s.find_commitment(commitment_id)[0].id)
    try:
        node().call(Service.set_commitment_status, commitment_id, field("status"))
    except NodeError as exc:
        return render_crew(crew_id, f"k-{commitment_id}", exc.message, _error_status(exc))
    return redirect(url_for(".crew", crew_id=crew_id) + f"#k-{commitment_id}", 303)


# -- agreements ----------------------------------------------------------------------------------

@pages.get("/agreements/<aid>")
def agreement(aid):
    return render_agreement(aid)


@pages.post("/agreements/<aid>/revise")
def revise(aid):
    return _on_agreement_page(aid, "revise", lambda: node().call(
        Service.revise, aid, field("title"), field("text"), field("review_by") or None))


@pages.post("/agreements/<aid>/retire")
def retire(aid):
    return _on_agreement_page(aid, "retire", lambda: node().call(Service.retire, aid))


def _on_agreement_page(aid: str, form: str, act):
    """A form on an agreement's own page: `act()`; refused, the page again with the reason."""
    try:
        act()
    except NodeError as exc:
        if isinstance(exc, NotFound):
            raise
        return render_agreement(aid, form, exc.message, _error_status(exc))
    return redirect(url_for(".agreement", aid=aid), 303)


@pages.post("/agreements/<aid>/respond")
def respond(aid):
    kind, doc_id = node().call(lambda s: (lambda st: (st.type, st.id))(s.find_agreement(aid)[0]))
    fallback = url_for(".congregation", cid=doc_id) if kind == "congregation" else url_for(".crew", crew_id=doc_id)
    back = _local_path(request.form.get("back"), fallback)
    try:
        node().call(Service.respond, aid, field("response"), field("reason"))
    except NodeError as exc:
        form, status = f"respond-{aid}", _error_status(exc)
        if urllib.parse.urlsplit(back).path == url_for(".agreement", aid=aid):
            return render_agreement(aid, form, exc.message, status)
        if kind == "crew":
            return render_crew(doc_id, form, exc.message, status)
        return _congregation_form_error(doc_id, form, exc)
    return redirect(back.split("#")[0] + f"#a-{aid}", 303)


# -- peers -----------------------------------------------------------------------------------------

@pages.get("/peers")
def peers_page():
    return render_peers()


@pages.post("/peers/sync")
def sync_page():
    address = field("address").strip()
    try:
        if not address:
            raise Invalid("type the address of a member's node, like 192.168.1.20:8471")
        result = sync_now(address)
    except NodeError as exc:
        return render_peers("sync", exc.message, _error_status(exc))
    except (OSError, TimeoutError) as exc:
        return render_peers("sync", f"could not sync with {address}: {exc}", 409)
    return redirect(url_for(".peers_page", received=result.get("received", 0), sent=result.get("sent", 0)), 303)


# -- invites as QR codes -------------------------------------------------------------------------------

def qr_svg(text: str) -> Markup:
    """An inline SVG QR code of `text`, made here (no script, nothing fetched)."""
    import qrcode
    import qrcode.image.svg

    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    svg = image.to_string(encoding="unicode")
    svg = svg.replace("<svg ", f'<svg class="qr" role="img" aria-label="QR code of the invite code {text}" ', 1)
    for attr in ("width", "height"):
        svg = svg.replace(f' {attr}="', f' data-{attr}="', 1)
    return Markup(svg)
