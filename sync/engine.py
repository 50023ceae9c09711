"""Sync between this node and its peers: the listener, on-demand exchanges, and joining.

The engine drives `sync.protocol` over `sync.transport`; everything that touches documents runs
on the node thread through `NodeThread.call`.
"""
import json
import logging
import struct
import threading
import time

from node import carry
from node.errors import Invalid, NodeError, NotFound
from node.identity import IdentityError, check_device_cert
from node.ids import b32, now_ms, unb32
from node.views import iso

from . import protocol
from .protocol import ProtocolError, pack, unpack
from .transport import SyncClient, SyncServer, TransportError

log = logging.getLogger(__name__)
JOIN_RETRY_S = 5.0
RETIRED_WORDS = "this device was retired by its member"


def verify_peer(device_public: bytes, cert_blob: bytes) -> str:
    """The member id a peer's device certificate names, if it is valid for that device."""
    try:
        cert = json.loads(cert_blob)
        person, device = check_device_cert(cert)
    except (ValueError, IdentityError) as exc:
        raise ValueError(f"device certificate does not hold: {exc}") from None
    if unb32(device) != device_public:
        raise ValueError("device certificate is for another device")
    return person


class PeerBook:
    """Peers met, kept in the store so the list survives a restart (node thread only).

    The book lives in memory and is written to the store when a peer is new or its address or
    source changed, otherwise at most every SAVE_EVERY_S, and on stop. Writing it on every sync
    cost one fsync'd commit per sync and per request served: at a gathering of 20 nodes that was
    most of each node thread's time, and every sync queued behind it.
    """

    KEY = "peers"
    SAVE_EVERY_S = 60.0

    def __init__(self):
        self._peers: dict | None = None
        self._dirty = False
        self._saved_at = 0.0

    def _book(self, service) -> dict:
        if self._peers is None:
            self._peers = service.store.get(self.KEY, {})
        return self._peers

    def note(self, service, member: str, device: str, address: str | None, source: str, synced: bool) -> None:
        """Record that we met `member`'s `device` at `address`."""
        peers = self._book(service)
        # One line per device: a member's laptop and phone are two nodes, and one may be retired.
        # (Books written before kept one line per member, under the member's id.)
        old = peers.get(device) or peers.pop(member, None)
        peer = dict(old) if old else {"id": member, "address": address, "source": source, "last_sync": None}
        peer["device"] = device
        if address:
            peer["address"] = address
        if source == "lan" or not peer.get("source"):
            peer["source"] = source
        if synced:
            peer["last_sync"] = now_ms()
        peers[device] = peer
        self._dirty = True
        news = old is None or any(old.get(k) != peer[k] for k in ("address", "source", "device"))
        if news or time.monotonic() - self._saved_at >= self.SAVE_EVERY_S:
            self.save(service)

    def save(self, service) -> None:
        """Write the book to the store if it changed since the last write."""
        if self._peers is not None and self._dirty:
            # Not fsynced: whom I met is no loss after a power cut, while an fsync here, after a
            # sync took in many entries (committed without one), would wait for all of them.
            with service.store.atomic(durable=False):
                service.store.put(self.KEY, self._peers)
            self._dirty = False
            self._saved_at = time.monotonic()

    def view(self, service) -> list[dict]:
        """GET /api/peers: peers with the name I know them by, and whether their device was retired."""
        out = []
        retired = carry.retired_devices(service.states, service.store)
        for peer in self._book(service).values():
            name = None
            for state in service.states.values():
                if peer["id"] in state.names:
                    name = state.name_of(peer["id"])
                    break
            out.append({**peer, "name": name, "device": peer.get("device"), "retired": peer.get("device") in retired,
                        "last_sync": iso(peer["last_sync"]) if peer.get("last_sync") else None})
        return sorted(out, key=lambda p: p.get("last_sync") or "", reverse=True)


class SyncEngine:
    """The sync listener and the client side of exchanges and joins."""

    def __init__(self, node, host: str = "0.0.0.0", port: int = 8471):
        self.node = node
        self.host = host
        # On every address of the machine: others reach it at its LAN addresses, not at `host`.
        self.listens_everywhere = host in ("0.0.0.0", "::", "[::]", "")
        self.identity = node.call(lambda s: s.identity)
        self.server = SyncServer(host, port, self.identity.device_key, self.identity.cert_blob,
                                 verify_peer, self.handle)
        self._peer_locks: dict[str, threading.Lock] = {}
        # Authenticated clients kept per address between syncs (used under that address's lock):
        # the next sync skips hello/auth, and the TLS handshake too while the connection lasts.
        self._clients: dict[str, SyncClient] = {}
        self._locks_guard = threading.Lock()
        self._joining = threading.Lock()
        self._stop = threading.Event()
        self._retry_thread = threading.Thread(target=self._retry_loop, name="crewnode-join-retry", daemon=True)
        self.book = PeerBook()
        self.autosync = None                             # set by the runtime when discovery is on
        # The member whose entries the node thread is taking in right now (None: my own writes).
        # Set and read on the node thread only, so AutoSync's listener never pushes entries
        # back to the peer they came from.
        self.ingesting_from: str | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        """Start listening for peers."""
        self.server.start()
        self.node.call(lambda s: setattr(s, "sync_port", self.server.port))
        self._retry_thread.start()

    def stop(self) -> None:
        """Stop listening; exchanges under way end with their connections. Saves the peer book."""
        self._stop.set()
        self.server.stop()
        with self._locks_guard:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
        try:
            self.node.call(self.book.save)
        except Exception:                                   # noqa: BLE001 - stopping goes on
            log.exception("could not save the peer book")

    # -- the server side ------------------------------------------------------------------------

    def handle(self, peer, name: str, body: bytes):
        """Answer one request of an authenticated peer: (status, body)."""
        try:
            if name == "pair":                           # a second device of my member (issue 7)
                return 200, pack(self.node.call(carry.answer_pairing, peer.device_key, unpack(body)[0]))
            if name == "push":                           # checked here: the node's thread only takes them in
                body = protocol.read_message(body)
            status, reply, started, shares = self.node.call(self._serve, peer.member_id, b32(peer.device_key),
                                                            name, body)
            if self.autosync is not None and name == "exchange" and not _more(reply):
                self.autosync.served(peer.member_id, b32(peer.device_key), started, shares)
            return status, reply
        except ProtocolError as exc:
            return 400, _error(str(exc))
        except NodeError as exc:
            return exc.status, _error(exc.message)

    def _serve(self, service, member: str, device: str, name: str, body):
        """On the node thread, in one turn: check, answer and note one request of a peer.

        Returns (status, reply, when the answer began (monotonic), whether the peer shares a
        document with me).
        """
        if carry.is_retired(service, device):
            return 403, _error(RETIRED_WORDS), 0.0, False
        started = time.monotonic()
        self.ingesting_from = member
        try:
            if name == "join":
                reply = _admit(service, member, unpack(body)[0])
            else:
                reply = protocol.serve(service, member, name, body)
        finally:
            self.ingesting_from = None
        # Only peers I share something with go in the book: strangers with fresh keys would
        # otherwise grow it (and the peers page) without end.
        if name == "join" or protocol.peer_scope(service, member):
            self.book.note(service, member, device, None, "manual", name != "join")
        return 200, reply, started, name == "exchange" and bool(protocol.shared_docs(service, member))

    # -- the client side --------------------------------------------------------------------------

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._peer_locks.setdefault(key, threading.Lock())

    def connect(self, address: str) -> SyncClient:
        """An authenticated connection to the node at host:port."""
        client = SyncClient(address, self.identity.device_key, self.identity.cert_blob, verify_peer)
        client.connect()
        return client

    def sync_with(self, address: str, source: str = "manual") -> dict:
        """One full exchange with the node at `address`: {"received": n, "sent": n}."""
        address = check_address(address)
        with self._lock_for(address):
            with self._locks_guard:
                client = self._clients.pop(address, None)
            if client is not None:
                try:
                    result = self._exchange(client, address, source)
                except Unreachable as exc:
                    # The kept connection may be stale, or another node took that address: once
                    # more with a fresh connection, which authenticates the peer anew.
                    log.info("sync with %s on a kept connection failed (%s); reconnecting", address, exc)
                    client.close()
                except BaseException:
                    client.close()
                    raise
                else:
                    self._keep(address, client)
                    return result
            client = self._connect_or_explain(address)
            try:
                result = self._exchange(client, address, source)
            except BaseException:
                client.close()
                raise
            self._keep(address, client)
            return result

    def _keep(self, address: str, client: SyncClient) -> None:
        with self._locks_guard:
            if self._stop.is_set():
                client.close()
            else:
                self._clients[address] = client

    def _connect_or_explain(self, address: str) -> SyncClient:
        try:
            return self.connect(address)
        except (TransportError, OSError) as exc:
            raise Unreachable(f"could not reach a crewnode at {address}: {exc}") from None

    def _exchange(self, client: SyncClient, address: str, source: str) -> dict:
        peer_member = client.peer_member_id
        if self.node.call(carry.is_retired, b32(client.peer_device_key)):
            raise Unreachable(f"the node at {address} is a device its member retired: not syncing with it")
        received, sent = protocol.run_exchange(lambda fn, *args: self.node.call(self._from, peer_member, fn, *args),
                                               peer_member, lambda name, body: self._call(client, name, body),
                                               prefetch=True)
        shares = self.node.call(self._synced, peer_member, b32(client.peer_device_key), address, source)
        return {"received": received, "sent": sent, "peer": peer_member, "device": b32(client.peer_device_key),
                "shares": shares}

    def _from(self, service, member: str, fn, *args):
        """On the node thread: `fn(service, *args)`, with entries it takes in marked as from `member`."""
        self.ingesting_from = member
        try:
            return fn(service, *args)
        finally:
            self.ingesting_from = None

    def _synced(self, service, member: str, device: str, address: str, source: str) -> bool:
        """On the node thread, after an exchange: note the peer; whether it shares a document with me."""
        self.book.note(service, member, device, address, source, True)
        return bool(protocol.shared_docs(service, member))

    def _call(self, client: SyncClient, name: str, body: bytes) -> bytes:
        try:
            return client.call(name, body)
        except TransportError as exc:
            if exc.status == 403 and exc.message == RETIRED_WORDS:
                # This node may never learn otherwise: the member's other nodes refuse to sync with it.
                member = client.peer_member_id
                self.node.call(lambda service: service.note_retired(member))
            raise Unreachable(f"the peer refused {name}: {exc}") from None

    # -- joining -------------------------------------------------------------------------------------

    def join(self, code: str, address: str | None = None) -> dict:
        """POST /api/join: remember the code's proof and try it now.

        With an address, that node's refusal (unknown, used or expired code) is final and
        reported; without one, any LAN peer that knows the invite will do, so a peer that
        does not know it is no refusal.
        """
        key, proof = self.node.call(lambda s: s.join_proof(code))
        if address:
            address = check_address(address)
        self.node.call(_note_join, key, proof, address)
        if address:
            with self._joining:
                try:
                    self._try_join(key, address)
                except JoinRefused as exc:
                    self.node.call(_forget_join, key)
                    raise exc
                except Unreachable as exc:
                    log.info("join at %s: %s; will retry", address, exc)
                    self.node.call(_note_join_wait, key, exc.message)
        self.retry_joins()
        return self.node.call(_join_status, key)

    def _try_join(self, key: str, address: str) -> None:
        """Present the proof to the node at `address`; on admission, fetch the congregation."""
        joins = self.node.call(lambda s: s.store.get("joins", {}))
        pending = joins.get(key)
        if pending is None or pending["status"] == "joined":
            return
        with self._lock_for(address):
            client = self._connect_or_explain(address)
            try:
                name = self.node.call(lambda s: s.my_name())
                meta = {"invite": key, "name": name, "proof": pending["proof"], "cert": self.identity.cert}
                try:
                    reply = client.call("join", pack(meta))
                except TransportError as exc:
                    if exc.status in (403, 404, 409):
                        raise JoinRefused(exc.status, _error_text(exc.message)) from None
                    raise Unreachable(f"the peer could not take the invite: {exc}") from None
                cid = unpack(reply)[0]["congregation_id"]
                self._exchange(client, address, "manual")
            finally:
                client.close()
        self.node.call(_finish_join, key, cid)

    def retry_joins(self, addresses=None) -> None:
        """Try pending joins again: at their own address, the given ones, and the LAN peers present.

        One round at a time (the API, the retry loop and each discovered peer all start rounds):
        two rounds at once could present one invite to two members' nodes, and both would admit.
        """
        with self._joining:
            joins = self.node.call(lambda s: s.store.get("joins", {}))
            lan = [p["address"] for p in self.autosync.view()] if self.autosync else []
            for key, join in joins.items():
                if join["status"] != "pending":
                    continue
                for address in dict.fromkeys(([join["address"]] if join.get("address") else [])
                                             + list(addresses or []) + lan):
                    try:
                        self._try_join(key, address)
                        break
                    except (Unreachable, JoinRefused, Invalid) as exc:
                        log.info("join retry at %s: %s", address, exc)
                        if address == join.get("address"):
                            self.node.call(_note_join_wait, key, exc.message)

    def pending_joins(self) -> list[dict]:
        """GET /api/joins: the joins still waiting, and why."""
        return self.node.call(_pending_joins)

    def forget_join(self, key: str) -> None:
        """DELETE /api/joins/{key}: stop trying that invite; 404 if no such join is waiting.

        Not under the join round's lock, which a round holds while it waits for peers: a round
        that admits me meanwhile still brings the congregation, it only is not listed as a join.
        """
        self.node.call(_forget_pending_join, key)

    def _retry_loop(self) -> None:
        while not self._stop.wait(JOIN_RETRY_S):
            try:
                self.retry_joins()
            except Exception:                          # noqa: BLE001 - keep retrying
                log.exception("join retry failed")

    def shares_with(self, member: str) -> bool:
        """True when `member` is an active member of any document I hold."""
        return bool(self.node.call(protocol.shared_docs, member))

    def peers(self) -> list[dict]:
        """GET /api/peers: peers met by address, and the LAN peers present now.

        A LAN peer that said goodbye is dropped; one not yet authenticated shows without id.
        """
        known = {p["device"] or p["id"]: p for p in self.node.call(self.book.view)}
        out = [p for p in known.values() if p["source"] != "lan"]
        for lan in self.autosync.view() if self.autosync else []:
            peer = known.get(lan["device"]) or {"id": lan["member"], "device": lan["device"], "name": None,
                                                "last_sync": None, "retired": False}
            out = [p for p in out if p["device"] is None or p["device"] != peer["device"]]
            out.append({**peer, "address": lan["address"], "source": "lan"})
        return out


class Unreachable(NodeError):
    """The peer could not be reached or broke off; nothing was lost."""

    status = 409


class JoinRefused(NodeError):
    """The inviter's node said no to the code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_address(address) -> str:
    """A peer address `host:port`, or a 400."""
    if not isinstance(address, str) or ":" not in address:
        raise Invalid("address must look like host:port, e.g. 192.168.1.20:8471")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid("address must look like host:port, e.g. 192.168.1.20:8471")
    return address


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def _more(reply: bytes) -> bool:
    """Whether an exchange answer says more entries are to come (reads only its JSON part)."""
    try:
        (hlen,) = struct.unpack_from(">I", reply, 0)
        return bool(json.loads(reply[4:4 + hlen]).get("more"))
    except (struct.error, ValueError, AttributeError):
        return True


# -- node-thread functions ------------------------------------------------------------------------

def _admit(service, peer_member: str, meta: dict) -> bytes:
    key, proof = meta.get("invite"), meta.get("proof")
    if not isinstance(key, str) or not isinstance(proof, str):
        raise ProtocolError("a join names an invite and carries a proof")
    try:
        proof_bytes = unb32(proof)
    except ValueError:
        raise ProtocolError("the invite proof is malformed") from None
    cert = meta.get("cert")
    if cert is not None:
        try:
            person, _ = check_device_cert(cert)
        except IdentityError:
            raise ProtocolError("the newcomer's device certificate does not hold") from None
        if person != peer_member:
            raise ProtocolError("the newcomer's device certificate is for someone else")
    cid = service.admit(key, peer_member, meta.get("name") or "", proof_bytes, cert)
    return pack({"congregation_id": cid})


def _note_join(service, key: str, proof: bytes, address: str | None) -> None:
    joins = service.store.get("joins", {})
    known = joins.get(key)
    if known and known["status"] == "joined":
        state = service.states.get(known.get("congregation_id"))
        if state is not None and service._is_active(state):
            return
        # Out since (left or removed): the code is spent; ask again, and hear it refused.
    joins[key] = {"status": "pending", "proof": b32(proof), "address": address, "congregation_id": None,
                  "error": None, "since": now_ms()}
    service.store.put("joins", joins)


def _forget_join(service, key: str) -> None:
    joins = service.store.get("joins", {})
    if joins.pop(key, None) is not None:
        service.store.put("joins", joins)


def _forget_pending_join(service, key: str) -> None:
    if service.store.get("joins", {}).get(key, {}).get("status") != "pending":
        raise NotFound("no join with that invite is waiting here")
    _forget_join(service, key)


def _error_text(message: str) -> str:
    """The words of a peer's JSON error body."""
    try:
        return json.loads(message)["error"]
    except (ValueError, TypeError, KeyError):
        return message


def _finish_join(service, key: str, cid: str) -> None:
    joins = service.store.get("joins", {})
    if key in joins:
        joins[key].update(status="joined", congregation_id=cid, error=None)
        service.store.put("joins", joins)
    service.changed(["joined"])


def _note_join_wait(service, key: str, reason: str) -> None:
    """Remember why a pending join is still waiting, for the member to read."""
    joins = service.store.get("joins", {})
    if key in joins and joins[key]["status"] == "pending" and joins[key].get("error") != reason:
        joins[key]["error"] = reason
        service.store.put("joins", joins)


def _join_status(service, key: str) -> dict:
    join = service.store.get("joins", {}).get(key, {})
    if join.get("status") == "joined":
        return {"congregation_id": join["congregation_id"], "status": "joined"}
    return {"congregation_id": None, "status": "pending", "waiting": _waiting_words(join)}


def _waiting_words(join: dict) -> str:
    """Why a pending join is not done yet, in words."""
    if join.get("error"):
        return join["error"]
    if join.get("address"):
        return f"waiting to reach {join['address']}, or a member's node on this network"
    return "waiting for a member's node that knows the invite, on this network"


def _pending_joins(service) -> list[dict]:
    return [{"key": key, "address": join.get("address"), "since": iso(join["since"]) if join.get("since") else None,
             "waiting": _waiting_words(join)}
            for key, join in service.store.get("joins", {}).items() if join["status"] == "pending"]
