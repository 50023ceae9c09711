"""Fixtures shared by every test folder.

- ``node_factory``: start real ``crewnode serve`` processes on loopback (see ``NodeFactory``).
- ``browser`` (session) and ``page`` (per test): headless Debian Chromium through Playwright.
- ``wait_for``: the helper from ``tests/support.py``, as a fixture.

``tests/support.py`` is importable as ``from support import wait_for``: this file puts the tests
folder on ``sys.path`` (pyproject.toml has no ``pythonpath`` setting, and we keep it that way).

Tests under ``tests/lan`` and ``tests/browser`` get the ``lan`` / ``browser`` marker from their
folder, so ``-m "not lan"`` works without decorating each test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:  # makes `from support import ...` work from any test file
    sys.path.insert(0, str(TESTS_DIR))

from support import wait_for as _wait_for  # noqa: E402

STARTUP_TIMEOUT = 15.0  # seconds for a node to write ports.json and answer /api/health
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL
LOG_NAME = "node.log"  # the node's stdout+stderr, appended to across restarts, inside its home

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Requests to our own nodes never go through a proxy, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_UNSET = object()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


# --------------------------------------------------------------------------------------------
# markers from folders, and each test's outcome for fixtures' teardown

_FOLDER_MARKERS = {"lan": "lan", "browser": "browser"}
_REPORTS = pytest.StashKey[dict]()


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            folder = Path(item.path).resolve().relative_to(TESTS_DIR).parts[0]
        except (ValueError, IndexError):
            continue
        marker = _FOLDER_MARKERS.get(folder)
        if marker and not item.get_closest_marker(marker):
            item.add_marker(marker)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _test_failed(request) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


# --------------------------------------------------------------------------------------------
# real nodes


class Node:
    """One ``crewnode serve`` process on loopback, and the home it serves.

    Attributes: ``home`` (Path), ``name``, ``port``, ``sync_port``, ``token``, ``url`` (the page
    with ``?token=``), ``base`` (``http://127.0.0.1:PORT``), ``sync_address``
    (``127.0.0.1:SYNC_PORT``, for ``POST /api/sync``), ``proc`` (subprocess.Popen), ``log``
    (Path of the captured output).
    """

    def __init__(self, home: Path, name: str | None, extra_args=()):
        self.home = Path(home)
        self.name = name
        self.extra_args = tuple(str(a) for a in extra_args)
        self.log = self.home / LOG_NAME
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.sync_port: int | None = None
        self.token: str | None = None
        self.url: str | None = None
        self.base: str | None = None
        self.sync_address: str | None = None

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return f"<Node {self.name!r} {self.home} port={self.port} sync_port={self.sync_port} {state}>"

    # -- process control ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _launch(self, name: str | None) -> "Node":
        # The home folder exists (holding node.log) before the first serve: serve must treat a
        # home without an identity as new.
        self.home.mkdir(parents=True, exist_ok=True)
        ports_file = self.home / "ports.json"
        ports_file.unlink(missing_ok=True)  # never read a previous run's ports
        args = [
            sys.executable, "-m", "node.cli", "serve",
            "--home", str(self.home),
            "--port", "0", "--sync-port", "0", "--sync-host", "127.0.0.1",
            "--no-discovery", "--no-browser",
        ]
        if name is not None:
            args += ["--name", name]
        args += list(self.extra_args)
        with open(self.log, "ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                args, cwd=REPO_DIR, env=_child_env(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.port = self.sync_port = self.token = self.url = self.base = None
        try:
            self._wait_ready(ports_file)
            self.token = _read_token(self.home)
        except BaseException:
            self.kill()
            raise
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/?token={urllib.parse.quote(self.token, safe='')}"
        self.sync_address = f"127.0.0.1:{self.sync_port}"
        return self

    def _wait_ready(self, ports_file: Path) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = "ports.json not written"
        while True:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(
                    f"node {self.name!r} exited with code {code} during startup\n{self.log_tail()}")
            try:
                ports = json.loads(ports_file.read_text())
                port, sync_port = int(ports["port"]), int(ports["sync_port"])
            except FileNotFoundError:
                pass
            except (ValueError, KeyError, TypeError) as exc:  # half-written, or wrong shape
                last = f"ports.json unreadable: {exc!r}"
            else:
                status = _health(port)
                if status == 200:
                    self.port, self.sync_port = port, sync_port
                    return
                last = f"GET /api/health on port {port}: {status}"
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"node {self.name!r} not ready after {STARTUP_TIMEOUT:g} s ({last})\n"
                    f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with open(self.log, "ab") as log:
                    log.write(f"\n===== no exit {timeout:g} s after SIGTERM: SIGKILL\n".encode())
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash would. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def restart(self, name: str | None = None, extra_args=None) -> "Node":
        """Stop (if running) and serve the same home again; this object is updated in place.

        ``--name`` is passed again only when ``name`` is given (it would rename the member), and
        the previous extra_args are reused unless new ones are given. Ports are new.
        """
        self.stop()
        if extra_args is not None:
            self.extra_args = tuple(str(a) for a in extra_args)
        if name is not None:
            self.name = name
        return self._launch(name)

    # -- HTTP ---------------------------------------------------------------------------------

    def api(self, method: str, path: str, body=None, expect=None, *, token=_UNSET,
            headers: dict | None = None, timeout: float = 30):
        """Call the node's HTTP API; returns ``(status, data)``.

        ``data`` is the parsed JSON answer, else its text (``None`` when empty). ``body`` is sent
        as JSON. With ``expect`` (a status, or a collection of them) a different status raises
        AssertionError showing the answer. ``token=None`` sends no Authorization header;
        ``token="x"`` sends that one instead of the node's.
        """
        if self.port is None:
            raise AssertionError(f"node {self.name!r} is not serving")
        url = path if path.startswith(("http://", "https://")) else f"{self.base}/{path.lstrip('/')}"
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Accept": "application/json"}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        tok = self.token if token is _UNSET else token
        if tok:
            hdrs["Authorization"] = f"Bearer {tok}"
        hdrs.update(headers or {})
        req = urllib.request.Request(url, data=data, method=method.upper(), headers=hdrs)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode("utf-8", errors="replace")
        try:
            answer = json.loads(text) if text.strip() else None
        except ValueError:
            answer = text
        if expect is not None:
            allowed = (expect,) if isinstance(expect, int) else tuple(expect)
            if status not in allowed:
                raise AssertionError(
                    f"{method.upper()} {path} on node {self.name!r}: status {status}, "
                    f"expected {expect}; body: {text[:2000]}")
        return status, answer

    def log_tail(self, lines: int = 60) -> str:
        try:
            content = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"(no log at {self.log})"
        return f"--- last {lines} lines of {self.log} ---\n" + "\n".join(content[-lines:])


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # so the log is complete when we read its tail
    env.pop("CREWNODE_HOME", None)  # every node gets an explicit --home
    return env


def _health(port: int):
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/api/health", timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError) as exc:  # refused, reset, timed out, not HTTP yet
        return repr(exc)


def _read_token(home: Path) -> str:
    args = [sys.executable, "-m", "node.cli", "token", "--home", str(home)]
    done = subprocess.run(args, cwd=REPO_DIR, env=_child_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=STARTUP_TIMEOUT)
    token = done.stdout.strip()
    if done.returncode != 0 or not token:
        raise AssertionError(
            f"`crewnode token --home {home}` exited {done.returncode} printing {done.stdout!r}; "
            f"stderr:\n{done.stderr}")
    return token


class NodeFactory:
    """``node_factory.start(home=None, name="Ada", extra_args=())`` -> a ready ``Node``.

    Each node without a given home gets a fresh one under the test's tmp_path. Every node
    started is stopped when the test ends; a failed test also shows each node's log tail.
    """

    def __init__(self, tmp_path: Path):
        self._tmp_path = tmp_path
        self.nodes: list[Node] = []

    def start(self, home=None, name: str = "Ada", extra_args=()) -> Node:
        if home is None:
            slug = re.sub(r"[^A-Za-z0-9]+", "-", name or "node").strip("-") or "node"
            home = self._tmp_path / f"home{len(self.nodes) + 1}-{slug}"
        node = Node(Path(home), name, extra_args)
        self.nodes.append(node)
        return node._launch(name)

    __call__ = start

    def stop_all(self) -> None:
        for node in self.nodes:
            try:
                node.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping {node!r} failed: {exc!r}")

    def show_logs(self) -> None:
        """Print the log tail of every node started."""
        for node in self.nodes:
            print(f"\n{node!r}\n{node.log_tail()}")

    @classmethod
    @contextlib.contextmanager
    def for_module(cls, tmp_path: Path):
        """A factory for a module's shared nodes: their logs shown if setting them up fails,
        every node stopped at the end."""
        factory = cls(tmp_path)
        try:
            yield factory
        except BaseException:
            factory.show_logs()
            raise
        finally:
            factory.stop_all()


@pytest.fixture
def node_factory(tmp_path, request):
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()
        if _test_failed(request):
            factory.show_logs()


# --------------------------------------------------------------------------------------------
# headless Chromium


def _browser_unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"{reason}; CI=true, so browser tests must run (.ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        _browser_unavailable(f"{CHROMIUM} is missing (Debian package `chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        _browser_unavailable(f"playwright is not installed ({exc}); run `bash scripts/setup`")
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except BaseException:
        pw.stop()
        raise
    try:
        yield chromium
    finally:
        chromium.close()
        pw.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def wait_for():
    """The ``support.wait_for`` function: ``wait_for(predicate, timeout=10, interval=0.05, message=...)``."""
    return _wait_for
