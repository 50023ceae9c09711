"""HTTPS transport between crewnode nodes, independent of what is synced.

A node runs a ``SyncServer``; peers reach it with a ``SyncClient``. The sync protocol plugs in as
a ``handler(peer, name, body) -> (status, body)`` and never sees TLS, sessions or HTTP.

Authentication (both directions, at the application layer over TLS 1.3):

* The server's TLS certificate is made from its Ed25519 device key (``sync.tls``). The client
  accepts any certificate, then checks that the key in it equals the ``device`` key the server
  announces in ``/v1/hello`` and that ``verify_peer`` accepts the server's device certificate
  blob. TLS 1.3 already proved the server holds that key.
* The client proves its device key by signing ``AUTH_CONTEXT + sha256(server cert DER) + nonce``
  with a fresh single-use nonce from ``/v1/hello``. Binding the signature to *this* server's
  certificate means a relay (who must present its own certificate) cannot reuse it elsewhere.
  The server then asks ``verify_peer`` for the member id and hands out a session token, sent as
  ``X-Session`` on every later request.

Robustness: every connection gets its own thread; the TLS handshake runs there (never on the
accept loop), and every read or write has both a per-operation timeout and an overall deadline, so
slow or silent clients cannot hold the server. Connections are capped in total and per IP; when
a cap is hit the oldest connection that is not running a handler is dropped to make room, so a
flood of idle sockets cannot lock out honest peers.
"""

from __future__ import annotations

import base64
import binascii
import errno
import http.client
import http.server
import io
import json
import logging
import re
import secrets
import select
import selectors
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sync import tls

__all__ = [
    "AUTH_CONTEXT",
    "Peer",
    "SyncClient",
    "SyncServer",
    "TransportError",
    "auth_message",
]

logger = logging.getLogger(__name__)

#: Domain separation for the client's authentication signature.
AUTH_CONTEXT = b"crewnode-auth-v1"

NONCE_BYTES = 32
NONCE_TTL = 60.0  # seconds a hello nonce stays usable
MAX_NONCES = 4096  # outstanding nonces kept; beyond that the oldest are forgotten
MAX_SESSIONS = 4096  # live sessions kept; beyond that the least recently used is dropped
AUTH_MAX_BODY = 64 * 1024  # hello/auth bodies are tiny; don't let anonymous peers send more
MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 32 * 1024
# Minimum transfer rate granted on top of the fixed deadline for bodies: a 16 MiB body gets
# io_timeout + 256 s, which a slow Wi-Fi link manages, while a trickling attacker is cut off.
MIN_RATE = 64 * 1024
LINGER_SECONDS = 2.0  # after refusing an unread body, drain it this long so the reply arrives
SESSION_SCHEME = "crewnode-session"  # WWW-Authenticate value on "session unknown" 401s
# A client reuses a keep-alive connection only if it was used this recently; the server keeps
# idle connections for keepalive_timeout (default 15 s), so the two never race.
CLIENT_REUSE_IDLE = 5.0

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-/]{0,127}")
_LENGTH_RE = re.compile(r"[0-9]{1,18}")
_RESERVED = frozenset({"hello", "auth"})

VerifyPeer = Callable[[bytes, bytes], str]


class TransportError(Exception):
    """A request to a peer failed.

    ``status`` is the HTTP status the peer answered with, or ``None`` when there was no usable
    answer (connection refused or dropped, TLS failure, peer failed authentication).
    ``message`` says what went wrong in words.
    """

    def __init__(self, status: int | None, message: str):
        self.status = status
        self.message = message
        super().__init__(f"HTTP {status}: {message}" if status is not None else message)


def failure_words(e: BaseException) -> str:
    """What a failed request to a peer most likely means, in words a member can act on."""
    if isinstance(e, ConnectionRefusedError):
        return "nothing answers at that port: is the node running, and is this its sync port?"
    if isinstance(e, socket.gaierror):
        return "no computer by that name is known here: check the address"
    if isinstance(e, TimeoutError):
        return "no answer in time: is that computer on this network and awake?"
    if isinstance(e, OSError) and e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "that address cannot be reached from this network"
    if isinstance(e, ssl.SSLError) and e.reason == "WRONG_VERSION_NUMBER":
        # A plain-HTTP server at the port, most often the node's page port given for its sync port.
        return ("something answers there, but not a crewnode sync port: give the sync port, "
                "which the node prints as 'sync' when it starts (not its page port)")
    return f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class Peer:
    """An authenticated peer, as the server's handler sees it."""

    member_id: str  #: what ``verify_peer`` returned for the peer's device certificate
    device_key: bytes  #: the peer's raw 32-byte Ed25519 device public key
    address: str  #: "host:port" the current request came from


def auth_message(server_cert_der: bytes, nonce: bytes) -> bytes:
    """Return the bytes a client signs to authenticate to the server with this certificate."""
    return AUTH_CONTEXT + tls.fingerprint(server_cert_der) + nonce


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"field {field!r} is not valid base64") from None


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


# socket.socket.shutdown/recv are the plain C socket methods. Calling them on an SSLSocket acts on
# the file descriptor underneath, without touching the TLS state that another thread may be
# using; that is what we want to wake a blocked thread or to drain bytes we are discarding.
def _raw_shutdown(sock: socket.socket, how: int) -> None:
    try:
        socket.socket.shutdown(sock, how)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


class _DeadlineIO(io.RawIOBase):
    """Socket reads and writes bounded by a per-operation timeout *and* an overall deadline.

    A socket timeout alone restarts on every byte, so a client trickling one byte every few
    seconds could hold a connection forever; the deadline caps the whole phase.
    """

    def __init__(self, sock: socket.socket, op_timeout: float):
        super().__init__()
        self._sock = sock
        self._op_timeout = op_timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def _arm(self) -> None:
        timeout = self._op_timeout
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline passed")
            timeout = min(timeout, remaining)
        self._sock.settimeout(timeout)

    def readinto(self, buffer) -> int:
        self._arm()
        return self._sock.recv_into(buffer)

    def write(self, data) -> int:
        # Chunked so that each TLS write is one bounded operation (Python's SSL write keeps
        # going until the whole buffer is out, under a single timeout).
        with memoryview(data) as view:
            total = 0
            while total < len(view):
                self._arm()
                total += self._sock.send(view[total : total + 65536])
        return total


class _HeaderBudget:
    """Wraps the request reader while headers are parsed, capping their total size."""

    def __init__(self, rfile, budget: int):
        self._rfile = rfile
        self._left = budget

    def readline(self, limit: int = -1) -> bytes:
        cap = self._left + 1 if limit < 0 else min(limit, self._left + 1)
        line = self._rfile.readline(cap)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("header section")
        return line


class _Conn:
    """One accepted connection, tracked for caps, eviction and shutdown."""

    __slots__ = ("sock", "ip", "state", "since", "lock", "closed", "evicted")

    def __init__(self, sock: socket.socket, ip: str):
        self.sock = sock
        self.ip = ip
        self.state = "handshake"  # handshake | idle | request | busy
        self.since = time.monotonic()
        self.lock = threading.Lock()
        self.closed = False
        self.evicted = False

    def set_state(self, state: str) -> None:
        self.state = state
        self.since = time.monotonic()

    def kill(self) -> None:
        """Wake and end the connection's thread (from another thread)."""
        self.evicted = True
        with self.lock:
            if not self.closed:
                _raw_shutdown(self.sock, socket.SHUT_RDWR)

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                try:
                    self.sock.close()
                except OSError:
                    pass


@dataclass
class _Session:
    member_id: str
    device_key: bytes
    last_used: float


class _ServerState:
    """Everything the connection threads share: keys, nonces, sessions, connections."""

    def __init__(self, *, ssl_context, cert_der, device_pub, cert_blob, verify_peer, handler,
                 max_body, io_timeout, keepalive_timeout, session_idle, max_connections,
                 max_connections_per_ip, clock):
        self.ssl_context = ssl_context
        self.fingerprint = tls.fingerprint(cert_der)
        self.device_pub = device_pub
        self.cert_blob = cert_blob
        self.verify_peer = verify_peer
        self.handler = handler
        self.max_body = max_body
        self.io_timeout = io_timeout
        self.keepalive_timeout = keepalive_timeout
        self.session_idle = session_idle
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.clock = clock
        self._nonces: OrderedDict[bytes, float] = OrderedDict()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._lock = threading.Lock()
        self.conns: set[_Conn] = set()
        self.conns_lock = threading.Lock()

    # -- nonces ---------------------------------------------------------------------------

    def new_nonce(self) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        now = self.clock()
        with self._lock:
            # Insertion order is expiry order, so expired nonces sit at the front.
            while self._nonces and next(iter(self._nonces.values())) < now:
                self._nonces.popitem(last=False)
            while len(self._nonces) >= MAX_NONCES:
                self._nonces.popitem(last=False)
            self._nonces[nonce] = now + NONCE_TTL
        return nonce

    def take_nonce(self, nonce: bytes) -> bool:
        """Consume ``nonce``; True only if it was issued, unused and has not expired."""
        with self._lock:
            expires = self._nonces.pop(nonce, None)
        return expires is not None and self.clock() <= expires

    # -- sessions -------------------------------------------------------------------------

    def new_session(self, member_id: str, device_key: bytes) -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            # Least recently used first: drop the expired ones, then make room.
            while self._sessions:
                oldest = next(iter(self._sessions.values()))
                if now - oldest.last_used <= self.session_idle:
                    break
                self._sessions.popitem(last=False)
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.popitem(last=False)
            self._sessions[token] = _Session(member_id, device_key, now)
        return token

    def session_for(self, token: str | None) -> _Session | None:
        if not token or len(token) > 128:
            return None
        now = self.clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_used > self.session_idle:
                del self._sessions[token]
                return None
            session.last_used = now
            self._sessions.move_to_end(token)
            return session

    # -- connections ----------------------------------------------------------------------

    def admit(self, sock: socket.socket, ip: str) -> _Conn | None:
        """Register a new connection, evicting an older one if a cap is reached.

        Returns None (refuse the newcomer) only if every connection in the way is busy
        running a handler, which is real work we do not interrupt.
        """
        with self.conns_lock:
            live = [c for c in self.conns if not c.evicted]
            same_ip = [c for c in live if c.ip == ip]
            crowd = None
            if len(same_ip) >= self.max_connections_per_ip:
                crowd = same_ip
            elif len(live) >= self.max_connections:
                crowd = live
            if crowd is not None:
                evictable = [c for c in crowd if c.state != "busy"]
                if not evictable:
                    return None
                victim = min(evictable, key=lambda c: c.since)
                logger.debug("connection cap reached; dropping oldest %s connection from %s",
                             victim.state, victim.ip)
                victim.kill()
            conn = _Conn(sock, ip)
            self.conns.add(conn)
            return conn

    def release(self, conn: _Conn) -> None:
        conn.close()
        with self.conns_lock:
            self.conns.discard(conn)

    def kill_all(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            conn.kill()


class _RequestHandler(http.server.BaseHTTPRequestHandler):
    """One connection: TLS handshake, then HTTP/1.1 keep-alive requests until it ends."""

    protocol_version = "HTTP/1.1"
    server_version = "crewnode"

    # BaseRequestHandler.__init__ calls setup(), handle(), finish(). ``request`` is our _Conn.

    def setup(self) -> None:
        self.conn: _Conn = self.request
        self.st: _ServerState = self.server.state
        self.ok = False
        self.linger = False
        self.close_connection = True
        self.expect_continue = False
        raw = self.conn.sock
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # The handshake's timeout is a total deadline in Python's ssl (it is not restarted
            # per record), so a client that stalls mid-handshake is dropped after io_timeout.
            raw.settimeout(self.st.io_timeout)
            sock = self.st.ssl_context.wrap_socket(
                raw, server_side=True, do_handshake_on_connect=False
            )
            with self.conn.lock:
                self.conn.sock = sock  # wrap_socket took over the descriptor
            if self.conn.evicted:  # evicted while we swapped sockets: honour it
                return
            sock.do_handshake()
        except (OSError, ValueError) as e:
            logger.debug("TLS handshake with %s failed: %s", self.client_address[0], e)
            return
        self.connection = sock
        self.io = _DeadlineIO(sock, self.st.io_timeout)
        self.rfile = io.BufferedReader(self.io, 65536)
        self.wfile = self.io
        self.ok = True

    def handle(self) -> None:
        if not self.ok:
            return
        self.close_connection = False
        first = True
        try:
            while not self.close_connection:
                self.handle_one_request(first)
                first = False
        except (OSError, ValueError) as e:
            # Timeouts, resets, TLS garbage, a socket shut down by eviction or stop(): the
            # peer's problem, not ours.
            logger.debug("connection from %s ended: %s: %s",
                         self.client_address[0], type(e).__name__, e)
        except Exception:
            logger.exception("unexpected error serving %s", self.client_address[0])

    def finish(self) -> None:
        if self.ok and self.linger:
            self._lingering_close()

    def handle_one_request(self, first: bool = False) -> None:
        st, conn = self.st, self.conn
        conn.set_state("idle")
        self.io.deadline = time.monotonic() + (st.io_timeout if first else st.keepalive_timeout)
        if not self.rfile.peek(1):
            self.close_connection = True  # peer closed between requests
            return
        conn.set_state("request")
        self.io.deadline = time.monotonic() + st.io_timeout  # request line and headers
        self.command = self.requestline = ""
        self.request_version = "HTTP/1.1"
        self.expect_continue = False
        self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(self.raw_requestline) > MAX_REQUEST_LINE:
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        rfile = self.rfile
        self.rfile = _HeaderBudget(rfile, MAX_HEADER_BYTES)
        try:
            parsed = self.parse_request()
        finally:
            self.rfile = rfile
        if parsed:
            self._dispatch()

    def handle_expect_100(self) -> bool:
        # Defer "100 Continue" until we know we will read the body (size and session checked).
        self.expect_continue = True
        return True

    # -- responses --------------------------------------------------------------------------

    def _respond(self, status: int, body: bytes, content_type: str = "application/json",
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
        ]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.conn.set_state("busy")  # writing out: do not evict mid-response
        self.io.deadline = time.monotonic() + self.st.io_timeout + len(body) / MIN_RATE
        # One write for small responses: headers and body in one segment, no Nagle stall.
        if len(body) <= 65536:
            self.io.write(head + body)
        else:
            self.io.write(head)
            self.io.write(body)

    def _error(self, status: int, message: str, *, close: bool = False,
               headers: tuple[tuple[str, str], ...] = ()) -> None:
        if close:
            self.close_connection = True
        body = json.dumps({"error": message}).encode()
        self._respond(status, body, headers=headers)

    def _json(self, obj) -> None:
        self._respond(200, json.dumps(obj).encode())

    def send_error(self, code, message=None, explain=None) -> None:
        # Called by parse_request() for malformed requests: answer in JSON like everything else.
        text = message or HTTPStatus(code).phrase
        if explain:
            text = f"{text}: {explain}"
        try:
            self._error(int(code), text, close=True)
        except OSError:
            pass

    def log_message(self, format, *args) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)

    def _refuse_unread(self, status: int, message: str, length: int, **kw) -> None:
        """Answer without having read the body: keep the connection only if we can skip it."""
        if 0 < length <= AUTH_MAX_BODY:
            # Small: read and drop it so the connection stays usable (e.g. re-auth after 401).
            if self._read_body(length) is None:
                return
        elif length > 0:
            self.close_connection = True
            self.linger = True
        self._error(status, message, **kw)

    def _lingering_close(self) -> None:
        # The client is probably still sending the body we refused. Closing now would reset the
        # connection and could destroy our error reply before the client reads it, so: send FIN,
        # then read and discard what arrives for a short while.
        sock = self.connection
        _raw_shutdown(sock, socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                if not socket.socket.recv(sock, 65536):
                    break
        except OSError:
            pass

    # -- requests ---------------------------------------------------------------------------

    def _read_body(self, length: int) -> bytes | None:
        if self.expect_continue:
            self.expect_continue = False
            self.io.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if length == 0:
            return b""
        self.io.deadline = time.monotonic() + self.st.io_timeout + length / MIN_RATE
        body = self.rfile.read(length)
        if len(body) != length:
            # The peer stopped early (closed its side): nothing to act on.
            try:
                self._error(400, "request body truncated", close=True)
            except OSError:
                pass
            self.close_connection = True
            return None
        return body

    def _dispatch(self) -> None:
        st = self.st
        if self.command != "POST":
            self._error(405, "only POST is supported", close=True, headers=(("Allow", "POST"),))
            return
        if not self.path.startswith("/v1/") or not _NAME_RE.fullmatch(self.path[4:]):
            self._error(404, f"no such endpoint: {self.path[:100]!r}", close=True)
            return
        name = self.path[4:]
        if "Transfer-Encoding" in self.headers:
            self._error(411, "chunked bodies are not accepted; send Content-Length", close=True)
            return
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            self._error(411, "Content-Length required", close=True)
            return
        if len(set(v.strip() for v in lengths)) != 1 or not _LENGTH_RE.fullmatch(lengths[0].strip()):
            self._error(400, "bad Content-Length", close=True)
            return
        length = int(lengths[0].strip())
        limit = AUTH_MAX_BODY if name in _RESERVED else st.max_body
        if length > limit:
            self.close_connection = True
            self.linger = True
            self._error(413, f"body of {length} bytes exceeds the limit of {limit} bytes")
            return

        if name == "hello":
            if self._read_body(length) is not None:
                self._hello()
            return
        if name == "auth":
            body = self._read_body(length)
            if body is not None:
                self._auth(body)
            return

        # Check the session before reading the body: anonymous peers get nothing read.
        session = st.session_for(self.headers.get("X-Session"))
        if session is None:
            self._refuse_unread(401, "unknown or expired session; authenticate again", length,
                                headers=(("WWW-Authenticate", SESSION_SCHEME),))
            return
        body = self._read_body(length)
        if body is None:
            return
        self._call(session, name, body)

    def _hello(self) -> None:
        st = self.st
        self._json({
            "nonce": _b64(st.new_nonce()),
            "device": _b64(st.device_pub),
            "cert": _b64(st.cert_blob),
            "max_body": st.max_body,
        })

    def _auth(self, body: bytes) -> None:
        st = self.st
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("auth body must be a JSON object")
            nonce = _unb64(req.get("nonce"), "nonce")
            device = _unb64(req.get("device"), "device")
            cert = _unb64(req.get("cert"), "cert")
            sig = _unb64(req.get("sig"), "sig")
            if len(device) != 32:
                raise ValueError("field 'device' must be a 32-byte Ed25519 public key")
            if len(sig) != 64:
                raise ValueError("field 'sig' must be a 64-byte Ed25519 signature")
        except ValueError as e:  # includes JSON and UTF-8 decoding errors
            self._error(400, f"bad auth request: {e}")
            return
        # Consume the nonce before anything else: one attempt per nonce, right or wrong.
        if not st.take_nonce(nonce):
            self._error(401, "nonce unknown, already used or expired; ask /v1/hello again")
            return
        try:
            Ed25519PublicKey.from_public_bytes(device).verify(
                sig, AUTH_CONTEXT + st.fingerprint + nonce
            )
        except (InvalidSignature, ValueError):
            self._error(401, "signature does not verify for this device key, "
                             "this server's certificate and this nonce")
            return
        try:
            member_id = st.verify_peer(device, cert)
        except ValueError as e:
            self._error(403, f"device certificate refused: {e}")
            return
        except Exception:
            logger.exception("verify_peer failed on a device certificate")
            self._error(500, "internal error while checking the device certificate")
            return
        if not isinstance(member_id, str) or not member_id:
            logger.error("verify_peer returned %r, not a member id string", member_id)
            self._error(500, "internal error while checking the device certificate")
            return
        token = st.new_session(member_id, device)
        self._json({"session": token, "member": member_id})

    def _call(self, session: _Session, name: str, body: bytes) -> None:
        host, port = self.client_address[:2]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        peer = Peer(session.member_id, session.device_key, address)
        self.conn.set_state("busy")
        try:
            result = self.st.handler(peer, name, body)
        except Exception:
            logger.exception("sync handler failed on %r from %s (%s)", name, peer.member_id,
                             address)
            self._error(500, f"internal error in handler for {name!r}")
            return
        try:
            status, out = result
            if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
                raise TypeError(f"bad status {status!r}")
            out = bytes(out)
        except (TypeError, ValueError) as e:
            logger.error("sync handler for %r returned %r: %s", name, type(result), e)
            self._error(500, f"internal error in handler for {name!r}")
            return
        self._respond(status, out, "application/octet-stream")


class _Listener:
    """Accept loop: a selector over the listening socket and a wake-up socket for stop().

    It only accepts and hands each connection to its own thread; the TLS handshake and all
    reading happen there, so nothing a peer does can block accepting.
    """

    def __init__(self, host: str, port: int, state: _ServerState):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Backlog 512: bursts of peers connecting at once should queue, not be refused.
        self.socket = socket.create_server((host, port), family=family, backlog=512)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.state = state
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False

    def serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self.socket and not self._stopping:
                        self._accept_some()

    def _accept_some(self) -> None:
        for _ in range(64):  # take what is queued, but let stop() in between bursts
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: back off instead of spinning on accept.
                    logger.warning("cannot accept connections: %s", e)
                    time.sleep(0.1)
                else:  # e.g. the peer reset before we accepted
                    logger.debug("accept failed: %s", e)
                return
            self._start_connection(sock, address)

    def _start_connection(self, sock: socket.socket, address) -> None:
        conn = self.state.admit(sock, address[0])
        if conn is None:
            logger.warning("refusing connection from %s: all slots busy", address[0])
            sock.close()
            return
        try:
            threading.Thread(
                target=self._serve_connection, args=(conn, address),
                name=f"crewnode-sync-{address[0]}", daemon=True,
            ).start()
        except RuntimeError:  # cannot start a thread: drop this one connection
            logger.warning("cannot start a thread for %s", address[0])
            self.state.release(conn)

    def _serve_connection(self, conn: _Conn, address) -> None:
        try:
            _RequestHandler(conn, address, self)
        except Exception:
            logger.exception("connection handler crashed for %s", address[0])
        finally:
            self.state.release(conn)

    def stop(self) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def close(self) -> None:
        for sock in (self.socket, self._wake_r, self._wake_w):
            sock.close()


class SyncServer:
    """HTTPS server that authenticates peers and passes their requests to ``handler``.

    ``handler(peer: Peer, name: str, body: bytes) -> (status: int, body: bytes)`` is called for
    ``POST /v1/<name>`` from an authenticated peer, on that connection's own thread, so it must
    be thread-safe. ``verify_peer(device_public_raw, cert_blob) -> member_id`` raises
    ``ValueError`` to refuse a peer.

    The keyword-only settings tune robustness: ``io_timeout`` bounds each socket operation and
    each handshake/header phase; ``keepalive_timeout`` is how long an idle connection is kept;
    ``session_idle`` is how long an unused session stays valid; connection caps are total and per
    peer IP. ``clock`` (monotonic seconds) is replaceable for tests of expiry.
    """

    def __init__(self, host: str, port: int, device_key: Ed25519PrivateKey,
                 device_cert_blob: bytes, verify_peer: VerifyPeer,
                 handler: Callable[[Peer, str, bytes], tuple[int, bytes]],
                 max_body: int = 16 * 1024 * 1024, *, io_timeout: float = 10.0,
                 keepalive_timeout: float = 15.0, session_idle: float = 600.0,
                 max_connections: int = 256, max_connections_per_ip: int = 64,
                 clock: Callable[[], float] = time.monotonic):
        self._host = host
        self._requested_port = port
        cert_pem, key_pem = tls.make_certificate(device_key)
        cert_der = x509.load_pem_x509_certificate(cert_pem).public_bytes(
            serialization.Encoding.DER
        )
        self.cert_der = cert_der  #: this server's TLS certificate (DER)
        self._state = _ServerState(
            ssl_context=tls.server_context(cert_pem, key_pem),
            cert_der=cert_der,
            device_pub=_raw_public(device_key),
            cert_blob=bytes(device_cert_blob),
            verify_peer=verify_peer,
            handler=handler,
            max_body=max_body,
            io_timeout=io_timeout,
            keepalive_timeout=keepalive_timeout,
            session_idle=session_idle,
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip,
            clock=clock,
        )
        self._server: _Listener | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The TCP port listened on (the real one once started, even if 0 was asked for)."""
        if self._server is not None:
            return self._server.server_address[1]
        return self._requested_port

    @property
    def address(self) -> str:
        """``"host:port"`` as a ``SyncClient`` takes it."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    def start(self) -> "SyncServer":
        """Bind, listen and serve on a background thread. Returns self."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self._server = _Listener(self._host, self._requested_port, self._state)
        self._thread = threading.Thread(
            target=self._server.serve,
            name=f"crewnode-sync-accept-{self.port}", daemon=True,
        )
        self._thread.start()
        logger.info("sync server listening on %s", self.address)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, drop open connections, and wait (up to ``timeout``) for them to end."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        server.close()
        self._state.kill_all()
        deadline = time.monotonic() + timeout
        while self._state.conns and time.monotonic() < deadline:
            time.sleep(0.01)  # handler threads finish on their own once their sockets are shut

    def __enter__(self) -> "SyncServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPSConnection that records the server's device key and, once pinned, insists on it.

    http.client reconnects by itself when the server closed a keep-alive connection; every such
    connect goes through here, so a session token is never sent to a different key.
    """

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self.expected_key: bytes | None = None
        self.peer_der: bytes | None = None
        self.peer_key: bytes | None = None

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True)
        try:
            key = tls.peer_device_key(der)
        except ValueError as e:
            self.close()
            raise TransportError(None, "something answers there, but not a crewnode: its TLS "
                                       f"certificate is not a crewnode device's ({e})")
        if self.expected_key is not None and key != self.expected_key:
            self.close()
            raise TransportError(
                None, f"{self.host}:{self.port}: server's device key changed since "
                      "authentication (another node on that address, or a man in the middle)")
        self.peer_der, self.peer_key = der, key


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"address must be 'host:port', got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _error_text(data: bytes) -> str:
    try:
        obj = json.loads(data)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return obj["error"]
    except ValueError:
        pass
    text = data[:200].decode("utf-8", "replace").strip()
    return text or "no details"


class SyncClient:
    """Client side of the transport: authenticate to one peer, then make calls.

    ``connect()`` runs hello + auth and returns the server's member id. ``call(name, body)``
    returns the response body or raises ``TransportError``. One keep-alive TLS connection is
    reused; calls from several threads are serialised. If the server forgets the session (idle
    expiry, restart), ``call`` authenticates again once, transparently.
    """

    def __init__(self, address: str, device_key: Ed25519PrivateKey, device_cert_blob: bytes,
                 verify_peer: VerifyPeer, timeout: float = 30, *,
                 max_response: int = 64 * 1024 * 1024):
        self.address = address
        host, port = _split_address(address)
        self._device_key = device_key
        self._device_pub = _raw_public(device_key)
        self._cert_blob = bytes(device_cert_blob)
        self._verify_peer = verify_peer
        self._max_response = max_response
        self._conn = _PinnedHTTPSConnection(host, port, timeout, tls.client_context())
        self._lock = threading.Lock()
        self._session: str | None = None
        self._last_used = 0.0
        self._peer_max_body: int | None = None
        self.peer_member_id: str | None = None  #: set by connect()
        self.peer_device_key: bytes | None = None  #: server's raw device key, set by connect()

    def connect(self) -> str:
        """Authenticate both ways and return the server's member id."""
        with self._lock:
            self._authenticate()
            return self.peer_member_id

    def call(self, name: str, body: bytes = b"") -> bytes:
        """POST ``body`` to the peer's handler as ``name``; return the response body.

        Connects first if needed. Raises ``TransportError`` on a non-200 answer (with its
        status) or when the peer cannot be reached (status ``None``).
        """
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in _RESERVED:
            raise ValueError(f"bad call name {name!r}")
        body = bytes(body)
        with self._lock:
            if self._session is None:
                self._authenticate()
            if self._peer_max_body is not None and len(body) > self._peer_max_body:
                raise TransportError(413, f"body of {len(body)} bytes exceeds the peer's limit "
                                          f"of {self._peer_max_body} bytes")
            for attempt in range(2):
                status, data, resp = self._post(f"/v1/{name}", body, {
                    "X-Session": self._session,
                    "Content-Type": "application/octet-stream",
                }, limit=self._max_response)
                # Only a "session unknown" 401 from the transport is retried (the handler did
                # not run); a 401 the handler itself returns is passed on.
                if (status == 401 and attempt == 0
                        and resp.getheader("WWW-Authenticate") == SESSION_SCHEME):
                    self._authenticate()
                    continue
                break
            if status != 200:
                raise TransportError(status, _error_text(data))
            return data

    def close(self) -> None:
        """Close the connection and forget the session."""
        with self._lock:
            self._conn.close()
            self._session = None

    def __enter__(self) -> "SyncClient":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------

    def _authenticate(self) -> None:
        self._session = None
        status, data, _ = self._post("/v1/hello", b"{}", {"Content-Type": "application/json"})
        if status != 200:
            raise TransportError(status, f"hello refused: {_error_text(data)}")
        try:
            hello = json.loads(data)
            nonce = _unb64(hello["nonce"], "nonce")
            device = _unb64(hello["device"], "device")
            cert = _unb64(hello["cert"], "cert")
            max_body = hello.get("max_body")
        except (ValueError, KeyError, TypeError) as e:
            self._conn.close()
            raise TransportError(None, f"{self.address}: malformed hello answer: {e}") from None
        # The key proven by TLS on the connection that carried this hello must be the device
        # key the server claims; otherwise someone is relaying another node's hello.
        if self._conn.peer_key is None or device != self._conn.peer_key:
            self._conn.close()
            raise TransportError(None, f"{self.address}: server's TLS key does not match the "
                                       "device key it claims (relay or man in the middle?)")
        try:
            member_id = self._verify_peer(device, cert)
        except ValueError as e:
            self._conn.close()
            raise TransportError(None, f"{self.address}: server's device certificate "
                                       f"refused: {e}") from None
        self._conn.expected_key = device  # from now on every reconnect must show this key
        self.peer_device_key = device
        self.peer_member_id = member_id
        self._peer_max_body = max_body if isinstance(max_body, int) and max_body > 0 else None

        if self._conn.sock is None:  # server closed after hello: reconnect (pinned) first
            try:
                self._conn.connect()
            except OSError as e:
                raise TransportError(None, f"{self.address}: reconnect failed: {e}") from e
        sig = self._device_key.sign(auth_message(self._conn.peer_der, nonce))
        body = json.dumps({
            "nonce": _b64(nonce),
            "device": _b64(self._device_pub),
            "cert": _b64(self._cert_blob),
            "sig": _b64(sig),
        }).encode()
        status, data, _ = self._post("/v1/auth", body, {"Content-Type": "application/json"})
        if status != 200:
            raise TransportError(status, f"authentication refused: {_error_text(data)}")
        try:
            answer = json.loads(data)
            session = answer["session"]
            if not isinstance(session, str) or not session:
                raise ValueError("no session token")
        except (ValueError, KeyError, TypeError) as e:
            self._conn.close()
            raise TransportError(None, f"{self.address}: malformed auth answer: {e}") from None
        self._session = session

    def _stale(self) -> bool:
        """True if the open keep-alive connection should not be reused."""
        sock = self._conn.sock
        if time.monotonic() - self._last_used > CLIENT_REUSE_IDLE:
            return True
        try:
            if sock.pending():
                return True
            # Between requests the server sends nothing (no TLS tickets either), so a readable
            # socket means it closed the connection.
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def _post(self, path: str, body: bytes, headers: dict,
              limit: int = AUTH_MAX_BODY) -> tuple[int, bytes, object]:
        conn = self._conn
        if conn.sock is not None and self._stale():
            conn.close()
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = self._read(resp, limit)
        except TransportError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise TransportError(None, failure_words(e)) from e
        self._last_used = time.monotonic()
        return resp.status, data, resp

    def _read(self, resp: http.client.HTTPResponse, limit: int) -> bytes:
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise TransportError(None, f"{self.address}: response of {length} bytes exceeds "
                                       f"the limit of {limit}")
        chunks, total = [], 0
        while True:
            chunk = resp.read(65536)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise TransportError(None, f"{self.address}: response exceeds the limit of "
                                           f"{limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
