"""What a recompute costs: a document's state decided again from every entry held, which a
leave, a removal, a readmission or a forked log makes every node holding the document do.

    .venv/bin/python bench/recompute.py

1. builds a congregation history (bench/sync.py's, --entries) and takes it into a node's ledger
   (a Service in a temporary folder, no HTTP);
2. times a recompute of the congregation with no exit in effect (median of --runs), against the
   bare replay of its pycrdt updates (bench/sync.py's baseline) in the same run;
3. has --leaves members leave one after another and times each leave's intake, its recompute
   included. Exits take effect one at a time, the history replayed after each
   (Ledger.recompute), so each leave costs a replay more than the one before it: the slope is
   reported as `per_exit_s`;
4. has the last member to leave send --void-leaves more leaves, each a batch of its own from
   that peer: void (they are out already), yet each calls for a recompute. One called for by
   a peer soon after the last waits for a quiet moment (Ledger.run_due), once for them all:
   `void_leave_s` is the median intake of one, `run_due_s` that one recompute.

The last line printed is one JSON object:
    {"entries", "recompute_s", "replay_baseline_s", "ratio_vs_replay", "leaves", "first_leave_s",
     "last_leave_s", "per_exit_s", "void_leaves", "void_leave_s", "run_due_s"}
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.pending import timed_ingest  # noqa: E402
from bench.sync import build_history, log, replay_baseline  # noqa: E402
from node.service import Service  # noqa: E402


def timed(call) -> float:
    """Seconds `call()` takes."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=50_000, help="entries in the history (default 50000)")
    parser.add_argument("--leaves", type=int, default=5, help="members who leave, one after another (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="recomputes with no exit (median reported)")
    parser.add_argument("--void-leaves", type=int, default=5, help="void leaves the last leaver sends after (default 5)")
    args = parser.parse_args()
    writers, entries, _ = build_history(args.entries, random.Random(11))
    cid = entries[0].hash
    in_congregation = [e for e in entries if e.doc == cid]
    work = Path(tempfile.mkdtemp(prefix="crewnode-bench-recompute-"))
    try:
        writers[0].identity.save(work)
        service = Service(work)
        for start in range(0, len(entries), 10_000):
            service.ledger.ingest([e.raw for e in entries[start:start + 10_000]])
        service.store.catch_up()

        recompute_s = statistics.median(timed(lambda: service.ledger.recompute(cid)) for _ in range(args.runs))
        baseline_s = min(replay_baseline(in_congregation)[0] for _ in range(args.runs))
        clock = max(e.at for e in entries)
        leaves = []
        for writer in writers[len(writers) - args.leaves:]:
            clock += 1
            device = writer.identity.device_id
            leave = writer.write(cid, clock, {"t": "leave", "devices": {device: writer.heads[cid][0] + 1}})
            leaves.append(timed_ingest(service, [leave.raw]))
        assert sum(1 for exits in service.states[cid].exits.values() for _ in exits) == args.leaves
        void_leaves = []
        for _ in range(args.void_leaves if args.leaves else 0):
            clock += 1
            again = writer.write(cid, clock, {"t": "leave", "devices": {device: writer.heads[cid][0] + 1}})
            void_leaves.append(timed_ingest(service, [again.raw], sender=writer.identity.person_id))
        run_due_s = timed(service.ledger.run_due)
        service.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_exit = (leaves[-1] - leaves[0]) / (len(leaves) - 1) if len(leaves) > 1 else 0.0
    log(f"recompute of {len(in_congregation)} entries: {recompute_s:.2f} s (bare pycrdt replay {baseline_s:.3f} s, "
        f"×{recompute_s / baseline_s:.1f}); leaves one after another: " + ", ".join(f"{s:.2f}" for s in leaves) +
        f" s (about {per_exit:.2f} s more for each exit in effect)")
    void_leave_s = statistics.median(void_leaves) if void_leaves else None
    if void_leaves:
        log(f"{len(void_leaves)} void leaves from a former member, a batch each: " +
            ", ".join(f"{s:.3f}" for s in void_leaves) + f" s; the recompute they wait for: {run_due_s:.2f} s")
    print(json.dumps({"entries": len(in_congregation), "recompute_s": round(recompute_s, 3),
                      "replay_baseline_s": round(baseline_s, 3), "ratio_vs_replay": round(recompute_s / baseline_s, 2),
                      "leaves": args.leaves, "first_leave_s": round(leaves[0], 3) if leaves else None,
                      "last_leave_s": round(leaves[-1], 3) if leaves else None, "per_exit_s": round(per_exit, 3),
                      "void_leaves": len(void_leaves), "void_leave_s": void_leave_s and round(void_leave_s, 3),
                      "run_due_s": round(run_due_s, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
