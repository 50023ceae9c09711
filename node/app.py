"""The Flask app factory: the local page and the JSON API, guarded by `security`."""
import threading

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from web import WEB_DIR

from . import security
from .api import api
from .errors import NodeError

MAX_REQUEST = 1024 * 1024


def create_app(node_thread, token: str, sync_engine=None) -> Flask:
    """An app serving `node_thread`'s Service (and peers through `sync_engine`); bind it to 127.0.0.1 only."""
    app = Flask(__name__, template_folder=str(WEB_DIR / "templates"), static_folder=str(WEB_DIR / "static"))
    app.config.update(
        NODE=node_thread,
        SYNC=sync_engine,
        TOKEN=token,
        MAX_CONTENT_LENGTH=MAX_REQUEST,
        TRUSTED_HOSTS=["127.0.0.1", "localhost"],   # a DNS-rebinding page arrives with its own Host
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False
    app.register_blueprint(api)
    if sync_engine is not None:
        from .sync_api import sync_api
        app.register_blueprint(sync_api)
    from .pages import pages
    app.register_blueprint(pages)
    from .carry_api import carry_api, carry_pages       # issue 7: bundles, devices, exports
    app.register_blueprint(carry_api)
    app.register_blueprint(carry_pages)

    in_flight = InFlight()
    app.config["IN_FLIGHT"] = in_flight

    @app.before_request
    def count_in():
        if request.path != "/api/events":          # a live page's stream never ends by itself
            in_flight.enter()

    @app.teardown_request
    def count_out(exc=None):
        if request.path != "/api/events":
            in_flight.leave()

    @app.before_request
    def guard():
        reason = security.cross_site_reason(request)
        if reason:
            return _error(403, reason)
        if request.path == "/api/health" or request.path.startswith("/static/"):
            return None
        login = security.token_login()
        if login is not None:
            return login
        if not security.is_authorized(request):
            if request.path.startswith("/api/"):
                return _error(401, "this needs the node's token: send 'Authorization: Bearer TOKEN'"
                                   " (run `crewnode token` to see it)")
            return app.response_class(
                "<!doctype html><title>crewnode</title><p>Open the page with the link that "
                "<code>crewnode serve</code> printed (it carries the token), or run "
                "<code>crewnode token</code>.</p>", status=401, mimetype="text/html")
        return None

    @app.errorhandler(NodeError)
    def node_error(exc: NodeError):
        return _error(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            return _error(413, f"the request is larger than {MAX_REQUEST // 1024} KiB")
        if request.path.startswith("/api/") or exc.code == 400:
            return _error(exc.code, exc.description or exc.name)
        return exc

    return app


class InFlight:
    """How many requests are being answered, so a stop can let them finish first."""

    def __init__(self):
        self._count = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self._count += 1

    def leave(self) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is being answered; False if `timeout` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count <= 0, timeout)


def _error(status: int, message: str):
    response = jsonify({"error": message})
    response.status_code = status
    return response
