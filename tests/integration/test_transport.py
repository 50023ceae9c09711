"""Integration tests for sync.transport: real HTTPS servers on 127.0.0.1, real clients.

Every network wait here is bounded by a socket timeout or an explicit deadline; nothing sleeps
and hopes. After each hostile input the server must still serve a well-behaved client.
"""

import base64
import http.client
import json
import os
import socket
import ssl
import statistics
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync import tls
from sync.transport import (
    AUTH_CONTEXT,
    Peer,
    SyncClient,
    SyncServer,
    TransportError,
    auth_message,
)
from support import read_until_closed

WAIT = 5.0  # upper bound for anything that should happen "at once"


# -- identities ----------------------------------------------------------------------------


def raw_pub(key):
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def blob_for(key):
    """Stand-in for the node core's device certificate: names the device key it certifies."""
    return b"member-cert:" + raw_pub(key).hex().encode()


def member_of(key):
    return "m-" + raw_pub(key).hex()[:16]


def verify_peer(device, blob):
    if blob != b"member-cert:" + device.hex().encode():
        raise ValueError("not a member's device certificate")
    return "m-" + device.hex()[:16]


def b64(data):
    return base64.b64encode(data).decode()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- server fixture ------------------------------------------------------------------------


class Recorder:
    """Handler: echo, plus a few names that misbehave on purpose."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, peer, name, body):
        with self.lock:
            self.calls.append((peer, name, len(body)))
        if name == "boom":
            raise RuntimeError("handler bug")
        if name == "teapot":
            return 418, b'{"error": "I am a teapot"}'
        if name == "bad-return":
            return "not a tuple"
        return 200, body

    def names(self):
        with self.lock:
            return [n for _, n, _ in self.calls]


@pytest.fixture
def make_server():
    servers = []

    def make(**kw):
        key = kw.pop("key", None) or Ed25519PrivateKey.generate()
        handler = kw.pop("handler", None) or Recorder()
        port = kw.pop("port", 0)
        server = SyncServer("127.0.0.1", port, key, blob_for(key), kw.pop("verify", verify_peer),
                            handler, **kw)
        server.key, server.handler = key, handler
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server):
    return make_server()


def good_client(server, **kw):
    key = Ed25519PrivateKey.generate()
    client = SyncClient(server.address, key, blob_for(key), verify_peer, timeout=WAIT, **kw)
    client.key = key
    return client


def assert_healthy(server):
    """A fresh well-behaved client completes a full round trip, promptly."""
    start = time.monotonic()
    client = good_client(server)
    try:
        assert client.connect() == member_of(server.key)
        assert client.call("echo", b"still here") == b"still here"
    finally:
        client.close()
    assert time.monotonic() - start < WAIT


# -- raw helpers for hand-made (hostile) requests ----------------------------------------------


class Raw:
    """An HTTPS connection on which tests craft requests themselves."""

    def __init__(self, server):
        self.conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=WAIT,
                                                context=tls.client_context())
        self.conn.connect()
        self.der = self.conn.sock.getpeercert(binary_form=True)

    def post(self, path, body=b"", headers=None):
        self.conn.request("POST", path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, data

    def post_json(self, path, obj, headers=None):
        status, data = self.post(path, json.dumps(obj).encode(), headers)
        return status, json.loads(data)

    def hello(self):
        status, answer = self.post_json("/v1/hello", {})
        assert status == 200
        return answer

    def auth_body(self, key, *, nonce=None, device=None, blob=None, message=None):
        if nonce is None:
            nonce = base64.b64decode(self.hello()["nonce"])
        message = message if message is not None else auth_message(self.der, nonce)
        return {
            "nonce": b64(nonce),
            "device": b64(device if device is not None else raw_pub(key)),
            "cert": b64(blob if blob is not None else blob_for(key)),
            "sig": b64(key.sign(message)),
        }

    def login(self, key):
        status, answer = self.post_json("/v1/auth", self.auth_body(key))
        assert status == 200, answer
        return answer["session"]

    def close(self):
        self.conn.close()


def tcp(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    return sock


def tls_sock(server):
    return tls.client_context().wrap_socket(tcp(server))


def parse_response(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


# -- the happy path ------------------------------------------------------------------------------


def test_round_trip(server):
    client = good_client(server)
    assert client.connect() == member_of(server.key)
    assert client.peer_member_id == member_of(server.key)
    assert client.peer_device_key == raw_pub(server.key)
    assert client.call("echo", b"hello there") == b"hello there"
    assert client.call("echo") == b""
    big = os.urandom(1024 * 1024)
    assert client.call("docs/push", big) == big
    peer, name, size = server.handler.calls[0]
    assert isinstance(peer, Peer)
    assert peer.member_id == member_of(client.key)
    assert peer.device_key == raw_pub(client.key)
    assert peer.address.startswith("127.0.0.1:")
    assert (name, size) == ("echo", 11)
    assert server.handler.names() == ["echo", "echo", "docs/push"]
    client.close()


def test_keep_alive_reuses_one_connection(server):
    client = good_client(server)
    client.connect()
    sock = client._conn.sock
    for i in range(20):
        assert client.call("echo", b"%d" % i) == b"%d" % i
    assert client._conn.sock is sock
    client.close()


def test_call_connects_on_demand_and_context_manager(server):
    key = Ed25519PrivateKey.generate()
    client = SyncClient(server.address, key, blob_for(key), verify_peer, timeout=WAIT)
    assert client.call("echo", b"x") == b"x"  # no explicit connect()
    with good_client(server) as other:
        assert other.call("echo", b"y") == b"y"


def test_concurrent_clients(server):
    errors = []

    def work(i):
        try:
            client = good_client(server)
            for j in range(20):
                payload = f"{i}-{j}".encode()
                assert client.call("echo", payload) == payload
            client.close()
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert not errors
    assert len(server.handler.names()) == 160


def test_empty_call_latency(server):
    client = good_client(server)
    client.connect()
    for _ in range(20):
        client.call("echo")
    times = []
    for _ in range(300):
        start = time.perf_counter()
        client.call("echo")
        times.append(time.perf_counter() - start)
    client.close()
    median = statistics.median(times)
    print(f"\nempty call round trip on loopback: median {median * 1e3:.3f} ms, "
          f"p90 {sorted(times)[270] * 1e3:.3f} ms")
    assert median < 0.05


# -- authentication failures ----------------------------------------------------------------------


def test_bad_signature_is_401(server):
    raw = Raw(server)
    key = Ed25519PrivateKey.generate()
    nonce = base64.b64decode(raw.hello()["nonce"])
    body = raw.auth_body(key, nonce=nonce, message=b"something else entirely")
    status, answer = raw.post_json("/v1/auth", body)
    assert status == 401
    assert "signature" in answer["error"]
    raw.close()
    assert_healthy(server)


def test_replayed_nonce_is_401(server):
    raw = Raw(server)
    key = Ed25519PrivateKey.generate()
    body = raw.auth_body(key)
    assert raw.post_json("/v1/auth", body)[0] == 200
    status, answer = raw.post_json("/v1/auth", body)
    assert status == 401
    assert "nonce" in answer["error"]
    raw.close()


def test_made_up_nonce_is_401(server):
    raw = Raw(server)
    key = Ed25519PrivateKey.generate()
    status, answer = raw.post_json("/v1/auth", raw.auth_body(key, nonce=os.urandom(32)))
    assert status == 401 and "nonce" in answer["error"]
    raw.close()


def test_expired_nonce_is_401(make_server):
    clock = FakeClock()
    server = make_server(clock=clock)
    raw = Raw(server)
    key = Ed25519PrivateKey.generate()
    nonce = base64.b64decode(raw.hello()["nonce"])
    clock.now += 61
    status, answer = raw.post_json("/v1/auth", raw.auth_body(key, nonce=nonce))
    assert status == 401 and "expired" in answer["error"]
    raw.close()


def test_refused_device_certificate_is_403(server):
    raw = Raw(server)
    key = Ed25519PrivateKey.generate()
    status, answer = raw.post_json("/v1/auth", raw.auth_body(key, blob=b"forged certificate"))
    assert status == 403
    assert "device certificate refused" in answer["error"]
    assert "not a member" in answer["error"]
    raw.close()
    assert_healthy(server)


def test_claiming_another_device_key_is_401(server):
    raw = Raw(server)
    victim, attacker = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    # The victim's public key and (public) device certificate, but signed by the attacker.
    body = raw.auth_body(attacker, device=raw_pub(victim), blob=blob_for(victim))
    status, answer = raw.post_json("/v1/auth", body)
    assert status == 401 and "signature" in answer["error"]
    raw.close()


def test_signature_for_another_server_is_401(server, make_server):
    # A relay would present its own certificate: a signature bound to that certificate must not
    # open a session on the real server.
    other = make_server()
    raw, raw_other = Raw(server), Raw(other)
    key = Ed25519PrivateKey.generate()
    nonce = base64.b64decode(raw.hello()["nonce"])
    body = raw.auth_body(key, nonce=nonce, message=auth_message(raw_other.der, nonce))
    status, answer = raw.post_json("/v1/auth", body)
    assert status == 401 and "signature" in answer["error"]
    assert auth_message(raw.der, nonce).startswith(AUTH_CONTEXT)
    raw.close()
    raw_other.close()


def test_malformed_auth_is_400(server):
    raw = Raw(server)
    status, data = raw.post("/v1/auth", b"{not json")
    assert status == 400 and "error" in json.loads(data)
    status, answer = raw.post_json("/v1/auth", {"nonce": "!!", "device": 1})
    assert status == 400 and "base64" in answer["error"]
    status, answer = raw.post_json("/v1/auth", [1, 2])
    assert status == 400
    raw.close()
    assert_healthy(server)


def test_unknown_session_is_401(server):
    raw = Raw(server)
    for headers in ({"X-Session": "made-up"}, {}):
        status, data = raw.post("/v1/echo", b"payload", headers)
        assert status == 401
        assert "session" in json.loads(data)["error"]
    assert server.handler.names() == []
    raw.close()


def test_expired_session_is_401_and_client_reauthenticates(make_server):
    clock = FakeClock()
    server = make_server(clock=clock, session_idle=60)
    raw = Raw(server)
    token = raw.login(Ed25519PrivateKey.generate())
    assert raw.post("/v1/echo", b"a", {"X-Session": token}) == (200, b"a")
    client = good_client(server)
    client.connect()
    assert client.call("echo", b"1") == b"1"
    clock.now += 61
    status, data = raw.post("/v1/echo", b"a", {"X-Session": token})
    assert status == 401 and "expired" in json.loads(data)["error"]
    assert client.call("echo", b"2") == b"2"  # silently authenticated again
    raw.close()
    client.close()


def test_client_refuses_server_with_refused_certificate(server):
    key = Ed25519PrivateKey.generate()

    def strict(device, blob):
        raise ValueError("no such member")

    client = SyncClient(server.address, key, blob_for(key), strict, timeout=WAIT)
    with pytest.raises(TransportError, match="device certificate refused: no such member"):
        client.connect()
    assert server.handler.names() == []


def test_client_refuses_server_whose_tls_key_differs_from_claimed_key(server):
    # Simulate a relay: hello claims another node's device key, TLS shows the relay's own.
    other = Ed25519PrivateKey.generate()
    server._state.device_pub = raw_pub(other)
    server._state.cert_blob = blob_for(other)
    client = good_client(server)
    with pytest.raises(TransportError, match="does not match"):
        client.connect()


def test_client_refuses_changed_server_key_on_reconnect(make_server):
    first = make_server()
    client = good_client(first)
    client.connect()
    port = first.port
    first.stop()
    impostor = make_server(port=port)  # same address, different device key
    with pytest.raises(TransportError, match="device key changed"):
        client.call("echo", b"secret")
    assert impostor.handler.names() == []


# -- handler and HTTP errors ---------------------------------------------------------------------


def test_handler_exception_is_500_and_server_survives(server, caplog):
    client = good_client(server)
    with pytest.raises(TransportError) as info:
        client.call("boom", b"x")
    assert info.value.status == 500
    assert "internal error" in info.value.message
    assert "handler bug" in caplog.text  # logged with its traceback
    assert client.call("echo", b"after") == b"after"
    with pytest.raises(TransportError) as info:
        client.call("bad-return")
    assert info.value.status == 500
    assert client.call("echo", b"after") == b"after"


def test_handler_status_is_passed_on(server):
    client = good_client(server)
    with pytest.raises(TransportError) as info:
        client.call("teapot")
    assert info.value.status == 418 and info.value.message == "I am a teapot"
    assert "418" in str(info.value)


def test_http_level_errors_are_json(server):
    raw = Raw(server)
    token = raw.login(Ed25519PrivateKey.generate())
    status, data = raw.post("/elsewhere", b"", {"X-Session": token})
    assert status == 404 and "error" in json.loads(data)
    raw.close()
    raw = Raw(server)
    raw.conn.request("GET", "/v1/hello")
    resp = raw.conn.getresponse()
    assert resp.status == 405 and "error" in json.loads(resp.read())
    raw.close()
    raw = Raw(server)
    raw.conn.putrequest("POST", "/v1/hello", skip_accept_encoding=True)
    raw.conn.endheaders()  # no Content-Length
    resp = raw.conn.getresponse()
    assert resp.status == 411 and "Content-Length" in json.loads(resp.read())["error"]
    raw.close()
    with pytest.raises(ValueError):
        good_client(server).call("auth")


# -- body limits -------------------------------------------------------------------------------


def test_declared_oversized_body_is_413_without_reading(make_server):
    server = make_server(max_body=1024)
    raw = Raw(server)
    token = raw.login(Ed25519PrivateKey.generate())
    sock = raw.conn.sock
    sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-Session: " + token.encode()
                 + b"\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * 100)
    status, body = parse_response(read_until_closed(sock, WAIT))
    assert status == 413
    assert "exceeds the limit of 1024" in json.loads(body)["error"]
    assert server.handler.names() == []
    assert_healthy(server)


def test_sent_oversized_body_gets_413_reply(make_server):
    server = make_server(max_body=64 * 1024)
    raw = Raw(server)
    token = raw.login(Ed25519PrivateKey.generate())
    status, data = raw.post("/v1/echo", os.urandom(2 * 1024 * 1024), {"X-Session": token})
    assert status == 413 and "exceeds" in json.loads(data)["error"]
    raw.close()
    assert server.handler.names() == []
    assert_healthy(server)


def test_client_checks_peer_limit_before_sending(make_server):
    server = make_server(max_body=1000)
    client = good_client(server)
    client.connect()
    with pytest.raises(TransportError) as info:
        client.call("echo", b"x" * 1001)
    assert info.value.status == 413
    assert client.call("echo", b"x" * 1000) == b"x" * 1000


def test_anonymous_hello_body_is_capped(server):
    raw = Raw(server)
    status, data = raw.post("/v1/hello", b"x" * (65 * 1024))
    assert status == 413
    raw.close()


def test_client_caps_response_size(server):
    client = good_client(server, max_response=100)
    assert client.call("echo", b"x" * 100) == b"x" * 100
    with pytest.raises(TransportError, match="exceeds the limit"):
        client.call("echo", b"x" * 101)
    assert client.call("echo", b"ok") == b"ok"  # reconnects after dropping the connection


# -- hostile bytes on the wire ----------------------------------------------------------------------


def test_garbage_bytes(server):
    sock = tcp(server)
    sock.sendall(os.urandom(4096))
    read_until_closed(sock, WAIT)
    sock.close()
    assert_healthy(server)


def test_plain_http_to_tls_port(server):
    sock = tcp(server)
    sock.sendall(b"POST /v1/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert not read_until_closed(sock, WAIT).startswith(b"HTTP/1.1 200")
    sock.close()
    assert_healthy(server)


def test_tls_then_garbage(server):
    sock = tls_sock(server)
    sock.sendall(b"\x00\xff\xfe this is not http at all\r\n\r\n")
    status, body = parse_response(read_until_closed(sock, WAIT))
    assert status == 400 and "error" in json.loads(body)
    sock.close()
    assert_healthy(server)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda line, rest: b"POST /v1/" + line + b" HTTP/1.1\r\n" + rest,
              st.binary(max_size=40), st.binary(max_size=200)),
))
def test_fuzzed_requests_inside_tls(server, junk):
    sock = tls_sock(server)
    try:
        sock.sendall(junk)
        socket.socket.shutdown(sock, socket.SHUT_WR)
        reply = read_until_closed(sock, WAIT)
    finally:
        sock.close()
    if reply:
        status, body = parse_response(reply)
        assert status < 500  # anonymous junk never reaches the handler or crashes anything
        if status != 200:  # (junk can spell a valid hello by chance)
            assert "error" in json.loads(body)
    assert server.handler.names() == []


def test_server_healthy_after_fuzzing(server):
    for _ in range(20):
        sock = tls_sock(server)
        sock.sendall(os.urandom(64) + b"\r\n\r\n")
        read_until_closed(sock, WAIT)
        sock.close()
    assert_healthy(server)


def test_huge_header_is_refused(server):
    sock = tls_sock(server)
    sock.sendall(b"POST /v1/hello HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 60000 + b"\r\n\r\n")
    status, _ = parse_response(read_until_closed(sock, WAIT))
    assert status == 431
    assert_healthy(server)


def test_truncated_body(server):
    raw = Raw(server)
    token = raw.login(Ed25519PrivateKey.generate())
    sock = raw.conn.sock
    sock.sendall(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\nX-Session: " + token.encode()
                 + b"\r\nContent-Length: 1000\r\n\r\n" + b"only a little")
    socket.socket.shutdown(sock, socket.SHUT_WR)  # the peer gives up mid-body
    raw_reply = read_until_closed(sock, WAIT)
    if raw_reply:
        assert parse_response(raw_reply)[0] == 400
    raw.close()
    assert server.handler.names() == []
    assert_healthy(server)


def test_silent_and_slow_clients_do_not_stall_others(make_server):
    server = make_server(io_timeout=0.5)
    silent = tcp(server)  # connects, never starts TLS
    mute = tls_sock(server)  # completes TLS, never sends a request
    partial = tls_sock(server)
    partial.sendall(b"POST /v1/echo HTTP/1.1\r\nX-Sess")  # stops mid-header
    assert_healthy(server)  # served at once while all three hang
    for sock in (silent, mute, partial):
        read_until_closed(sock, 3.0)  # each dropped after its timeout
        sock.close()
    assert_healthy(server)


def test_trickling_client_is_cut_off_by_deadline(make_server):
    # One byte every 0.1 s never trips a 0.5 s socket timeout; the header deadline must.
    server = make_server(io_timeout=0.5)
    sock = tls_sock(server)
    request = b"POST /v1/hello HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 200
    start = time.monotonic()
    closed = False
    for i in range(len(request)):
        assert time.monotonic() - start < 3.0, "trickling client still connected"
        try:
            sock.sendall(request[i : i + 1])
            sock.settimeout(0.1)
            sock.recv(4096)  # returns (EOF) or raises only once the server ends the connection
            closed = True
            break
        except socket.timeout:
            continue  # still connected: send the next byte
        except (OSError, ssl.SSLError):
            closed = True
            break
    assert closed
    assert time.monotonic() - start < 3.0
    sock.close()
    assert_healthy(server)


def test_many_idle_connections(server):
    # More idle sockets from one address than the per-address cap: the oldest are dropped to
    # make room, and a good client still gets through at once.
    idle = [tcp(server) for _ in range(150)]
    handshaken = [tls_sock(server) for _ in range(10)]
    assert_healthy(server)
    for sock in idle + handshaken:
        sock.close()
    assert_healthy(server)


def test_stop_is_prompt_with_open_connections(make_server):
    server = make_server()
    idle = [tcp(server) for _ in range(5)]
    client = good_client(server)
    client.connect()
    port = server.port
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 2.0
    with pytest.raises(TransportError):
        client.call("echo", b"x")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    for sock in idle:
        sock.close()
