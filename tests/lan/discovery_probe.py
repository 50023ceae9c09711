"""Run one Discovery and print its events as JSON lines on stdout.

Started by the LAN tests inside a network namespace:

    python discovery_probe.py PORT

Prints {"event": "started", "id": ..., "port": ...} once advertised, then
{"event": "found", "id", "addresses", "port"} and {"event": "lost", "id"} as
peers come and go. Stops cleanly (goodbye sent) when stdin closes or on
SIGTERM, printing {"event": "stopped"}.

The env var CREWNODE_MEMBER_NAME stands in for the member's name that a real
node holds in memory; the tests check that it never reaches the wire.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root

from sync.discovery import Discovery  # noqa: E402

_out_lock = threading.Lock()


def emit(**event) -> None:
    """Print one event as a JSON line, whole, and flush at once."""
    with _out_lock:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()


def main() -> None:
    """Advertise on the given port until stdin closes or SIGTERM arrives."""
    logging.basicConfig(level=os.environ.get("PROBE_LOG", "WARNING"), stream=sys.stderr)
    port = int(sys.argv[1])
    member_name = os.environ.get("CREWNODE_MEMBER_NAME", "")  # held, never advertised
    rescan = float(os.environ.get("PROBE_RESCAN", "5"))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    d = Discovery(
        port,
        on_found=lambda iid, addrs, p: emit(event="found", id=iid, addresses=addrs, port=p),
        on_lost=lambda iid: emit(event="lost", id=iid),
        rescan_interval=rescan,
    )
    d.start()
    emit(event="started", id=d.instance_id, port=port, holds_name=bool(member_name))

    def wait_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the test closed our stdin
        done.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    done.wait()
    d.stop()
    emit(event="stopped", id=d.instance_id)


if __name__ == "__main__":
    main()
