"""What entries waiting in `pending` cost the batches that come after them.

    .venv/bin/python bench/pending.py

Every batch of a document tries its waiting entries again, so a peer that sends many entries
that can only wait (signed by a device whose member was never admitted) makes every later
batch dearer. The ledger bounds how many wait (node.ledger.MAX_PENDING); this measures a
batch's cost with that many waiting against the same batch with none, in the same run:

1. builds a congregation history (bench/sync.py's, --entries) and takes most of it into a
   node's ledger in memory and on disk (a Service in a temporary folder, no HTTP);
2. times batches of --batch new entries with nothing waiting (the baseline), then has a
   stranger's device send entries that all wait, up to the bound, and times the next batches
   and a batch of a single entry (medians of --runs).

The last line printed is one JSON object:
    {"waiting", "batch_entries", "batch_s", "batch_with_waiting_s", "ratio", "lone_entry_s"}
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

from bench.sync import Writer, build_history, log  # noqa: E402
from node.ledger import MAX_PENDING  # noqa: E402
from node.service import Service  # noqa: E402


def timed_ingest(service: Service, raws: list[bytes], sender: str | None = None) -> float:
    """Seconds to take in one batch (from peer member `sender`), its write included."""
    started = time.perf_counter()
    service.ledger.ingest(raws, sender=sender)
    service.store.catch_up()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000, help="entries in the history (default 20000)")
    parser.add_argument("--batch", type=int, default=1_000, help="entries per timed batch (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="timed batches of each kind (median reported)")
    args = parser.parse_args()
    rng = random.Random(5)
    writers, entries, _ = build_history(args.entries, rng)
    cid = entries[0].hash
    timed = args.batch * args.runs * 2 + 1
    base, rest = entries[:-timed], [e.raw for e in entries[-timed:]]
    work = Path(tempfile.mkdtemp(prefix="crewnode-bench-pending-"))
    try:
        writers[0].identity.save(work)
        service = Service(work)
        for start in range(0, len(base), 5_000):
            service.ledger.ingest([e.raw for e in base[start:start + 5_000]])
        batches = [rest[i * args.batch:(i + 1) * args.batch] for i in range(args.runs * 2)]
        before = [timed_ingest(service, batch) for batch in batches[:args.runs]]

        stranger = Writer(len(writers), rng)            # never admitted: all it sends waits
        junk = [stranger.write(cid, 10 ** 13 + i, {"t": "meta"}).raw for i in range(MAX_PENDING)]
        for start in range(0, len(junk), 5_000):
            service.ledger.ingest(junk[start:start + 5_000])
        waiting = service.store.pending_count()
        after = [timed_ingest(service, batch) for batch in batches[args.runs:]]
        lone = timed_ingest(service, rest[-1:])
        service.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    batch_s, with_waiting_s = statistics.median(before), statistics.median(after)
    log(f"a batch of {args.batch}: {batch_s * 1000:.1f} ms with nothing waiting, {with_waiting_s * 1000:.1f} ms "
        f"with {waiting} entries waiting; a batch of one entry: {lone * 1000:.1f} ms")
    print(json.dumps({"waiting": waiting, "batch_entries": args.batch, "batch_s": round(batch_s, 4),
                      "batch_with_waiting_s": round(with_waiting_s, 4),
                      "ratio": round(with_waiting_s / batch_s, 2), "lone_entry_s": round(lone, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
