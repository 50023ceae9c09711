"""Helpers shared by the tests.

Import them as ``from support import wait_for``: tests/conftest.py puts this folder on
``sys.path`` (pyproject.toml is not ours to change, so no ``pythonpath`` setting there).
``wait_for`` is also a fixture of the same name, for tests that prefer fixtures.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable

__all__ = ["read_until_closed", "wait_for"]


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10,
    interval: float = 0.05,
    message: str | Callable[[], str] | None = None,
    ignore: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Any:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raise AssertionError after ``timeout`` seconds, saying ``message`` (a string, or a callable
    giving one, evaluated only on failure, so it can describe the state at that moment) and the
    last value seen. Exceptions of the types in ``ignore`` count as "not yet"; any other
    exception propagates at once. The predicate is always called at least once, and once more
    at the deadline.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    last_exc: BaseException | None = None
    while True:
        expired = time.monotonic() >= deadline
        try:
            last = predicate()
            last_exc = None
        except ignore as exc:  # type: ignore[misc]
            last, last_exc = None, exc
        else:
            if last:
                return last
        if expired:
            break
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    text = message() if callable(message) else message
    what = text or getattr(predicate, "__name__", "condition")
    detail = f"last error {last_exc!r}" if last_exc is not None else f"last value {last!r}"
    raise AssertionError(f"timed out after {timeout:g} s waiting for: {what} ({detail})")


def read_until_closed(sock, timeout: float) -> bytes:
    """Everything a server sends on `sock` until it closes; fails if it keeps the connection
    open past `timeout` seconds (a node must drop a hostile connection, not hang on it)."""
    end = time.monotonic() + timeout
    chunks = []
    while True:
        remaining = end - time.monotonic()
        assert remaining > 0, "the node kept a hostile connection open"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        except socket.timeout:
            raise AssertionError("the node kept a hostile connection open") from None
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
