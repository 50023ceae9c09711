"""A gathering of N real nodes: how fast does a change made everywhere reach everyone? (issue 5)

Starts N `crewnode serve` processes, each in its own network namespace on one bridge (as root; or
with --loopback, or when namespaces cannot be made, all on loopback with discovery narrowed to
127.0.0.1), with discovery on. Node 0 founds a congregation and makes one invite code per other
node; each other node joins with only its code (no address: it finds a member's node on the LAN).
Once every node holds the same history, every node writes (one agreement each, or --writes), all
at once, and the benchmark measures the time from the last write until every node shows every
new agreement. Nothing asks for a sync: discovery and automatic sync do all of it.

    .venv/bin/python bench/gathering.py --nodes 20 [--writes 1] [--loopback] [--keep]

bytes_per_node: bytes each node sent during the measured phase (from the first write until the
last node held everything), the mean over nodes, from the counters of each namespace's link as
the bridge sees it; it includes mDNS and the periodic syncs of that window. On loopback the
counter is the host's `lo`, shared by all nodes, by this script's own API calls and by anything
else running, divided by N: a rough upper bound. cpu_s: CPU seconds all node processes used in
that phase ("cores": how many this machine has). Other fields: write_s (first to last
write), median_node_s, entries_per_node (the same on every node, checked), start_s, discover_s,
join_s (setup phases, not measured).
The last line printed is one JSON object. Target: 20 nodes converge within 10 s.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lan import netns  # noqa: E402
from tests.lan.lan_node import LanNode  # noqa: E402

POLL_S = 0.1
TIMEOUT_S = 120.0
NAMES = ["Ada", "Bea", "Cai", "Dov", "Eli", "Fen", "Gus", "Hal", "Ida", "Jon", "Kai", "Lea", "Mo", "Nia",
         "Oli", "Pia", "Quin", "Rae", "Sol", "Tam", "Uma", "Vic", "Wren", "Xia", "Yara", "Zed"]


def name_of(i: int) -> str:
    return NAMES[i % len(NAMES)] + (str(i // len(NAMES)) if i >= len(NAMES) else "")


def say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def wait(what: str, predicate, timeout: float = TIMEOUT_S, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"gathering: timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Counters:
    """Bytes sent by each node: its link's counters (namespaces) or loopback's (shared)."""

    def __init__(self, lan):
        self.lan = lan

    def sent(self) -> list[int]:
        if self.lan is None:
            for line in Path("/proc/net/dev").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name.strip() == "lo":
                    return [int(rest.split()[8])]        # transmit bytes
            return [0]
        # The bridge's end of host i's veth receives what host i sends.
        out = subprocess.run(["ip", "-n", self.lan.bridge_ns, "-j", "-s", "link", "show"],
                             capture_output=True, text=True, check=True).stdout
        by_name = {link["ifname"]: link["stats64"]["rx"]["bytes"] for link in json.loads(out)}
        return [by_name[f"v{h.index}"] for h in self.lan.hosts]


def cpu_seconds(nodes) -> float:
    """User + system CPU time the node processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for node in nodes:
        try:
            fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def all_at_once(nodes, fn):
    """fn(node) for every node in parallel (each node's own API thread); the results in order."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        return list(pool.map(fn, nodes))


def titles_of(node: LanNode, cid: str) -> set[str]:
    status, view = node.api("GET", f"/api/congregations/{cid}")
    return {a["title"] for a in view["agreements"]} if status == 200 else set()


def history_len(node: LanNode, cid: str) -> int:
    status, history = node.api("GET", f"/api/congregations/{cid}/history")
    return len(history) if status == 200 else -1


def run(args, lan, home_dir: Path) -> dict:
    n = args.nodes
    nodes = [LanNode(lan, i, home_dir / f"home-{i}", name_of(i)) for i in range(n)]
    try:
        t0 = time.monotonic()
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout=TIMEOUT_S)
        start_s = time.monotonic() - t0
        say(f"gathering: {n} nodes serving after {start_s:.1f} s")

        # Found each other with no address given: every node lists the N-1 others.
        t0 = time.monotonic()
        wait("every node to find the others",
             lambda: all(len([p for p in ps if p["source"] == "lan"]) >= n - 1
                         for ps in all_at_once(nodes, lambda nd: nd.get("/api/peers"))))
        discover_s = time.monotonic() - t0
        say(f"gathering: all found each other in {discover_s:.1f} s more")

        # One congregation: every other node joins with only an invite code.
        t0 = time.monotonic()
        founder = nodes[0]
        cid = founder.post("/api/congregations", {"name": "Gathering", "purpose": "a benchmark"}, expect=201)["id"]
        codes = [founder.post(f"/api/congregations/{cid}/invites", {"note": nd.name}, expect=201)["code"]
                 for nd in nodes[1:]]
        all_at_once(list(zip(nodes[1:], codes)), lambda nc: nc[0].post("/api/join", {"code": nc[1]}, expect=202))
        wait("every node to know every member",
             lambda: all(len(v[1]["members"]) == n if v[0] == 200 else False
                         for v in all_at_once(nodes, lambda nd: nd.api("GET", f"/api/congregations/{cid}"))))
        lengths = wait("every node to hold the same history",
                       lambda: (ls := all_at_once(nodes, lambda nd: history_len(nd, cid)))
                       and len(set(ls)) == 1 and ls)
        join_s = time.monotonic() - t0
        say(f"gathering: one congregation of {n}, {lengths[0]} entries everywhere, after {join_s:.1f} s")
        time.sleep(args.settle)

        # The measured phase: everyone writes at once; then wait until everyone holds everything.
        want = {f"{nd.name} writes {k}" for nd in nodes for k in range(args.writes)}
        before = Counters(lan).sent()
        cpu_before = cpu_seconds(nodes)
        t_first = time.monotonic()

        def write(node: LanNode) -> float:
            for k in range(args.writes):
                node.post(f"/api/congregations/{cid}/agreements",
                          {"title": f"{node.name} writes {k}", "text": f"entry {k} of {node.name}"}, expect=201)
            return time.monotonic()

        t_last = max(all_at_once(nodes, write))
        done_at: dict[int, float] = {}
        deadline = time.monotonic() + TIMEOUT_S
        while len(done_at) < n:
            if time.monotonic() > deadline:
                missing = {nd.name: len(want - titles_of(nd, cid)) for i, nd in enumerate(nodes) if i not in done_at}
                raise SystemExit(f"gathering: no convergence after {TIMEOUT_S:g} s; missing: {missing}")
            waiting = [i for i in range(n) if i not in done_at]
            held = all_at_once([nodes[i] for i in waiting], lambda nd: want <= titles_of(nd, cid))
            now = time.monotonic()
            for i, ok in zip(waiting, held):
                if ok:
                    done_at[i] = now
            if len(done_at) < n:
                time.sleep(POLL_S)
        after = Counters(lan).sent()
        cpu_s = cpu_seconds(nodes) - cpu_before
        sent = [b - a for a, b in zip(before, after)]
        per_node = statistics.mean(sent) / (n if lan is None else 1)
        lengths = all_at_once(nodes, lambda nd: history_len(nd, cid))
        if len(set(lengths)) != 1:
            raise SystemExit(f"gathering: histories differ in length: {lengths}")
        times = sorted(t - t_last for t in done_at.values())
        return {
            "nodes": n,
            "converge_s": round(max(0.0, times[-1]), 2),
            "bytes_per_node": int(per_node),
            "mode": "loopback" if lan is None else "namespaces",
            "writes_per_node": args.writes,
            "write_s": round(t_last - t_first, 2),
            "median_node_s": round(max(0.0, statistics.median(times)), 2),
            "entries_per_node": lengths[0],
            "cpu_s": round(cpu_s, 1),
            "cores": os.cpu_count(),
            "max_bytes_node": int(max(sent)) if lan is not None else None,
            "start_s": round(start_s, 1),
            "discover_s": round(discover_s, 1),
            "join_s": round(join_s, 1),
        }
    finally:
        for node in nodes:
            node.proc and node.proc.poll() is None and node.proc.send_signal(signal.SIGTERM)
        for node in nodes:
            node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--writes", type=int, default=1, help="agreements each node writes (default 1)")
    parser.add_argument("--settle", type=float, default=1.0, help="quiet seconds before the writes")
    parser.add_argument("--loopback", action="store_true", help="all nodes on loopback, no namespaces")
    parser.add_argument("--keep", action="store_true", help="keep the homes (their logs show each node)")
    args = parser.parse_args()
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    # A SIGTERM ends us through the finally clauses below, which stop the nodes and remove namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    home_dir = Path(tempfile.mkdtemp(prefix="crewnode-gathering-"))
    use_ns = not args.loopback and netns._usable
    if not args.loopback and not use_ns:
        say(f"gathering: {netns._why}; running on loopback instead")
    try:
        if use_ns:
            netns.cleanup_stale()
            with netns.Lan(args.nodes) as lan:
                result = run(args, lan, home_dir)
        else:
            result = run(args, None, home_dir)
    finally:
        if args.keep:
            say(f"gathering: homes and logs kept in {home_dir}")
        else:
            shutil.rmtree(home_dir, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
