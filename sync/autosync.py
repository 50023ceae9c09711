"""Automatic sync with peers found on the LAN: at discovery, soon after a change, and now
and then, with backoff; never two syncs with the same peer at once.
"""
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PUSH_DELAY_S = 0.3        # gather a burst of local changes into one push
PERIOD_S = 30.0           # a quiet peer is still asked now and then
STRANGER_PAUSE_S = 600.0  # a peer that shares nothing with me is left alone this long
MAX_BACKOFF_S = 300.0
WORKERS = 4


@dataclass
class LanPeer:
    """A node seen on the LAN, known by its per-run instance id until it authenticates."""

    instance: str
    addresses: list
    port: int
    member: str | None = None
    due: float = 0.0
    failures: int = 0
    running: bool = False
    dirty: bool = False
    last_address: str | None = None
    last_sync: float | None = field(default=None)


class AutoSync:
    """Schedules exchanges with LAN peers through a SyncEngine."""

    def __init__(self, engine):
        self.engine = engine
        self.peers: dict[str, LanPeer] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="crewnode-autosync")
        self._thread = threading.Thread(target=self._loop, name="crewnode-autosync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- events ---------------------------------------------------------------------------------

    def found(self, instance: str, addresses: list, port: int) -> None:
        """Discovery saw a peer (or its addresses changed): sync with it now."""
        with self._lock:
            peer = self.peers.get(instance)
            if peer is None:
                self.peers[instance] = LanPeer(instance, list(addresses), port)
            else:
                peer.addresses, peer.port, peer.due = list(addresses), port, 0.0
        self._wake.set()
        threading.Thread(target=self._retry_joins, args=(addresses, port), daemon=True).start()

    def lost(self, instance: str) -> None:
        """Discovery heard the peer's goodbye: forget it."""
        with self._lock:
            self.peers.pop(instance, None)

    def changed(self, entries) -> None:
        """Entries were accepted here: push them to every peer soon."""
        now = time.monotonic()
        with self._lock:
            for peer in self.peers.values():
                if peer.running:
                    peer.dirty = True
                elif peer.member is not None:
                    peer.due = min(peer.due, now + PUSH_DELAY_S)
        self._wake.set()

    def view(self) -> list[dict]:
        """The LAN peers now present: instance, address, member (once known)."""
        with self._lock:
            return [{"instance": p.instance, "address": p.last_address or _address(p.addresses[0], p.port),
                     "member": p.member, "last_sync": p.last_sync} for p in self.peers.values() if p.addresses]

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            next_due = now + PERIOD_S
            with self._lock:
                for peer in self.peers.values():
                    if peer.running:
                        continue
                    if peer.due <= now:
                        peer.running = True
                        peer.dirty = False
                        self._pool.submit(self._sync, peer)
                    else:
                        next_due = min(next_due, peer.due)
            self._wake.wait(max(0.05, next_due - time.monotonic()))
            self._wake.clear()

    def _sync(self, peer: LanPeer) -> None:
        result = None
        shares = False
        for address in [_address(a, peer.port) for a in peer.addresses]:
            try:
                result = self.engine.sync_with(address, source="lan")
                peer.last_address = address
                # Asked outside our lock: the node thread may be waiting on that lock in `changed`.
                shares = self.engine.shares_with(result["peer"])
                break
            except Exception as exc:                       # noqa: BLE001 - try the next address
                log.info("sync with %s failed: %s", address, exc)
        with self._lock:
            peer.running = False
            now = time.monotonic()
            if result is None:
                peer.failures += 1
                peer.due = now + min(MAX_BACKOFF_S, 2 ** peer.failures) * random.uniform(0.8, 1.2)
            else:
                peer.failures = 0
                peer.member = result["peer"]
                peer.last_sync = time.time()
                peer.due = now + (PERIOD_S if shares else STRANGER_PAUSE_S) * random.uniform(0.8, 1.2)
                if peer.dirty:
                    peer.due = now + PUSH_DELAY_S
        self._wake.set()

    def _retry_joins(self, addresses, port) -> None:
        try:
            self.engine.retry_joins([_address(a, port) for a in addresses])
        except Exception:                                   # noqa: BLE001 - a join is retried later
            log.exception("join attempt with a LAN peer failed")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
