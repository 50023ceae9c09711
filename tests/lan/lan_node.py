"""Real ``crewnode serve`` processes in the hosts of a ``Lan`` (see netns.py).

Each node runs inside its host's network namespace with discovery on, its sync listener on
``0.0.0.0:8471`` and its page and API on 127.0.0.1 *of that namespace*, so the API is called from
inside the namespace too: a worker thread of this process enters the namespace (``setns``, which
Linux allows per thread for network namespaces) and opens every connection to that node there.
No extra process per call, which keeps 20 nodes on 2 cores measurable.

    node = LanNode(lan, 0, tmp_path / "ada", "Ada").start()
    node.wait_ready()
    status, me = node.api("GET", "/api/me")
    node.stop()          # SIGTERM: a clean stop, goodbye on the LAN

With ``lan=None`` the node runs on this host instead, on loopback, with discovery narrowed to
127.0.0.1 (``CREWNODE_DISCOVERY_INTERFACES``) and any free sync port: what bench/gathering.py does
where namespaces cannot be made.

Used by tests/lan/test_gathering.py and bench/gathering.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SYNC_PORT = 8471
START_TIMEOUT = 30.0   # python start, store, zeroconf probing (~2 s), on a loaded 2-core machine
STOP_TIMEOUT = 10.0
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _enter_netns(ns: str) -> None:
    """Move the calling thread (only it) into network namespace ``ns``."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


class LanNode:
    """One node in host ``i`` of ``lan`` (or on loopback if ``lan`` is None); ``home`` is created
    by the first ``serve``."""

    def __init__(self, lan, i: int, home: Path, name: str, extra_env: dict | None = None):
        self.lan = lan
        self.host = lan.hosts[i] if lan is not None else None
        self.home = Path(home)
        self.name = name
        self.extra_env = dict(extra_env or {})
        self.log = self.home.parent / f"{self.home.name}.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.token: str | None = None
        self.id: str | None = None
        self.sync_port: int | None = None
        # One thread inside the namespace: every API call to this node goes through it.
        if self.host is None:
            self._ns_thread = ThreadPoolExecutor(1, thread_name_prefix=f"api-{name}")
        else:
            self._ns_thread = ThreadPoolExecutor(1, thread_name_prefix=f"ns-{self.host.ns}",
                                                 initializer=_enter_netns, initargs=(self.host.ns,))

    def __repr__(self) -> str:
        where = f"{self.host.ns} {self.host.addr}" if self.host else "loopback"
        return f"<LanNode {self.name} {where} port={self.port}>"

    @property
    def sync_address(self) -> str:
        if self.host is None:
            return f"127.0.0.1:{self.sync_port}"
        return f"{self.host.addr}:{SYNC_PORT}"

    # -- process -----------------------------------------------------------------------------

    def start(self) -> LanNode:
        """Start ``crewnode serve`` in the namespace (returns at once; see ``wait_ready``)."""
        self.home.parent.mkdir(parents=True, exist_ok=True)
        (self.home / "ports.json").unlink(missing_ok=True)
        sync = ["--sync-port", str(SYNC_PORT), "--sync-host", "0.0.0.0"] if self.host else \
            ["--sync-port", "0", "--sync-host", "127.0.0.1"]
        argv = [sys.executable, "-m", "node.cli", "serve", "--home", str(self.home), "--port", "0", *sync,
                "--no-browser", "--name", self.name]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("CREWNODE_HOME", None)
        if self.host is None:
            env["CREWNODE_DISCOVERY_INTERFACES"] = "127.0.0.1"
        else:
            env.pop("CREWNODE_DISCOVERY_INTERFACES", None)   # the whole namespace: its eth0
        env.update(self.extra_env)
        with open(self.log, "ab") as log:
            kwargs = dict(cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            if self.host is None:
                self.proc = subprocess.Popen(argv, **kwargs)
            else:
                self.proc = self.lan.run(self.host.index, argv, **kwargs)
        self.port = self.token = None
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> LanNode:
        """Wait until ports.json is written and the API answers; read token and member id."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self} exited with {self.proc.returncode} while starting\n{self.log_tail()}")
            try:
                ports = json.loads((self.home / "ports.json").read_text())
                self.port, self.sync_port = int(ports["port"]), int(ports["sync_port"])
                self.token = (self.home / "token").read_text().strip()
                status, me = self.api("GET", "/api/me", timeout=2)
                if status == 200:
                    self.id = me["id"]
                    return self
            except (OSError, ValueError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self} not ready after {timeout:g} s\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (a clean stop: goodbye sent), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def close(self) -> None:
        """Stop the process and the namespace thread."""
        try:
            self.stop()
        finally:
            self._ns_thread.shutdown(wait=False)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"(no log at {self.log})"
        return f"--- {self.log} ---\n" + "\n".join(text[-lines:])

    # -- the API, from inside the namespace ------------------------------------------------------

    def api(self, method: str, path: str, body=None, expect=None, timeout: float = 30):
        """``(status, answer)`` of one API call; with ``expect``, another status raises."""
        status, answer = self._ns_thread.submit(self._request, method, path, body, timeout).result()
        if expect is not None and status not in ((expect,) if isinstance(expect, int) else expect):
            tail = f"\n{self.log_tail()}" if status >= 500 else ""
            raise AssertionError(f"{method} {path} on {self}: {status}, expected {expect}: {answer}{tail}")
        return status, answer

    def _request(self, method: str, path: str, body, timeout: float):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str):
        """The answer of a GET that must succeed."""
        return self.api("GET", path, expect=200)[1]

    def post(self, path: str, body: dict, expect=(200, 201, 202)):
        return self.api("POST", path, body, expect=expect)[1]


__all__ = ["LanNode", "SYNC_PORT"]
