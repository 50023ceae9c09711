"""LAN discovery of other crewnode nodes with mDNS / DNS-SD (python-zeroconf).

Each running node advertises ``_crewnode._tcp.local.`` with its sync port. The
advertisement names no person, device or group: the instance name and host
name are a random per-run id, and the TXT record holds only ``v=1`` (protocol
version) and ``id=<that id>``. Who a peer is gets settled later, over the
encrypted sync connection.

    d = Discovery(8443, on_found=print, on_lost=print)
    d.start()      # blocks ~2 s while zeroconf probes and announces
    ...
    d.stop()       # sends goodbye packets, so peers drop us at once

Callbacks run on one worker thread owned by ``Discovery`` (never on
zeroconf's event loop), in the order events happened.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ifaddr
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)

log = logging.getLogger(__name__)

SERVICE_TYPE = "_crewnode._tcp.local."
PROTOCOL_VERSION = "1"
# How often to look for interfaces that came or went (a laptop joining Wi-Fi
# after the node started); reading the host's addresses is cheap.
RESCAN_INTERVAL = 5.0
# How long to wait for a peer's SRV/TXT/A records when its announcement did
# not carry them all; only the worker thread waits, never zeroconf's loop.
RESOLVE_TIMEOUT_MS = 3000

_STOP = object()

FoundCallback = Callable[[str, list[str], int], None]
LostCallback = Callable[[str], None]


def _link_is_up(ifname: str) -> bool:
    """Whether a network interface is up, as far as we can tell.

    An interface whose link is down keeps its IPv4 address, so addresses alone
    miss a cable or Wi-Fi coming back. Linux shows the state in /sys; elsewhere
    we assume up. "unknown" is what loopback and tun devices report.
    """
    try:
        state = Path("/sys/class/net", ifname, "operstate").read_text().strip()
    except OSError:
        return True
    return state in ("up", "unknown")


def _network_snapshot() -> frozenset[tuple[str, str, bool]]:
    """The host's IPv4 addresses with their interface and link state.

    Compared between rescans to notice interfaces that appear, disappear,
    change address or come up. IPv4 only, because that is what we announce on.
    """
    return frozenset(
        (adapter.name, ip.ip, _link_is_up(adapter.name))
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    )


def _instance_id(service_name: str) -> str | None:
    """The instance label of a full service name, or None if not ours."""
    suffix = "." + SERVICE_TYPE
    if not service_name.endswith(suffix):
        return None
    return service_name[: -len(suffix)]


class Discovery:
    """Advertise this node on the LAN and report other crewnode nodes.

    ``on_found(instance_id, addresses, port)`` is called when a peer resolves
    and again if its addresses or port change; ``on_lost(instance_id)`` when
    it sends goodbye or, if it vanished silently, when its PTR record expires
    (zeroconf's default TTL: 75 min, so a failed sync is the quicker sign).
    Both run on one worker thread and should return quickly. ``interfaces`` is passed to zeroconf, e.g.
    ``["127.0.0.1"]`` to stay on loopback; by default all interfaces are used.
    """

    def __init__(
        self,
        sync_port: int,
        on_found: FoundCallback,
        on_lost: LostCallback,
        interfaces: list[str] | None = None,
        *,
        rescan_interval: float = RESCAN_INTERVAL,
    ) -> None:
        if not 0 < sync_port < 65536:
            raise ValueError(f"sync_port out of range: {sync_port}")
        self.sync_port = sync_port
        self.on_found = on_found
        self.on_lost = on_lost
        self.interfaces = list(interfaces) if interfaces else None
        self.rescan_interval = rescan_interval
        # Fresh every run, so advertisements cannot be linked across runs.
        self.instance_id = f"crewnode-{secrets.token_hex(8)}"
        self._name = f"{self.instance_id}.{SERVICE_TYPE}"

        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._peers: dict[str, tuple[tuple[str, ...], int]] = {}  # worker thread only
        self._zc: Zeroconf | None = None
        self._info: ServiceInfo | None = None
        self._browser: ServiceBrowser | None = None
        self._worker: threading.Thread | None = None
        self._snapshot: frozenset = frozenset()

    # -- public API --------------------------------------------------------

    def start(self) -> None:
        """Advertise and start browsing. Blocks ~2 s while zeroconf probes.

        Calling it again is a no-op; a stopped Discovery cannot be restarted.
        """
        with self._lock:
            if self._stopped:
                raise RuntimeError("Discovery was stopped; create a new one")
            if self._started:
                return
            self._snapshot = _network_snapshot()
            zc = Zeroconf(interfaces=self.interfaces or InterfaceChoice.All)
            try:
                self._zc = zc
                self._info = self._service_info()
                zc.register_service(self._info)
                self._browser = self._new_browser()
            except BaseException:
                zc.close()
                raise
            self._started = True
            self._worker = threading.Thread(
                target=self._run, name=f"discovery-{self.instance_id}", daemon=True
            )
            self._worker.start()

    def stop(self) -> None:
        """Send goodbye, stop browsing and close sockets. Safe to call twice."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if not self._started:
                return
        self._events.put(_STOP)
        # A callback may call stop() from the worker thread; do not join ourselves.
        if self._worker is not threading.current_thread():
            self._worker.join(timeout=RESOLVE_TIMEOUT_MS / 1000 + 5)
        self._browser.cancel()
        try:
            # Goodbye packets (TTL 0) let peers drop us at once instead of
            # waiting for our records to expire.
            self._zc.unregister_service(self._info)
        except Exception:  # noqa: BLE001 - closing must go on whatever happened
            log.warning("could not send goodbye for %s", self.instance_id, exc_info=True)
        finally:
            self._zc.close()

    def __enter__(self) -> Discovery:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------

    def _addresses(self) -> list[str]:
        """The IPv4 addresses to advertise: those of links that are up.

        Loopback is left out unless asked for: a peer on the LAN cannot use
        it, and a cached 127.0.0.1 would linger in its answers for minutes.
        With no usable address we advertise none; peers then wait for an
        announcement that has one.
        """
        if self.interfaces:
            return [a for a in self.interfaces if isinstance(a, str) and ":" not in a]
        return [
            ip.ip
            for adapter in ifaddr.get_adapters()
            if _link_is_up(adapter.name)
            for ip in adapter.ips
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback
        ]

    def _service_info(self) -> ServiceInfo:
        """Our advertisement: random name and host name, version and id only."""
        return ServiceInfo(
            SERVICE_TYPE,
            self._name,
            port=self.sync_port,
            properties={"v": PROTOCOL_VERSION, "id": self.instance_id},
            # Never the machine's host name, which often carries a person's
            # name ("alices-laptop"); zeroconf publishes this name's A records.
            server=f"{self.instance_id}.local.",
            parsed_addresses=self._addresses(),
        )

    def _new_browser(self) -> ServiceBrowser:
        """A browser that only queues events; the worker does the real work."""

        def on_change(zeroconf, service_type, name, state_change) -> None:
            # Runs on zeroconf's browser thread: hand over and return at once.
            self._events.put((state_change, name))

        return ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[on_change])

    def _run(self) -> None:
        """Worker: resolve peers, run callbacks, rescan interfaces now and then."""
        next_scan = time.monotonic() + self.rescan_interval
        while True:
            try:
                item = self._events.get(timeout=max(0.0, next_scan - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            try:
                if item is not None:
                    self._handle(*item)
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self.rescan_interval
                    self._rescan()
            except Exception:  # noqa: BLE001 - one bad event must not end discovery
                log.exception("discovery worker error")

    def _handle(self, state_change: ServiceStateChange, name: str) -> None:
        """Turn one browser event into on_found / on_lost."""
        instance_id = _instance_id(name)
        if instance_id is None or instance_id == self.instance_id:
            return
        if state_change is ServiceStateChange.Removed:
            if self._peers.pop(instance_id, None) is not None:
                self.on_lost(instance_id)
            return
        # Added or Updated: usually already in zeroconf's cache from the
        # announcement, otherwise this asks the peer (worker thread only).
        info = self._zc.get_service_info(SERVICE_TYPE, name, timeout=RESOLVE_TIMEOUT_MS)
        if info is None or not info.port:
            log.debug("could not resolve %s", name)
            return
        props = info.decoded_properties
        # The callback carries no version, so a peer speaking another protocol
        # version is not reported; the id must match the name it came with.
        if props.get("v") != PROTOCOL_VERSION or props.get("id") != instance_id:
            log.debug("ignoring %s with TXT %r", name, props)
            return
        addresses = info.parsed_addresses(IPVersion.V4Only) or info.parsed_addresses()
        if not addresses:
            return
        seen = (tuple(addresses), info.port)
        if self._peers.get(instance_id) != seen:
            self._peers[instance_id] = seen
            self.on_found(instance_id, list(addresses), info.port)

    def _rescan(self) -> None:
        """Re-announce and re-query when the host's interfaces changed."""
        snapshot = _network_snapshot()
        if snapshot == self._snapshot:
            return
        log.info("network interfaces changed; re-announcing %s", self.instance_id)
        # Announce again with the current addresses: peers that could not hear
        # us while the link was down learn about us now. This comes before
        # update_interfaces, because that re-announces whatever is registered
        # on the new sockets, and stale addresses would stick in peers' caches.
        self._info = self._service_info()
        self._zc.update_service(self._info)
        if self.interfaces is None:
            # Opens sockets on new interfaces, closes those on vanished ones.
            self._zc.update_interfaces()
        # A fresh browser queries at once; the old one may have backed off to
        # querying rarely. Cached peers come back as Added and are deduplicated.
        old, self._browser = self._browser, self._new_browser()
        old.cancel()
        # Only now: if anything above failed, the next rescan tries again.
        self._snapshot = snapshot
