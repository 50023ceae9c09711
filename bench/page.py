"""Server time of the local page with a big congregation (issue 4).

Fills a fresh node home with 200 members (me and 199 others, admitted with invite codes), 50
crews of 6, and 5,000 agreements and commitments (1,000 congregation agreements, 30 agreements
and 50 commitments per crew), with responses from other members so rounds are in every state.
Then it measures the home, congregation and crew pages through the real Flask app (test
client, token header, the Service on its NodeThread): median and p95 over 50 requests each,
warm, and also each right after a new entry landed in that page's document ("after_change":
caches are per document revision, so this is the cost a live refresh pays).

    .venv/bin/python bench/page.py [--requests 50] [--home DIR] [--keep]

The last line printed is one JSON object with the figures (milliseconds). Target: p95 < 50 ms.
"""
import argparse
import inspect
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from node import rules, service as service_mod  # noqa: E402
from node.app import create_app  # noqa: E402
from node.pages import due_view as page_due_view  # noqa: E402
from node.entries import build_entry  # noqa: E402
from node.errors import NodeError  # noqa: E402
from node.identity import new_device, raw_public  # noqa: E402
from node.ids import b32, new_id, now_ms  # noqa: E402
from node.service import Service  # noqa: E402
from node.worker import NodeThread  # noqa: E402

MEMBERS = 200
CREWS = 50
CREW_SIZE = 6
CONGREGATION_AGREEMENTS = 1_000
CREW_AGREEMENTS = 30
CREW_COMMITMENTS = 50
FIRST_NAMES = ["Ada", "Bea", "Cai", "Dov", "Eli", "Fen", "Gus", "Hal", "Ida", "Jon", "Kai", "Lea", "Mo", "Nia",
               "Oli", "Pia", "Quin", "Rae", "Sol", "Tam", "Uma", "Vic", "Wren", "Xia", "Yara", "Zed"]
LAST_NAMES = ["Okafor", "Lindqvist", "Moreau", "Haddad", "Kowalski", "Tanaka", "Silva", "Novak", "Byrne",
              "Rossi", "Mensah", "Ivanova", "Park"]
WORDS = ("we share the tools and the meals and keep the garden open to every neighbour who asks "
         "for help with the roof the rota the money and the children on market days").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


class Others:
    """Other members' devices writing their own signed entries, fed in through the ledger."""

    def __init__(self, service: Service):
        self.service = service
        self.heads: dict[tuple, tuple] = {}
        self.batch: list[bytes] = []

    def write(self, ident, doc: str, op: dict) -> None:
        seq, prev = self.heads.get((doc, ident.device_id), (0, ""))
        entry = build_entry(ident, doc, seq + 1, prev, now_ms(), op, b"", with_cert=seq == 0)
        self.heads[(doc, ident.device_id)] = (seq + 1, entry.hash)
        self.batch.append(entry.raw)
        if len(self.batch) >= 2_000:
            self.flush()

    def flush(self) -> None:
        if self.batch:
            result = self.service.ledger.ingest(self.batch)
            if result.refused or result.pending:
                raise RuntimeError(f"bench entries not accepted: {result.as_dict()}")
            self.service.changed(result.accepted)
            self.batch = []


def admit(service: Service, cid: str, ident, name: str) -> None:
    """Admit one person with a fresh invite code, whichever admit() signature this tree has."""
    code = service.create_invite(cid)["code"]
    secret = service_mod.invite_key(code)
    key = b32(raw_public(secret))
    first = list(inspect.signature(Service.admit).parameters)[1]
    handle = key if first == "key" else code
    errors = []
    for context in (key, cid):
        proof = secret.sign(rules.invite_message(context, ident.person_id))
        try:
            service.admit(handle, ident.person_id, name, proof)
            return
        except NodeError as exc:
            errors.append(exc.message)
    raise RuntimeError(f"could not admit {name}: {errors}")


def fill(service: Service, seed: int = 4) -> dict:
    """Build the big congregation; returns the ids the measurements need."""
    rng = random.Random(seed)
    service.store.db.execute("PRAGMA synchronous=OFF")     # filling only; the measured reads do not write
    t0 = time.perf_counter()
    cid = service.create_congregation("Riverside Commons", "Neighbours who share tools, meals and care.")["id"]
    people = []
    for i in range(MEMBERS - 1):
        ident = new_device(Ed25519PrivateKey.generate())
        name = f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {LAST_NAMES[(i // len(FIRST_NAMES)) % len(LAST_NAMES)]}"
        admit(service, cid, ident, name)
        people.append(ident)
    others = Others(service)

    state = service.states[cid]
    for n in range(CONGREGATION_AGREEMENTS):
        a = service.propose(cid, f"Agreement {n + 1}: {sentence(rng, 4)}", sentence(rng, rng.randint(20, 120)),
                            review_by=f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}" if n % 7 == 0 else None)
        version = state.agreements[a["id"]].current.hash
        for ident in rng.sample(people, rng.choice((0, 5, 20, 60, 199))):
            response = rng.choices(("consent", "stand_aside", "object"), (90, 8, 2))[0]
            others.write(ident, cid, {"t": "respond", "agreement": a["id"], "version": version,
                                      "response": response, "reason": "not yet, say more" if response == "object" else ""})
        if rng.random() < 0.7:
            service.respond(a["id"], "consent")
    others.flush()

    crews = []
    for c in range(CREWS):
        chosen = rng.sample(people, CREW_SIZE - 1)
        crew = service.create_crew(cid, f"Crew {c + 1}: {rng.choice(WORDS)} {rng.choice(WORDS)}",
                                   sentence(rng, 8), [p.person_id for p in chosen])["id"]
        crews.append(crew)
        crew_state = service.states[crew]
        for n in range(CREW_AGREEMENTS):
            a = service.propose(crew, f"Crew agreement {n + 1}", sentence(rng, rng.randint(10, 60)))
            version = crew_state.agreements[a["id"]].current.hash
            for ident in rng.sample(chosen, rng.randint(0, len(chosen))):
                others.write(ident, crew, {"t": "respond", "agreement": a["id"], "version": version,
                                           "response": "consent", "reason": ""})
            if rng.random() < 0.6:
                service.respond(a["id"], rng.choice(("consent", "stand_aside")))
        members = [service.me] + [p.person_id for p in chosen]
        for n in range(CREW_COMMITMENTS):
            due = None if n % 5 == 0 else (time.strftime("%Y-%m-%d", time.gmtime(time.time() + rng.randint(-40, 90) * 86_400)))
            made = service.commit(crew, sentence(rng, rng.randint(3, 9)), due, rng.choice(members))
            if rng.random() < 0.4:
                service.set_commitment_status(made["id"], rng.choice(("done", "done", "released")))
        others.flush()
    others.flush()
    service.store.db.execute("PRAGMA synchronous=FULL")
    service.ledger.snapshot()
    return {"congregation": cid, "crews": crews, "people": [p.person_id for p in people],
            "fill_s": round(time.perf_counter() - t0, 1), "entries": sum(s.count for s in service.states.values())}


def existing(service: Service) -> dict:
    """The ids of a home filled by an earlier run."""
    cid = service.list_congregations()[0]["id"]
    crews = sorted((s for s in service.states.values() if s.type == "crew"), key=lambda s: s.genesis.at)
    return {"congregation": cid, "crews": [c.id for c in crews], "fill_s": 0,
            "entries": sum(s.count for s in service.states.values())}


def quantiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {"median_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2)}


def measure(client, path: str, headers: dict, n: int, before=None) -> dict:
    times = []
    for _ in range(n):
        if before is not None:
            before()
        t0 = time.perf_counter()
        response = client.get(path, headers=headers)
        body = response.get_data()
        times.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {body[:300]!r}")
    return {**quantiles(times), "bytes": len(body)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--home", type=Path, help="fill this (new) folder instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the filled home (printed) for a look in the browser")
    args = parser.parse_args(argv)
    home = args.home or Path(tempfile.mkdtemp(prefix="crewnode-bench-page-"))
    node = NodeThread(lambda: Service(home, name="Ada Lindqvist"))
    try:
        print(f"node home {home} with {MEMBERS} members, {CREWS} crews, "
              f"{CONGREGATION_AGREEMENTS + CREWS * (CREW_AGREEMENTS + CREW_COMMITMENTS)} agreements and commitments…",
              flush=True)
        if args.home and (args.home / "crewnode.db").exists():
            ids = node.call(existing)               # an earlier --home --keep run: reuse its records
        else:
            ids = node.call(fill)
        print(f"filled in {ids['fill_s']} s: {ids['entries']} entries", flush=True)
        same = node.call(lambda s: json.dumps(page_due_view(s), sort_keys=True) == json.dumps(s.due_view(), sort_keys=True))
        if not same:
            raise SystemExit("the page's cached due view differs from Service.due_view")
        token = "bench-token"
        app = create_app(node, token)
        client = app.test_client()
        headers = {"Authorization": f"Bearer {token}"}
        cid = ids["congregation"]
        crew = ids["crews"][0]
        pages = {"home": "/", "congregation": f"/c/{cid}", "crew": f"/crews/{crew}"}
        for path in pages.values():                       # first render: templates compiled, caches filled
            client.get(path, headers=headers)
        figures = {}
        for name, path in pages.items():
            figures[name] = measure(client, path, headers, args.requests)
            print(f"{name:13} {path[:40]:40} median {figures[name]['median_ms']:7.2f} ms   "
                  f"p95 {figures[name]['p95_ms']:7.2f} ms   {figures[name]['bytes'] // 1024} KiB", flush=True)

        rng = random.Random(7)
        congregation_agreements = node.call(lambda s: list(s.states[cid].agreements))
        crew_agreements = node.call(lambda s: list(s.states[crew].agreements))

        def touch(doc_agreements):
            def write():
                aid = rng.choice(doc_agreements)
                node.call(lambda s: s.respond(aid, rng.choice(("consent", "stand_aside"))))
            return write

        after = {"home": touch(congregation_agreements), "congregation": touch(congregation_agreements),
                 "crew": touch(crew_agreements)}
        for name, path in pages.items():
            key = f"{name}_after_change"
            figures[key] = measure(client, path, headers, max(10, args.requests // 2), before=after[name])
            print(f"{key:26} median {figures[key]['median_ms']:7.2f} ms   p95 {figures[key]['p95_ms']:7.2f} ms", flush=True)
        result = {
            "members": MEMBERS, "crews": CREWS,
            "agreements_and_commitments": CONGREGATION_AGREEMENTS + CREWS * (CREW_AGREEMENTS + CREW_COMMITMENTS),
            "entries": ids["entries"], "requests": args.requests,
            **{f"{name}_{k}": v for name, f in figures.items() for k, v in f.items() if k != "bytes"},
            "target_p95_ms": 50,
        }
        result["ok"] = all(result[f"{p}_p95_ms"] < 50 for p in pages)
        print(json.dumps(result))
        return 0
    finally:
        node.stop()
        if args.keep or args.home:
            print(f"kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
