"""Automatic sync with peers found on the LAN: at discovery, soon after a change, and now
and then, with backoff; never two syncs with the same peer at once.

What gets pushed, and to whom, is chosen so that a gathering of N nodes where everyone writes
costs about one exchange per pair, not N per pair:

- My own changes (and entries imported from a file) are pushed to every peer sharing a document.
- Entries received from a peer are never pushed back to it, and are passed on to the others only
  when their author's device is not among my LAN peers: an author on the LAN pushes to everyone
  itself, so relaying its entries would only repeat that. News from elsewhere (entries a peer
  carried from a meeting I missed) is relayed, a little later than my own changes.
- A push is skipped when the peer is known to hold the change already: every completed exchange,
  whichever side started it, leaves the peer holding everything I held when it began (`covered`).
- Syncs go to the pool only when a worker is free, so a push waiting its turn is checked again.
- Strangers (peers sharing nothing with me) get no pushes; whether they still share nothing is
  checked again when my documents change, so a newcomer admitted meanwhile is pushed to at once.

Periodic syncs (every PERIOD_S) catch whatever these shortcuts miss, e.g. an author whose node
can reach me but not a third peer.
"""
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PUSH_DELAY_S = 0.3        # gather a burst of local changes into one push
RELAY_DELAY_S = 1.0       # entries from one peer, passed on to others unless they have them by then
PERIOD_S = 30.0           # a quiet peer is still asked now and then
STRANGER_PAUSE_S = 600.0  # a peer that shares nothing with me is left alone this long
MAX_BACKOFF_S = 300.0
WORKERS = 4
NEVER = float("inf")


@dataclass
class LanPeer:
    """A node seen on the LAN, known by its per-run instance id until it authenticates."""

    instance: str
    addresses: list
    port: int
    member: str | None = None
    device: str | None = None       # its device id, once authenticated
    shares: bool = False            # it is a member of a document I hold
    periodic: float = 0.0           # when the next sync is due whatever happened (monotonic)
    push_at: float = NEVER          # when a push of recent changes is due
    pending: float = -NEVER         # time of my latest change that it may lack
    covered: float = -NEVER         # it holds everything I held at this time
    failures: int = 0
    running: bool = False
    last_address: str | None = None
    last_sync: float | None = field(default=None)

    @property
    def due(self) -> float:
        return min(self.periodic, self.push_at)


class AutoSync:
    """Schedules exchanges with LAN peers through a SyncEngine."""

    def __init__(self, engine):
        self.engine = engine
        self._device = engine.identity.device_id
        self.peers: dict[str, LanPeer] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._active = 0                                  # syncs handed to the pool, not yet done
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
                peer.addresses, peer.port, peer.periodic = list(addresses), port, 0.0
        self._wake.set()
        threading.Thread(target=self._retry_joins, args=(addresses, port), daemon=True).start()

    def lost(self, instance: str) -> None:
        """Discovery heard the peer's goodbye: forget it."""
        with self._lock:
            self.peers.pop(instance, None)

    def changed(self, entries) -> None:
        """Entries were accepted here: push them soon to every peer that may lack them.

        Runs on the node thread (a Service listener), so it may ask the node directly.
        """
        if not entries:                                 # entries forgotten, none new: nothing to push
            return
        source = self.engine.ingesting_from           # the member they came from; None: written here
        now = time.monotonic()
        devices = {getattr(e, "device", None) for e in entries}
        if self._device in devices:    # written here while serving a peer (an admission)
            source = None
        with self._lock:
            if source is None:
                relay = True
            else:                                       # authors on the LAN push to everyone themselves
                present = {p.device for p in self.peers.values() if p.device and not p.failures}
                relay = not devices <= present
            strangers = {p.member for p in self.peers.values()
                         if p.member is not None and p.member != source and not p.shares}
        # A change may have made a stranger a member (an admission, or my own join): it lacks
        # everything, so it gets a push whoever wrote the change.
        now_sharing = {m for m in strangers if self.engine.shares_with(m)}
        delay = PUSH_DELAY_S if source is None else RELAY_DELAY_S
        with self._lock:
            for peer in self.peers.values():
                if peer.member is None or peer.member == self.engine.ingesting_from:
                    continue
                newly = peer.member in now_sharing
                if newly:
                    peer.shares = True
                if peer.shares and (relay or newly):
                    peer.pending = now
                    peer.push_at = min(peer.push_at, now + delay)
        self._wake.set()

    def served(self, member: str, device: str, started: float, shares: bool) -> None:
        """I answered an exchange of `member`'s `device` (begun at `started`, monotonic) as the
        server: it now holds everything I held then, so pushes of older changes can be skipped,
        and my own periodic sync with it can wait (it is the one asking now)."""
        with self._lock:
            for peer in self.peers.values():
                if peer.device == device:
                    peer.covered = max(peer.covered, started)
                    peer.shares = shares
                    if shares and not peer.failures:
                        peer.periodic = max(peer.periodic, time.monotonic() + PERIOD_S * random.uniform(0.8, 1.2))

    def view(self) -> list[dict]:
        """The LAN peers now present: instance, address, member (once known)."""
        with self._lock:
            return [{"instance": p.instance, "address": p.last_address or _address(p.addresses[0], p.port),
                     "member": p.member, "device": p.device, "last_sync": p.last_sync}
                    for p in self.peers.values() if p.addresses]

    # -- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        # Syncs are handed to the pool only when a worker is free, most urgent first, so a peer
        # still waiting its turn is checked again: a push it no longer needs is dropped.
        while not self._stop.is_set():
            now = time.monotonic()
            next_due = now + PERIOD_S
            with self._lock:
                waiting = []
                for peer in self.peers.values():
                    if peer.running:
                        continue
                    if peer.periodic > now and peer.push_at <= now and peer.covered >= peer.pending:
                        peer.push_at = NEVER                  # it got those changes meanwhile
                    if peer.due <= now:
                        waiting.append(peer)
                    else:
                        next_due = min(next_due, peer.due)
                waiting.sort(key=lambda p: p.due)
                for peer in waiting[:max(0, WORKERS - self._active)]:
                    peer.running = True
                    peer.push_at = NEVER
                    self._active += 1
                    self._pool.submit(self._sync, peer)
            self._wake.wait(max(0.05, next_due - time.monotonic()))
            self._wake.clear()

    def _sync(self, peer: LanPeer) -> None:
        result = None
        started = time.monotonic()
        try:
            for address in [_address(a, peer.port) for a in peer.addresses]:
                try:
                    result = self.engine.sync_with(address, source="lan")
                    peer.last_address = address
                    break
                except Exception as exc:                   # noqa: BLE001 - try the next address
                    log.info("sync with %s failed: %s", address, exc)
        finally:
            self._done(peer, started, result)
        self._wake.set()

    def _done(self, peer: LanPeer, started: float, result: dict | None) -> None:
        with self._lock:
            peer.running = False
            self._active -= 1
            now = time.monotonic()
            if result is None:
                peer.failures += 1
                peer.periodic = now + min(MAX_BACKOFF_S, 2 ** peer.failures) * random.uniform(0.8, 1.2)
            else:
                peer.failures = 0
                peer.member, peer.device = result["peer"], result["device"]
                peer.shares = result["shares"]
                peer.covered = max(peer.covered, started)
                peer.last_sync = time.time()
                peer.periodic = now + (PERIOD_S if peer.shares else STRANGER_PAUSE_S) * random.uniform(0.8, 1.2)
                if peer.shares and peer.pending > peer.covered:   # changed while we were at it
                    peer.push_at = min(peer.push_at, now + PUSH_DELAY_S)

    def _retry_joins(self, addresses, port) -> None:
        try:
            self.engine.retry_joins([_address(a, port) for a in addresses])
        except Exception:                                   # noqa: BLE001 - a join is retried later
            log.exception("join attempt with a LAN peer failed")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
