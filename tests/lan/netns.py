"""A throwaway LAN of network namespaces for real multi-host tests.

``Lan(n)`` builds n "hosts" (network namespaces), each with one veth link
(``eth0``, 10.231.X.(10+i)/24) plugged into a Linux bridge. The bridge lives
in its own namespace, so nothing at all is added to the root namespace and no
test traffic can reach a real network. Everything is torn down on exit, even
when a test fails; ``cleanup_stale()`` removes what a crashed run left behind.

    with Lan(2) as lan:
        proc = lan.run(0, [sys.executable, "-c", "..."], stdout=subprocess.PIPE)
        with lan.capture(tmp_path / "mdns.pcap") as cap:
            ...
        data = cap.data   # pcap bytes, read once tcpdump has stopped

Needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2; ``capture`` needs tcpdump.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFIX = "cn-"
# Each Lan holds an flock on a file named after its namespace prefix for its
# whole life; a prefix whose lock can be taken belongs to a dead run. This
# lets cleanup_stale() run while other test sessions use their own Lans.
LOCK_DIR = Path("/run/crewnode-lan")
_NAME_RE = re.compile(r"^(cn-[0-9a-f]{8})-(?:br|h\d+)$")
HOST_IF = "eth0"
BRIDGE = "br0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one iproute2 command, raising with its stderr when it fails."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def list_netns() -> list[str]:
    """Names of all named network namespaces on this machine."""
    out = _ip("netns", "list", check=False).stdout
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_netns_pids(ns: str) -> None:
    """Kill every process still running inside namespace ``ns``.

    Deleting a namespace only removes its name; processes inside keep it
    alive, so they have to go first.
    """
    out = _ip("netns", "pids", ns, check=False).stdout
    for pid in (int(p) for p in out.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete_netns(ns: str) -> None:
    """Kill what runs in ``ns`` and delete it; missing namespaces are fine."""
    _kill_netns_pids(ns)
    _ip("netns", "delete", ns, check=False)


def cleanup_stale() -> list[str]:
    """Delete ``cn-*`` namespaces left by earlier runs that crashed.

    Only namespaces whose owning run is gone (its lock is free or missing) are
    touched, so concurrent test sessions are safe. Returns the deleted names.
    """
    by_prefix: dict[str, list[str]] = {}
    for name in list_netns():
        m = _NAME_RE.match(name)
        if m:
            by_prefix.setdefault(m.group(1), []).append(name)
    deleted = []
    for prefix, names in by_prefix.items():
        lock = LOCK_DIR / f"{prefix}.lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            fd = None  # owner never got as far as locking, or already unlocked
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live run owns these
            for name in names:
                _delete_netns(name)
                deleted.append(name)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        finally:
            if fd is not None:
                os.close(fd)
    return deleted


def _netns_usable() -> tuple[bool, str]:
    """Whether this process can create network namespaces, and why not."""
    if os.geteuid() != 0:
        return False, "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return False, "iproute2 (`ip`) is not installed"
    probe = f"{PREFIX}probe-{secrets.token_hex(4)}"
    proc = _ip("netns", "add", probe, check=False)
    if proc.returncode != 0:
        return False, f"`ip netns add` does not work here: {proc.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return True, ""


_usable, _why = _netns_usable()
requires_root = pytest.mark.skipif(not _usable, reason=_why or "network namespaces unavailable")


@dataclass(frozen=True)
class Host:
    """One host of the LAN: its namespace name, IPv4 address and interface."""

    index: int
    ns: str
    addr: str
    ifname: str = HOST_IF


class Capture:
    """Result of ``Lan.capture``: the pcap file, and its bytes once stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: bytes | None = None


class Lan:
    """n network namespaces on one bridge, torn down on exit.

    Use as a context manager. ``hosts[i]`` has ``.ns`` and ``.addr``.
    """

    def __init__(self, n: int) -> None:
        if not 1 <= n <= 200:
            raise ValueError("n must be between 1 and 200")
        self.n = n
        self.prefix = f"{PREFIX}{secrets.token_hex(4)}"
        self.bridge_ns = f"{self.prefix}-br"
        # A random third octet, so addresses in pcaps and logs show which run
        # they came from; they never leave these namespaces anyway.
        self.subnet = f"10.231.{random.randint(0, 255)}"
        self.hosts = [Host(i, f"{self.prefix}-h{i}", f"{self.subnet}.{10 + i}") for i in range(n)]
        self._procs: list[subprocess.Popen] = []
        self._lock_fd: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Lan:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def setup(self) -> None:
        """Create the namespaces, bridge and links. Called by ``__enter__``."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(LOCK_DIR / f"{self.prefix}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # taken before any namespace exists

        br = self.bridge_ns
        _ip("netns", "add", br)
        _ip("-n", br, "link", "set", "lo", "up")
        # No snooping: the bridge then floods all multicast, like a home switch
        # that has no IGMP querier; mDNS does not depend on IGMP luck.
        _ip("-n", br, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0")
        _ip("-n", br, "link", "set", BRIDGE, "up")
        for h in self.hosts:
            _ip("netns", "add", h.ns)
            _ip("-n", h.ns, "link", "set", "lo", "up")
            port = f"v{h.index}"
            # Both veth ends are created inside namespaces we own, never in root.
            _ip("-n", br, "link", "add", port, "type", "veth", "peer", "name", h.ifname, "netns", h.ns)
            _ip("-n", br, "link", "set", port, "master", BRIDGE)
            _ip("-n", br, "link", "set", port, "up")
            _ip("-n", h.ns, "addr", "add", f"{h.addr}/24", "dev", h.ifname)
            _ip("-n", h.ns, "link", "set", h.ifname, "up")
            # mDNS sockets pick their interface explicitly, but a multicast
            # route makes plain senders (and tools) work too.
            _ip("-n", h.ns, "route", "add", "224.0.0.0/4", "dev", h.ifname)

    def close(self) -> None:
        """Kill started processes, delete all namespaces. Safe to call twice."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._procs.clear()
        # Hosts first: deleting the bridge namespace also removes the veths.
        for name in [h.ns for h in self.hosts] + [self.bridge_ns]:
            if name in list_netns():
                _delete_netns(name)
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                (LOCK_DIR / f"{self.prefix}.lock").unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- using the hosts ---------------------------------------------------

    def run(self, i: int, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` inside host i's namespace; killed on teardown."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.hosts[i].ns, *argv], **popen_kwargs)
        self._procs.append(proc)
        return proc

    def cut(self, i: int) -> None:
        """Take host i's link down, as if its Wi-Fi went off."""
        h = self.hosts[i]
        _ip("-n", h.ns, "link", "set", h.ifname, "down")

    def restore(self, i: int) -> None:
        """Bring host i's link back up, with its address and multicast route."""
        h = self.hosts[i]
        _ip("-n", h.ns, "link", "set", h.ifname, "up")
        # Setting a link down drops routes through it; put the multicast one back.
        _ip("-n", h.ns, "route", "replace", "224.0.0.0/4", "dev", h.ifname)

    @contextlib.contextmanager
    def capture(self, pcap_path: str | os.PathLike, *, startup_timeout: float = 5.0):
        """Record every frame crossing the bridge into ``pcap_path``.

        Yields a ``Capture``; after the block its ``.data`` holds the pcap bytes.
        """
        if shutil.which("tcpdump") is None:
            raise RuntimeError("tcpdump is not installed")
        cap = Capture(Path(pcap_path))
        # -U: write each packet as it arrives, so stopping loses nothing;
        # -Z root: do not drop to a user that cannot write the test's tmp dir.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.bridge_ns,
             "tcpdump", "-i", BRIDGE, "-n", "-U", "-Z", "root", "-w", str(cap.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._procs.append(proc)
        try:
            # tcpdump says "listening on br0" once the socket is open; wait for it
            # so the first packets of the test are not missed.
            deadline = time.monotonic() + startup_timeout
            seen = ""
            os.set_blocking(proc.stderr.fileno(), False)
            while "listening on" not in seen:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tcpdump did not start: {seen.strip()}")
                with contextlib.suppress(BlockingIOError, TypeError):
                    seen += proc.stderr.read() or ""
                time.sleep(0.02)
            yield cap
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # flushes and closes the file
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        cap.data = cap.path.read_bytes() if cap.path.exists() else b""


__all__ = ["Lan", "Host", "Capture", "cleanup_stale", "list_netns", "requires_root"]
