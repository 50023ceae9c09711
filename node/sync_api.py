"""The API routes that need peers (join, sync, peers): they call the SyncEngine."""
from flask import Blueprint, current_app, jsonify

from .api import body, field

sync_api = Blueprint("sync_api", __name__, url_prefix="/api")


def engine():
    """The SyncEngine of this app."""
    return current_app.config["SYNC"]


@sync_api.post("/join")
def join():
    data = body()
    return engine().join(field(data, "code"), data.get("address")), 202


@sync_api.get("/joins")
def pending_joins():
    return jsonify(engine().pending_joins())


@sync_api.delete("/joins/<key>")
def forget_join(key):
    engine().forget_join(key)
    return {"forgotten": key}


@sync_api.post("/sync")
def sync_now():
    result = engine().sync_with(field(body(), "address"))
    return {"received": result["received"], "sent": result["sent"]}


@sync_api.get("/peers")
def peers():
    return jsonify(engine().peers())
