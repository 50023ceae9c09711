"""One process at a time on a home: a second node on it is refused, and a command line waits for
the busy node that holds it rather than writing to its store behind its back (node.homelock)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from test_carry import REPO, agreement_titles, congregation_with, crewnode, member_id, speak


def test_a_second_node_on_the_same_home_is_refused(node_factory):
    ada = node_factory(name="Ada")
    ports = (ada.home / "ports.json").read_text()
    second = crewnode("serve", "--home", ada.home, "--port", "0", "--sync-port", "0", "--sync-host", "127.0.0.1",
                      "--no-discovery", "--no-browser", check=False, timeout=60)
    assert "already running for" in second.stderr and "Traceback" not in second.stderr
    # the first node goes on, its ports as they were
    assert (ada.home / "ports.json").read_text() == ports
    cid = ada.api("POST", "/api/congregations", {"name": "Still here"}, expect=201)[1]["id"]
    assert ada.api("GET", f"/api/congregations/{cid}", expect=200)[1]["name"] == "Still here"


def test_a_command_waits_for_a_busy_node_rather_than_going_round_it(node_factory, tmp_path):
    ada, bob = node_factory(name="Ada"), node_factory(name="Bob")
    cid = congregation_with(ada, bob)
    speak(bob, cid, "hello")
    bob.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)
    speak(ada, cid, "Carried while Bob's node was busy")
    bundle = tmp_path / "b.crewbundle"
    crewnode("bundle", "export", bundle, "--for", member_id(bob), "--home", ada.home)
    # Bob's node does not answer for a while (as in a long recompute): the import waits for it.
    bob.proc.send_signal(signal.SIGSTOP)
    try:
        env = {k: v for k, v in os.environ.items() if k != "CREWNODE_HOME"}
        importing = subprocess.Popen([sys.executable, "-m", "node.cli", "bundle", "import", str(bundle),
                                      "--home", str(bob.home)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and importing.poll() is None:
            time.sleep(0.1)
    finally:
        bob.proc.send_signal(signal.SIGCONT)
    out, err = importing.communicate(timeout=120)
    assert importing.returncode == 0, err
    assert "imported 1 new entries" in out
    assert "Carried while Bob's node was busy" in agreement_titles(bob, cid)   # taken by the node itself
