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

    .venv/bin/python bench/page.py --screenshots docs/screenshots

instead fills a small, lifelike node (60 members, three crews), serves it with `crewnode serve`
and saves screenshots of the home, congregation and crew pages at laptop (1280 px) and phone
(360 px) width with headless Chromium, for the README.
"""
import argparse
import inspect
import json
import os
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
from node.ids import b32, now_ms  # noqa: E402
from node.rules import bind_record_id  # noqa: E402
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

    def write(self, ident, doc: str, op: dict):
        seq, prev = self.heads.get((doc, ident.device_id), (0, ""))
        bind_record_id(op, doc, ident.device_id, seq + 1)
        entry = build_entry(ident, doc, seq + 1, prev, now_ms(), op, b"", with_cert=seq == 0)
        self.heads[(doc, ident.device_id)] = (seq + 1, entry.hash)
        self.batch.append(entry.raw)
        if len(self.batch) >= 2_000:
            self.flush()
        return entry

    def flush(self) -> None:
        if self.batch:
            result = self.service.ledger.ingest(self.batch)
            if result.refused or result.pending:
                raise RuntimeError(f"bench entries not accepted: {result.as_dict()}")
            self.service.changed(result.taken)
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
    """Wall-clock time of each request, and the CPU time the process spent on it (which other
    programs running on the machine do not inflate)."""
    times, cpu = [], []
    for _ in range(n):
        if before is not None:
            before()
        t0, c0 = time.perf_counter(), time.process_time()
        response = client.get(path, headers=headers)
        body = response.get_data()
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {body[:300]!r}")
    cpu_q = quantiles(cpu)
    return {**quantiles(times), "cpu_median_ms": cpu_q["median_ms"], "cpu_p95_ms": cpu_q["p95_ms"], "bytes": len(body)}


# -- screenshots -------------------------------------------------------------------------------------

PEOPLE = ["Bea Okafor", "Cai Moreau", "Dov Haddad", "Eli Kowalski", "Fen Tanaka", "Gus Silva", "Hal Novak",
          "Ida Byrne", "Jon Rossi", "Kai Mensah", "Lea Ivanova", "Mo Park", "Nia Lindqvist", "Oli Brennan",
          "Pia Conti", "Quin Adeyemi", "Rae Sato", "Sol Varga", "Tam Nguyen", "Uma Delgado", "Vic Holm",
          "Wren Abara", "Xia Lund", "Yara Petit", "Zed Kaur", "Anouk Berg", "Bram Visser", "Carmen Ruiz",
          "Dara Flynn", "Emil Strand", "Farah Aziz", "Gwen Morgan", "Hugo Blanc", "Iris Falk", "Jonas Weber",
          "Kemi Adebayo", "Lars Dahl", "Maya Stein", "Noor Haddad", "Otto Krause", "Priya Nair", "Rosa Lima",
          "Sami Koski", "Tess Kerr", "Ugo Ferri", "Vera Horvat", "Will Ashby", "Yusuf Demir", "Zoe Marsh",
          "Alma Reyes", "Ben Carver", "Cleo Hart", "Dina Sousa", "Ezra Cole", "Flo Jansen", "Gabe Ortiz",
          "Hana Ito", "Ivo Marek", "Jade Quinn"]


def fill_demo(service: Service) -> dict:
    """A lifelike congregation for the screenshots."""
    today = time.time()

    def day(offset: int) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(today + offset * 86_400))

    cid = service.create_congregation(
        "Riverside Commons",
        "Neighbours on the river streets who share tools, meals and care, and look after the common garden.")["id"]
    people = {}
    for name in PEOPLE:
        ident = new_device(Ed25519PrivateKey.generate())
        admit(service, cid, ident, name)
        people[name] = ident
    others = Others(service)
    state = service.states[cid]

    def answers(doc, aid, names, response="consent", reason=""):
        version = service.states[doc].agreements[aid].current.hash
        for name in names:
            others.write(people[name], doc, {"t": "respond", "agreement": aid, "version": version,
                                             "response": response, "reason": reason})
        others.flush()

    everyone = list(PEOPLE)

    def propose_as(name, title, text, review_by=None):
        entry = others.write(people[name], cid, {"t": "propose", "agreement": None, "kind": "agreement",
                                                 "title": title, "text": text, "review_by": review_by,
                                                 "entitled": state.active_members()})
        others.flush()
        return entry.op["agreement"]
    quiet = service.propose(cid, "Quiet hours after ten", "From 22:00 to 07:00 we keep the courtyard and the "
                            "stairwells quiet: no tools, no music outside, and gatherings move indoors.",
                            review_by=day(-3))["id"]
    answers(cid, quiet, everyone[:50])
    answers(cid, quiet, everyone[50:55], "stand_aside", "I work nights, so this does not touch me")
    answers(cid, quiet, everyone[55:])
    service.respond(quiet, "consent")
    tools = propose_as("Bea Okafor", "Borrowed tools come back within a week",
                       "Anything taken from the tool library comes back within seven days, cleaned. "
                       "If you need it longer, say so in the crew chat and it is yours for another week.")
    answers(cid, tools, everyone[:31])
    answers(cid, tools, ["Gus Silva"], "object",
            "Some jobs (a floor sanding, a roof) take longer than a week. Could big jobs book the tool "
            "for a fortnight?")
    service.respond(tools, "consent")
    gathering = propose_as("Kai Mensah", "A gathering on the first Sunday of each month",
                           "We meet in the garden (or the hall when it rains) on the first Sunday of "
                           "every month, 16:00 to 18:00. Each crew brings one thing to report and one "
                           "question for everyone. Children welcome; the kitchen crew brings soup.")
    answers(cid, gathering, everyone[:22])
    split_text = ("We are 61 now, and more people ask to join every month. Large groups stop knowing each "
                  "other's names, and decisions slow down. We propose:\n\n"
                  "1. When the congregation passes 100 members, we hold a gathering to split it in two.\n"
                  "2. Each crew chooses which half it goes with; people may move between crews first.\n"
                  "3. Both halves keep the full history, the tool library and the garden stay shared, "
                  "and we meet together twice a year.\n\n"
                  "This is a proposal to be improved: object if something would harm us, and say what "
                  "would make it work for you.")
    split = service.propose(cid, "Split the congregation when it gets too big",
                            "When we are too many to know each other's names, we split in two.")["id"]
    answers(cid, split, ["Cai Moreau"], "object", "“Too many” is vague: can we name a number?")
    split = service.revise(split, "Split the congregation when we pass 100 members", split_text)["id"]
    answers(cid, split, everyone[:9])

    crew_people = ["Bea Okafor", "Cai Moreau", "Dov Haddad", "Eli Kowalski", "Fen Tanaka"]
    tool_crew = service.create_crew(cid, "Tool library", "Keep the shed tidy, the tools sharp and the sign-out "
                                    "sheet honest.", [people[n].person_id for n in crew_people])["id"]
    kitchen = service.create_crew(cid, "Friday kitchen", "A shared meal every Friday for whoever comes.",
                                  [people[n].person_id for n in ["Gus Silva", "Hal Novak", "Ida Byrne", "Kai Mensah",
                                                                 "Lea Ivanova", "Mo Park"]])["id"]
    service.create_crew(cid, "Garden stewards", "Beds, compost and the rota for watering.",
                        [people[n].person_id for n in ["Nia Lindqvist", "Oli Brennan", "Pia Conti"]])
    key = service.propose(tool_crew, "The shed key lives in the key box",
                          "The key goes back in the key box by the gate (code in the crew chat), never "
                          "under the mat.")["id"]
    answers(tool_crew, key, ["Bea Okafor", "Cai Moreau"])
    sharpen = service.propose(tool_crew, "Whoever uses a saw last sharpens it", "Sharp tools are safe tools.")["id"]
    answers(tool_crew, sharpen, crew_people)
    service.respond(sharpen, "consent")
    me = service.me
    made = [
        ("Oil the saws and the shears", day(-4), me, "open"),
        ("Fix the wheelbarrow tyre", day(3), people["Bea Okafor"].person_id, "open"),
        ("Order new drill bits (5 and 8 mm)", day(9), me, "open"),
        ("Write the sign-out sheet for the door", day(-10), people["Cai Moreau"].person_id, "done"),
        ("Repaint the shed door", day(-20), people["Dov Haddad"].person_id, "released"),
        ("Bring the ladder back from number 12", None, people["Eli Kowalski"].person_id, "open"),
    ]
    for what, due, by, status in made:
        commitment = service.commit(tool_crew, what, due, by)
        if status != "open":
            service.set_commitment_status(commitment["id"], status)
    service.commit(kitchen, "Buy rice and lentils for Friday", day(1), me)
    service.ledger.snapshot()
    return {"congregation": cid, "crew": tool_crew, "gathering": gathering}


def take_screenshots(folder: Path) -> int:
    """Fill a demo home, serve it for real, and photograph the main pages."""
    import subprocess
    from playwright.sync_api import sync_playwright

    folder.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="crewnode-screens-"))
    node = NodeThread(lambda: Service(home, name="Ada Lindqvist"))
    try:
        ids = node.call(fill_demo)
    finally:
        node.stop()
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "--home", str(home), "--port", "0",
                             "--sync-port", "0", "--sync-host", "127.0.0.1", "--no-discovery", "--no-browser"],
                            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        deadline = time.time() + 20
        while not (home / "ports.json").exists():
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("the node did not start")
            time.sleep(0.1)
        time.sleep(0.3)
        port = json.loads((home / "ports.json").read_text())["port"]
        base = f"http://127.0.0.1:{port}"
        token = (home / "token").read_text().strip()
        shots = [("home", "/"), ("congregation", f"/c/{ids['congregation']}"), ("crew", f"/crews/{ids['crew']}")]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            for label, width, height in (("laptop", 1280, 860), ("phone", 360, 780)):
                context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1,
                                              locale="en-GB", timezone_id="Europe/London")
                page = context.new_page()
                page.goto(f"{base}/?token={token}")
                for name, path in shots:
                    page.goto(base + path)
                    page.wait_for_selector("#live-status.on")
                    target = folder / f"{name}-{label}.png"
                    if label == "laptop":             # the whole page, up to 2,200 px tall
                        height_px = min(2200, page.evaluate("document.documentElement.scrollHeight"))
                        page.screenshot(path=str(target), full_page=True,
                                        clip={"x": 0, "y": 0, "width": width, "height": height_px})
                    else:
                        page.screenshot(path=str(target))
                    print(f"wrote {target}", flush=True)
                if label == "phone":
                    page.goto(f"{base}/c/{ids['congregation']}")
                    page.get_by_label("Who is it for? (optional)").fill("Jade's brother Tom")
                    page.get_by_role("button", name="Create invite").click()
                    page.wait_for_selector("#live-status.on")
                    page.locator("#invite").scroll_into_view_if_needed()
                    target = folder / "invite-phone.png"
                    page.screenshot(path=str(target))
                    print(f"wrote {target}", flush=True)
                context.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--home", type=Path, help="fill this (new) folder instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the filled home (printed) for a look in the browser")
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="take the README's screenshots into DIR instead")
    args = parser.parse_args(argv)
    if args.screenshots:
        return take_screenshots(args.screenshots)
    home = args.home or Path(tempfile.mkdtemp(prefix="crewnode-bench-page-"))
    # (asked before the node starts: starting makes the database file, filled or not)
    reuse = args.home is not None and (args.home / "crewnode.db").exists()
    node = NodeThread(lambda: Service(home, name="Ada Lindqvist"))
    try:
        print(f"node home {home} with {MEMBERS} members, {CREWS} crews, "
              f"{CONGREGATION_AGREEMENTS + CREWS * (CREW_AGREEMENTS + CREW_COMMITMENTS)} agreements and commitments…",
              flush=True)
        if reuse:
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
            f = figures[name]
            print(f"{name:26} median {f['median_ms']:7.2f} ms   p95 {f['p95_ms']:7.2f} ms   (cpu {f['cpu_median_ms']:6.2f} / "
                  f"{f['cpu_p95_ms']:6.2f} ms)   {f['bytes'] // 1024} KiB  {path[:24]}", flush=True)

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
            f = figures[key]
            print(f"{key:26} median {f['median_ms']:7.2f} ms   p95 {f['p95_ms']:7.2f} ms   (cpu {f['cpu_median_ms']:6.2f} / "
                  f"{f['cpu_p95_ms']:6.2f} ms)", flush=True)
        result = {
            "members": MEMBERS, "crews": CREWS,
            "agreements_and_commitments": CONGREGATION_AGREEMENTS + CREWS * (CREW_AGREEMENTS + CREW_COMMITMENTS),
            "entries": ids["entries"], "requests": args.requests,
            **{f"{name}_{k}": v for name, f in figures.items() for k, v in f.items() if k != "bytes"},
            "target_p95_ms": 50, "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
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
