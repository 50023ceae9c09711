"""Routes of issue 7 (carrying and keeping): the local API and the small /devices page.

API (token or page session, like every /api route):

- POST /api/import: body = a sealed bundle's bytes; the node opens and ingests it
  (`crewnode bundle import` hands bundles to a serving node this way).
- GET /api/bundles?for=MEMBER_ID: a sealed bundle for that member, as a download.
- GET /api/devices, POST /api/devices/pair, POST /api/devices/{id}/retire.
- GET /api/congregations/{cid}/export (JSON), GET /api/crews/{crew_id}/calendar.ics.

Page: GET /devices (web/templates/devices.html), with plain forms posting to /devices/...;
no script, a CSRF token in every form on top of the app's cross-site checks.
"""
import hashlib
import hmac
import ipaddress
import re

from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for

from . import carry, views
from .docstate import names_for
from .api import body
from .errors import Invalid, NodeError

carry_api = Blueprint("carry_api", __name__, url_prefix="/api")
carry_pages = Blueprint("carry_pages", __name__)


def node():
    return current_app.config["NODE"]


def _import(data: bytes) -> dict:
    def work(service):
        result = carry.import_bundle(service.ledger, service.identity, data)
        service.changed(result.taken)
        return result.as_dict()
    return node().call(work)


def _bundle_response(member: str) -> Response:
    data = node().call(lambda s: carry.export_bundle(s.store, s.states, s.identity, member))
    return Response(data, mimetype="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="crewnode-bundle-{member[:8]}.crewbundle"'})


def _allow_large_body() -> None:
    request.max_content_length = carry.MAX_FILE


def pair_address(requested=None) -> str:
    """host:port a second device on the LAN can reach my sync listener at."""
    if requested:
        from sync.engine import check_address
        return check_address(requested)
    engine = current_app.config.get("SYNC")
    if engine is None:
        raise Invalid("this node runs no sync listener, so no device can pair with it")
    host, _, port = engine.server.address.rpartition(":")
    if engine.listens_everywhere:
        host = _lan_address() or "127.0.0.1"
    return f"{host}:{port}"


def _lan_address() -> str | None:
    """This machine's first private IPv4 address, if any."""
    try:
        import ifaddr
    except ImportError:
        return None
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                addr = ipaddress.ip_address(ip.ip)
                if addr.is_private and not addr.is_loopback and not addr.is_link_local:
                    return ip.ip
    return None


# -- API ------------------------------------------------------------------------------------------

@carry_api.post("/import")
def import_bundle():
    _allow_large_body()
    data = request.get_data(cache=False)
    if not data:
        raise Invalid("send the bundle file's bytes as the request body")
    return _import(data)


@carry_api.get("/bundles")
def export_bundle():
    member = request.args.get("for")
    if not member:
        raise Invalid("say who the bundle is for: ?for=MEMBER_ID")
    return _bundle_response(member)


@carry_api.get("/devices")
def list_devices():
    return jsonify(node().call(carry.devices_view))


@carry_api.post("/devices/pair")
def pair():
    data = body()
    address = pair_address(data.get("address"))
    return node().call(carry.new_pairing, address, data.get("label", "")), 201


@carry_api.post("/devices/<device>/retire")
def retire(device):
    return node().call(carry.retire_device, device)


@carry_api.get("/congregations/<cid>/export")
def congregation_export(cid):
    data = node().call(carry.congregation_export, cid)
    response = jsonify(data)
    if request.args.get("download"):
        name = re.sub(r"[^A-Za-z0-9]+", "-", data["congregation"]["name"]).strip("-") or "congregation"
        response.headers["Content-Disposition"] = f'attachment; filename="{name}.json"'
    return response


@carry_api.get("/crews/<crew_id>/calendar.ics")
def crew_calendar(crew_id):
    data = node().call(carry.crew_calendar, crew_id)
    return Response(data, mimetype="text/calendar", headers={
        "Content-Disposition": f'inline; filename="crew-{crew_id[:8]}.ics"'})


# -- the /devices page ----------------------------------------------------------------------------

def _csrf() -> str:
    return hmac.new(current_app.config["TOKEN"].encode(), b"crewnode-devices-form-v1", hashlib.sha256).hexdigest()


@carry_pages.before_request
def _check_form():
    if request.method == "POST":
        if request.path.startswith("/devices/import"):
            _allow_large_body()
        if not hmac.compare_digest(request.form.get("csrf", ""), _csrf()):
            return _page(error="This form came from an old or foreign page: reload the page and try again.",
                         status=403)
    return None


def _page_data(service) -> dict:
    members, exports = {}, []
    for state in service.states.values():
        if service.me not in state.members:
            continue
        names = names_for(service.states, state)
        exports.append({"type": state.type, "id": state.id, "name": state.meta_value("name")})
        if state.type == "congregation":
            for m in state.active_members():
                if m != service.me:
                    members[m] = names.name_of(m)
    return {"devices": carry.devices_view(service), "members": sorted(members.items(), key=lambda x: x[1].lower()),
            "exports": sorted(exports, key=lambda e: (e["type"], e["name"].lower())), "me": service.me}


def _page(status: int = 200, **extra):
    data = node().call(_page_data)
    html = render_template("devices.html", csrf=_csrf(), iso=views.iso, **data, **extra)
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'"
    return response


@carry_pages.get("/devices")
def devices_page():
    done = {"retired": "The device is retired: its later entries are refused everywhere."}.get(request.args.get("done"))
    return _page(notice=done)


@carry_pages.post("/devices/pair")
def devices_pair():
    try:
        paired = node().call(carry.new_pairing, pair_address(request.form.get("address") or None),
                             request.form.get("label", ""))
    except NodeError as exc:
        return _page(error=exc.message, status=exc.status)
    return _page(pair=paired)


@carry_pages.post("/devices/<device>/retire")
def devices_retire(device):
    try:
        # (the browser asks for the box first; this is for when it did not)
        if request.form.get("confirm") != "yes":
            raise Invalid("tick “I want to retire it, for good” to confirm, then press Retire again")
        node().call(carry.retire_device, device)
    except NodeError as exc:
        return _page(error=exc.message, status=exc.status)
    return redirect(url_for("carry_pages.devices_page", done="retired"), code=303)


@carry_pages.post("/devices/bundle")
def devices_bundle():
    try:
        return _bundle_response(request.form.get("member", ""))
    except NodeError as exc:
        return _page(error=exc.message, status=exc.status)


@carry_pages.post("/devices/import")
def devices_import():
    upload = request.files.get("bundle")
    if upload is None or not upload.filename:
        return _page(error="Choose a bundle file first.", status=400)
    try:
        result = _import(upload.read())
    except NodeError as exc:
        return _page(error=exc.message, status=exc.status)
    return _page(imported=result)


@carry_pages.post("/devices/backup")
def devices_backup():
    passphrase = request.form.get("passphrase", "")
    if passphrase != request.form.get("again", ""):
        return _page(error="The two passphrases differ: type the same one twice.", status=400)
    try:
        data = node().call(lambda s: carry.make_backup(s.store, s.identity, passphrase))
    except NodeError as exc:
        return _page(error=exc.message, status=exc.status)
    return Response(data, mimetype="application/octet-stream", headers={
        "Content-Disposition": 'attachment; filename="crewnode-backup.crewbackup"'})

