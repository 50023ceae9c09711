"""Peer sync over the real HTTPS transport, with a big congregation (issue 3).

    .venv/bin/python bench/sync.py --entries 50000

1. Builds a congregation history of N entries by 200 members: the founder's genesis, an invite
   and an admission for each of the other 199, a few crews (5 to 8 members each), and then
   members' entries at random: edits of the shared content (real pycrdt updates made in each
   member's own pycrdt Doc, so there are 200 writers), proposals and responses, commitments and
   their status. Entries are signed with node.entries.build_entry and ingested into the
   founder's home in big batches (no HTTP).
2. Serves the founder's home and, next to it, an empty home of another member (identity only;
   like the founder, a member of the congregation and of every crew, so it may receive all N
   entries), each with
   `crewnode serve` on loopback, and times `POST /api/sync` on the empty node: a full sync
   over HTTPS (TLS 1.3, mutual authentication; median of --runs, each into a new empty home),
   then no-op syncs (nothing new; median of 7). With --threads, also the receiving node's CPU
   by thread (its node thread, the store's writer, and the threads gone by then).
3. Stops the founder's node and times its start-up: from launching `crewnode serve` on that
   home until /api/health answers (median of 3), and reports resident memory (the largest of
   the receiving node after the full sync and the restarted node).
4. Baseline, in the same run: the same pycrdt updates (every entry that carries one, in the
   order they were synced), each applied one by one to a bare pycrdt Doc per document, in
   memory, right before and right after each full sync. Each full sync is set against the mean
   of its own two baselines, and the ratio reported is the median of those: this machine's
   speed varies by tens of percent from one second to the next, and even more between a
   baseline measured a minute apart from the sync (ratios from 4.4 to 10 for the same code
   when the baseline came last). Medians of the syncs and of the baselines are reported too.

The last line printed is one JSON object:
    {"entries", "full_sync_s", "entries_per_s", "replay_baseline_s", "ratio_vs_replay",
     "noop_sync_ms", "startup_s", "rss_mb"}
Targets with N=50000 on a 2-core machine: entries_per_s >= 20000, ratio_vs_replay <= 6,
noop_sync_ms <= 50, startup_s <= 2.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from pycrdt import Doc, Map  # noqa: E402

from node.entries import build_entry  # noqa: E402
from node.identity import new_device, raw_public  # noqa: E402
from node.ids import b32, new_id  # noqa: E402
from node.rules import bind_record_id, invite_message  # noqa: E402
from node.service import Service  # noqa: E402

MEMBERS = 200
CREWS = 4
BATCH = 5_000
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
WORDS = ("we share the tools and the meals and keep the garden open to every neighbour who asks "
         "for help with the roof the rota the money and the children on market days").split()


def log(message: str) -> None:
    print(message, flush=True)


# -- building the history ----------------------------------------------------------------------


class Writer:
    """One member: a device that signs entries, and its own pycrdt Doc per document."""

    def __init__(self, index: int, rng: random.Random):
        self.index = index
        self.person_key = Ed25519PrivateKey.generate()
        self.identity = new_device(self.person_key)
        self.name = f"Member {index:03d}"
        self.heads: dict[str, tuple[int, str]] = {}
        self.docs: dict[str, tuple[Doc, Map]] = {}
        self.rng = rng

    @property
    def id(self) -> str:
        return self.identity.person_id

    def write(self, doc: str, at: int, op: dict, body: bytes = b""):
        """The next entry of my log in `doc` ("": a new document's first entry)."""
        seq, prev = self.heads.get(doc, (0, "")) if doc else (0, "")
        bind_record_id(op, doc, self.identity.device_id, seq + 1)
        entry = build_entry(self.identity, doc, seq + 1, prev, at, op, body, with_cert=seq == 0)
        self.heads[entry.doc] = (entry.seq, entry.hash)
        return entry

    def edit(self, doc: str, genesis_body: bytes) -> bytes:
        """A pycrdt update of the shared content, made in my own Doc of that document."""
        if doc not in self.docs:
            ydoc = Doc()
            ydoc.apply_update(genesis_body)
            self.docs[doc] = (ydoc, ydoc.get("meta", type=Map))
        ydoc, meta = self.docs[doc]
        before = ydoc.get_state()
        key = self.rng.choice(["purpose", "agenda", "notes", "notes", "name"])
        words = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(4, 10)))
        with ydoc.transaction():
            meta[key] = f"{words} ({self.name})" if key != "name" else f"Riverside {self.rng.randint(1, 99)}"
        return ydoc.get_update(before)


def genesis_body(name: str, purpose: str) -> bytes:
    scratch = Doc()
    meta = scratch.get("meta", type=Map)
    with scratch.transaction():
        meta["name"] = name
        meta["purpose"] = purpose
    return scratch.get_update()


def build_history(n: int, rng: random.Random) -> tuple[list, list, dict]:
    """(writers, entries in order, summary) of a congregation history of exactly n entries."""
    writers = [Writer(i, rng) for i in range(MEMBERS)]
    founder = writers[0]
    clock = [1_767_225_600_000]                    # 2026-01-01; one entry per millisecond

    def at() -> int:
        clock[0] += 1
        return clock[0]

    out = []
    bodies: dict[str, bytes] = {}
    g_body = genesis_body("Riverside", "Meet by the river")
    genesis = founder.write("", at(), {"t": "genesis", "type": "congregation", "nonce": new_id(),
                                       "name": founder.name}, g_body)
    cid = genesis.hash
    bodies[cid] = g_body
    out.append(genesis)
    members = [founder]
    for writer in writers[1:]:
        secret = Ed25519PrivateKey.generate()
        key = b32(raw_public(secret))
        out.append(founder.write(cid, at(), {"t": "invite", "key": key, "expires": clock[0] + 7 * 86_400_000,
                                             "note": ""}))
        out.append(founder.write(cid, at(), {"t": "admit", "member": writer.id, "name": writer.name, "invite": key,
                                             "proof": b32(secret.sign(invite_message(key, writer.id)))}))
        members.append(writer)
    # A few crews. The founder (whose node serves the sync) and writers[1] (whose empty node
    # receives it) are in every one: a node holds only documents its member belongs to.
    crews: dict[str, list] = {}
    for c in range(CREWS):
        size = rng.randint(5, 8)
        chosen = [founder, writers[1]] + rng.sample(writers[2:], size - 2)
        creator = chosen[-1]
        body = genesis_body(f"Crew {c + 1}", "feelings and money")
        crew = creator.write("", at(), {"t": "genesis", "type": "crew", "congregation": cid, "nonce": new_id(),
                                        "name": creator.name, "members": [w.id for w in chosen]}, body)
        bodies[crew.hash] = body
        crews[crew.hash] = chosen
        out.append(crew)
    agreements: dict[str, list] = {cid: []}
    commitments: dict[str, list] = {crew: [] for crew in crews}
    for crew in crews:
        agreements[crew] = []
    while len(out) < n:
        roll = rng.random()
        in_crew = roll < 0.12
        doc = rng.choice(list(crews)) if in_crew else cid
        scope = crews[doc] if in_crew else members
        writer = rng.choice(scope)
        kind = rng.random()
        if kind < 0.86:
            kind = "meta"
        elif kind < 0.90 or not agreements[doc]:
            kind = "propose"
        elif kind < 0.96 or not in_crew:
            kind = "respond"
        else:
            kind = "status" if kind >= 0.98 and commitments[doc] else "commit"
        if kind == "meta":
            out.append(writer.write(doc, at(), {"t": "meta"}, writer.edit(doc, bodies[doc])))
        elif kind == "propose":
            entry = writer.write(doc, at(), {"t": "propose", "agreement": None, "kind": "agreement",
                                             "title": " ".join(rng.choice(WORDS) for _ in range(4)),
                                             "text": " ".join(rng.choice(WORDS) for _ in range(20)),
                                             "review_by": None, "entitled": [w.id for w in scope]})
            agreements[doc].append((entry.op["agreement"], entry.hash))
            out.append(entry)
        elif kind == "respond":
            aid, version = rng.choice(agreements[doc])
            out.append(writer.write(doc, at(), {"t": "respond", "agreement": aid, "version": version,
                                                "response": rng.choice(["consent", "consent", "stand_aside"]),
                                                "reason": ""}))
        elif kind == "commit":
            entry = writer.write(doc, at(), {"t": "commit", "commitment": None,
                                             "what": " ".join(rng.choice(WORDS) for _ in range(5)),
                                             "due": "2026-12-01", "by": writer.id})
            commitments[doc].append(entry.op["commitment"])
            out.append(entry)
        else:
            out.append(writer.write(doc, at(), {"t": "status", "commitment": rng.choice(commitments[doc]),
                                                "status": rng.choice(["done", "open", "released"])}))
    out = out[:n]
    summary = {"congregation": cid, "crews": list(crews),
               "with_pycrdt_update": sum(1 for e in out if e.body)}
    return writers, out, summary


def fill_home(home: Path, founder: Writer, entries: list) -> None:
    """Ingest the history into the founder's home in big batches, as sync would."""
    founder.identity.save(home)
    service = Service(home)
    try:
        for start in range(0, len(entries), BATCH):
            result = service.ledger.ingest([e.raw for e in entries[start:start + BATCH]])
            if result.refused or result.pending:
                raise SystemExit(f"the generated history was not accepted: {result.as_dict()}")
    finally:
        service.close()


# -- real nodes ---------------------------------------------------------------------------------


class Served:
    """`crewnode serve` on a home, on loopback with free ports."""

    def __init__(self, home: Path, env: dict | None = None):
        self.home = home
        ports = home / "ports.json"
        ports.unlink(missing_ok=True)
        self.started = time.perf_counter()
        self.log = open(home / "node.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--home", str(home), "--port", "0", "--sync-port", "0",
             "--sync-host", "127.0.0.1", "--no-discovery", "--no-browser"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"crewnode serve on {home} exited with {self.proc.returncode}; see {home}/node.log")
            try:
                info = json.loads(ports.read_text())
                with _OPENER.open(f"http://127.0.0.1:{info['port']}/api/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"crewnode serve on {home} did not answer /api/health")
            time.sleep(0.005)
        self.ready_s = time.perf_counter() - self.started
        self.port, self.sync_port = info["port"], info["sync_port"]
        self.token = (home / "token").read_text().strip()

    @property
    def sync_address(self) -> str:
        return f"127.0.0.1:{self.sync_port}"

    def api(self, method: str, path: str, body=None, timeout: float = 600):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            raise SystemExit(f"{method} {path}: {err.code} {err.read()[:500]!r}") from None

    def cpu_s(self) -> float:
        """CPU time (user + system) the node's process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def thread_cpu_s(self) -> dict[str, float]:
        """CPU time so far of each of the process's threads living now, by "name tid"."""
        out = {}
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                name = (task / "comm").read_text().strip()
            except OSError:                                  # the thread ended meanwhile
                continue
            out[f"{name} {task.name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# Python 3.11 does not give the OS its threads' names: this names them, for --threads only.
_NAME_THREADS = """import ctypes, threading
_prctl = ctypes.CDLL(None).prctl
_run = threading.Thread._bootstrap_inner
def _named(self):
    _prctl(15, self.name[:15].encode(), 0, 0, 0)    # PR_SET_NAME
    return _run(self)
threading.Thread._bootstrap_inner = _named
"""


def named_threads_env(work: Path) -> dict:
    """The environment for a node whose threads carry their Python names in /proc."""
    folder = work / "named-threads"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(_NAME_THREADS)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def threads_used(before: dict, after: dict, process_s: float) -> str:
    """CPU seconds each thread used between two `thread_cpu_s` readings; threads that ended
    meanwhile (a sync's read-ahead thread) are counted together."""
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    used = {name.rsplit(" ", 1)[0]: s for name, s in sorted(used.items(), key=lambda kv: -kv[1]) if s >= 0.01}
    ended = process_s - sum(used.values())
    return (", ".join(f"{name} {s:.2f} s" for name, s in used.items())
            + f", threads that ended {max(ended, 0):.2f} s (the request's, which checks the batches, and the read-ahead)")


# -- the baseline ---------------------------------------------------------------------------------


def replay_baseline(entries: list) -> tuple[float, int]:
    """Seconds to apply every entry's pycrdt update one by one to a bare Doc per document."""
    updates = [(e.doc, e.body) for e in entries if e.body]
    docs: dict[str, Doc] = {}
    started = time.perf_counter()
    for doc, body in updates:
        ydoc = docs.get(doc)
        if ydoc is None:
            ydoc = docs[doc] = Doc()
        ydoc.apply_update(body)
    return time.perf_counter() - started, len(updates)


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=50_000, help="entries in the history (default 50000)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--runs", type=int, default=3, help="full syncs, each into a new empty home (median reported)")
    parser.add_argument("--threads", action="store_true",
                        help="also give the receiving node's CPU per thread (threads named for the OS, Linux only)")
    args = parser.parse_args()
    if args.entries < MEMBERS * 2 + CREWS + 1:
        parser.error(f"--entries must be at least {MEMBERS * 2 + CREWS + 1}: the admissions alone take that many")
    work = Path(tempfile.mkdtemp(prefix="crewnode-bench-sync-", dir=args.dir))
    servers: list[Served] = []
    try:
        rng = random.Random(args.seed)
        started = time.perf_counter()
        writers, entries, summary = build_history(args.entries, rng)
        log(f"built {len(entries)} entries by {MEMBERS} members ({len(summary['crews'])} crews, "
            f"{summary['with_pycrdt_update']} carry a pycrdt update) in {time.perf_counter() - started:.1f} s")
        full_home = work / "founder"
        started = time.perf_counter()
        fill_home(full_home, writers[0], entries)
        log(f"ingested them into the founder's home in {time.perf_counter() - started:.1f} s")

        full = Served(full_home)
        servers.append(full)
        # Each full sync goes into a new empty home of the same member; the median of the runs
        # is reported (this machine's speed varies by tens of percent from one second to the next).
        syncs, baselines, ratios, rss_after_sync = [], [], [], 0.0
        for run in range(args.runs):
            empty_home = work / f"member-{run}"
            writers[1].identity.save(empty_home)
            empty = Served(empty_home, env=named_threads_env(work) if args.threads else None)
            servers.append(empty)
            cpu_before = full.cpu_s(), empty.cpu_s()
            threads_before = empty.thread_cpu_s()
            baseline_before, updates = replay_baseline(entries)
            started = time.perf_counter()
            answer = empty.api("POST", "/api/sync", {"address": full.sync_address})
            took = time.perf_counter() - started
            cpu_serving, cpu_receiving = full.cpu_s() - cpu_before[0], empty.cpu_s() - cpu_before[1]
            if answer["received"] != len(entries):
                raise SystemExit(f"full sync received {answer['received']} entries, not {len(entries)}")
            baseline_after, _ = replay_baseline(entries)
            baselines.append((baseline_before + baseline_after) / 2)
            ratios.append(took / baselines[-1])
            syncs.append(took)
            rss_after_sync = max(rss_after_sync, empty.rss_mb())
            log(f"full sync {run + 1}: {answer['received']} entries in {took:.2f} s "
                f"({answer['received'] / took:,.0f}/s), receiving node rss {empty.rss_mb():.0f} MB; "
                f"CPU used meanwhile: receiving node {cpu_receiving:.2f} s, serving node {cpu_serving:.2f} s; "
                f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; bare replay right before and "
                f"after {baseline_before:.3f} / {baseline_after:.3f} s, ratio {ratios[-1]:.2f}")
            if args.threads:
                log("  receiving node's CPU by thread: " + threads_used(threads_before, empty.thread_cpu_s(), cpu_receiving))
            if run + 1 < args.runs:
                empty.stop()
                servers.remove(empty)
        full_sync_s = statistics.median(syncs)

        noop = []
        for _ in range(7):
            started = time.perf_counter()
            answer = empty.api("POST", "/api/sync", {"address": full.sync_address})
            noop.append(time.perf_counter() - started)
            if answer != {"received": 0, "sent": 0}:
                raise SystemExit(f"a no-op sync moved entries: {answer}")
        noop_ms = statistics.median(noop) * 1000
        log(f"no-op sync: median {noop_ms:.1f} ms (of {', '.join(f'{t * 1000:.0f}' for t in noop)} ms)")
        empty.stop()

        full.stop()
        servers.remove(full)
        startups, rss_started = [], 0.0
        for _ in range(3):
            node = Served(full_home)
            startups.append(node.ready_s)
            rss_started = max(rss_started, node.rss_mb())
            node.stop()
        startup_s = statistics.median(startups)
        log(f"start-up with {len(entries)} entries: median {startup_s:.2f} s "
            f"(of {', '.join(f'{t:.2f}' for t in startups)} s), rss {rss_started:.0f} MB")

        baseline_s = statistics.median(baselines)
        log(f"baseline: {updates} pycrdt updates applied one by one to bare Docs in {baseline_s:.3f} s, median of "
            f"{', '.join(f'{t:.3f}' for t in baselines)} s ({updates / baseline_s:,.0f}/s); "
            f"{len(entries) - updates} entries carry no update")
        result = {
            "entries": len(entries),
            "full_sync_s": round(full_sync_s, 3),
            "entries_per_s": round(len(entries) / full_sync_s),
            "replay_baseline_s": round(baseline_s, 3),
            "ratio_vs_replay": round(statistics.median(ratios), 2),
            "noop_sync_ms": round(noop_ms, 1),
            "startup_s": round(startup_s, 3),
            "rss_mb": round(max(rss_after_sync, rss_started), 1),
        }
        print(json.dumps(result), flush=True)
        return 0
    finally:
        for node in servers:
            node.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
