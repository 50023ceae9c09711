"""The local page and API guard themselves: token or session cookie, Host, cross-site, loopback.

One real `crewnode serve` process serves the whole module; requests go out with http.client
so every header (Host, Origin, Cookie) is exactly what the test says.
"""
import http.client
import json
import stat
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from conftest import NodeFactory  # noqa: E402


@pytest.fixture(scope="module")
def ada(tmp_path_factory):
    factory = NodeFactory(tmp_path_factory.mktemp("security"))
    try:
        yield factory.start(name="Ada")
    finally:
        factory.stop_all()


def call(node, method, path, body=None, headers=None, token=None):
    """(status, headers, parsed body) of one request; headers are sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.putrequest(method, path, skip_host="Host" in hdrs, skip_accept_encoding=True)
        for key, value in hdrs.items():
            conn.putheader(key, value)
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return resp.status, resp.headers, parsed
    finally:
        conn.close()


def congregation_names(node) -> list:
    status, _, answer = call(node, "GET", "/api/congregations", token=node.token)
    assert status == 200
    return sorted(c["name"] for c in answer)


PROTECTED = [("GET", "/api/me", None), ("PATCH", "/api/me", {"name": "Mallory"}),
             ("GET", "/api/congregations", None), ("POST", "/api/congregations", {"name": "Evil"}),
             ("GET", "/api/congregations/x", None), ("GET", "/api/crews/x", None),
             ("GET", "/api/agreements/x", None), ("POST", "/api/agreements/x/responses", {"response": "consent"}),
             ("PATCH", "/api/commitments/x", {"status": "done"}), ("GET", "/api/congregations/x/history", None),
             ("GET", "/api/no-such-route", None)]


@pytest.mark.parametrize("method,path,body", PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_api_needs_the_token(ada, method, path, body):
    before = congregation_names(ada)
    for token in (None, "", "wrong", ada.token + "x", ada.token[:-1], "é" * 10, "\u2603 snow"):
        hdrs = {} if token is None else {"Authorization": f"Bearer {token}".encode("utf-8").decode("latin-1")}
        status, headers, answer = call(ada, method, path, body, hdrs)
        assert status == 401, (token, status, answer)
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]
        assert headers.get_content_type() == "application/json"
    for scheme in (f"Basic {ada.token}", ada.token, f"bearer{ada.token}"):
        status, _, _ = call(ada, method, path, body, {"Authorization": scheme})
        assert status == 401
    assert congregation_names(ada) == before


def test_health_needs_no_token(ada):
    status, _, answer = call(ada, "GET", "/api/health")
    assert (status, answer) == (200, {"ok": True})


def test_right_token_works(ada):
    status, _, answer = call(ada, "GET", "/api/me", token=ada.token)
    assert status == 200 and answer["name"] == "Ada"


def test_page_without_token_is_refused(ada):
    status, _, answer = call(ada, "GET", "/")
    assert status == 401
    assert ada.token not in str(answer)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example",
                                  "localhost.evil.example:{port}", "192.0.2.1:{port}"])
def test_foreign_host_is_refused_even_with_the_token(ada, host):
    host = host.format(port=ada.port)
    before = congregation_names(ada)
    for method, path, body in [("GET", "/api/me", None), ("GET", "/", None),
                               ("POST", "/api/congregations", {"name": "Rebound"}), ("GET", "/api/health", None)]:
        status, _, answer = call(ada, method, path, body, {"Host": host}, token=ada.token)
        assert 400 <= status < 500, (method, path, status)
        if path.startswith("/api/"):
            assert "error" in answer
            assert "Ada" not in json.dumps(answer)
    assert congregation_names(ada) == before


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}"])
def test_own_hosts_are_accepted(ada, host):
    status, _, answer = call(ada, "GET", "/api/me", headers={"Host": host.format(port=ada.port)},
                             token=ada.token)
    assert status == 200 and answer["name"] == "Ada"


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:1"},
    {"Origin": "https://127.0.0.1:{port}"}, {"Origin": "http://127.0.0.1:{port}.evil.example"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1:{port}"},
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_cross_site_unsafe_requests_are_refused_even_with_the_token(ada, headers):
    headers = {k: v.format(port=ada.port) for k, v in headers.items()}
    before = congregation_names(ada)
    status, _, answer = call(ada, "POST", "/api/congregations", {"name": "Forged"}, headers, token=ada.token)
    assert status == 403 and "error" in answer
    status, _, answer = call(ada, "PATCH", "/api/me", {"name": "Forged"}, headers, token=ada.token)
    assert status == 403
    assert congregation_names(ada) == before
    assert call(ada, "GET", "/api/me", token=ada.token)[2]["name"] == "Ada"


@pytest.mark.parametrize("headers", [{}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                                     {"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}])
def test_same_origin_unsafe_requests_are_accepted(ada, headers):
    headers = {k: v.format(port=ada.port) for k, v in headers.items()}
    status, _, answer = call(ada, "POST", "/api/congregations", {"name": f"Ours {len(headers)}"}, headers,
                             token=ada.token)
    assert status == 201, answer


def _cookie_of(headers) -> tuple[str, str]:
    cookies = headers.get_all("Set-Cookie") or []
    assert len(cookies) == 1, cookies
    value = cookies[0]
    name_value = value.split(";", 1)[0]
    return name_value, value


def test_token_in_url_sets_a_strict_httponly_cookie_and_redirects(ada):
    status, headers, _ = call(ada, "GET", f"/?token={ada.token}")
    assert status in (302, 303)
    assert headers["Location"] in ("/", f"http://127.0.0.1:{ada.port}/")
    assert ada.token not in headers["Location"]
    name_value, full = _cookie_of(headers)
    attributes = [part.strip().lower() for part in full.split(";")[1:]]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert ada.token not in full                        # the cookie stands for the token, it is not the token
    # the cookie alone authorises API calls and the page
    status, _, answer = call(ada, "GET", "/api/me", headers={"Cookie": name_value})
    assert status == 200 and answer["name"] == "Ada"
    status, _, _ = call(ada, "GET", "/", headers={"Cookie": name_value})
    assert status == 200
    status, _, answer = call(ada, "POST", "/api/congregations", {"name": "By cookie"},
                             {"Cookie": name_value, "Origin": f"http://127.0.0.1:{ada.port}",
                              "Sec-Fetch-Site": "same-origin"})
    assert status == 201, answer
    # but not from another site (CSRF)
    before = congregation_names(ada)
    status, _, _ = call(ada, "POST", "/api/congregations", {"name": "CSRF"},
                        {"Cookie": name_value, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    assert congregation_names(ada) == before
    # a made-up cookie does nothing
    cookie_name = name_value.split("=", 1)[0]
    for forged in (f"{cookie_name}={ada.token}", f"{cookie_name}=" + "0" * 64, f"{cookie_name}=é"):
        status, _, _ = call(ada, "GET", "/api/me", headers={"Cookie": forged.encode().decode("latin-1")})
        assert status == 401


def test_token_login_keeps_other_query_arguments_intact(ada):
    status, headers, _ = call(ada, "GET", f"/?view=crews&q=a%26b%3Dc&token={ada.token}")
    assert status in (302, 303)
    location = headers["Location"]
    assert ada.token not in location
    from urllib.parse import parse_qs, urlsplit
    assert parse_qs(urlsplit(location).query) == {"view": ["crews"], "q": ["a&b=c"]}


def test_token_login_never_redirects_off_the_node(ada):
    from urllib.parse import urlsplit
    for path in ("//evil.example/", "///evil.example/", "/\\evil.example/"):
        status, headers, _ = call(ada, "GET", f"{path}?token={ada.token}")
        if status in (301, 302, 303, 307, 308):
            location = headers["Location"]
            assert urlsplit(location).netloc in ("", f"127.0.0.1:{ada.port}"), location
            assert not location.startswith(("//", "/\\")), location


def test_wrong_token_in_url_sets_no_cookie(ada):
    for bad in ("wrong", "%C3%A9t%C3%A9"):
        status, headers, _ = call(ada, "GET", f"/?token={bad}")
        assert status == 401
        assert not headers.get_all("Set-Cookie")


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc shows them) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":        # 0A: LISTEN
                found.add(address)
    return found


def test_page_and_api_listen_on_loopback_only(ada):
    addresses = _listening(ada.port)
    assert addresses, f"nothing listens on port {ada.port}?"
    assert addresses == {"0100007F"}, addresses       # 127.0.0.1, and not 0.0.0.0 or ::


def test_secrets_are_private_files(ada):
    home = ada.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    folder = home / "identity"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    secrets = [folder / "person.key", folder / "device.key", folder / "device.cert", home / "token"]
    for path in secrets:
        assert path.exists(), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert (folder / "person.key").stat().st_size == 32
