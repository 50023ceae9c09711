"""Guarding the local page and API: token or session cookie, Host check, cross-site refusal.

Like Jupyter, the page URL carries the token once; it becomes an HttpOnly, SameSite=Strict
cookie and the URL is cleaned. Like datasette, unsafe requests from another site are refused
whatever credentials they carry, using Sec-Fetch-Site and Origin.
"""
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlencode

from flask import Request, abort, current_app, redirect, request

COOKIE = "crewnode_session"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def load_or_create_token(home: Path) -> str:
    """The node's API token, kept in `home/token` (mode 0600)."""
    path = Path(home) / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of text; any text (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def session_value(token: str) -> str:
    """The cookie value standing for the token (the token itself never sits in a cookie)."""
    return hmac.new(token.encode(), b"crewnode-session-v1", hashlib.sha256).hexdigest()


def is_authorized(req: Request) -> bool:
    """True when the request carries the token or the session cookie."""
    token = current_app.config["TOKEN"]
    header = req.headers.get("Authorization", "")
    if header.startswith("Bearer ") and same_secret(header[7:].strip(), token):
        return True
    cookie = req.cookies.get(COOKIE, "")
    return bool(cookie) and same_secret(cookie, session_value(token))


def cross_site_reason(req: Request) -> str | None:
    """Why an unsafe request looks cross-site, or None when it is fine."""
    if req.method in SAFE_METHODS:
        return None
    site = req.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return "cross-site requests are refused"
    origin = req.headers.get("Origin")
    if origin is not None and origin not in (f"http://{req.host}",):
        return "requests from another origin are refused"
    return None


def token_login():
    """`?token=` on a page URL: set the session cookie and redirect to the clean URL."""
    given = request.args.get("token")
    if given is None:
        return None
    if not same_secret(given, current_app.config["TOKEN"]):
        abort(401, "that token is not this node's token; run `crewnode token` to see it")
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
    target = request.path + ("?" + urlencode(args) if args else "")
    response = redirect(target, code=303)
    response.set_cookie(COOKIE, session_value(current_app.config["TOKEN"]), httponly=True,
                        samesite="Strict", path="/")
    return response
