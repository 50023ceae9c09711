"""Membership over time under concurrency (issue 6): removals, leaves, readmissions and writes by
the member being removed, on partitioned in-process nodes synced in random orders.

Each example builds 4 or 5 member `Service`s and one newcomer's: the first founds a
congregation and admits the other members, and a crew of the first three is made; everyone
syncs. Then a random run of operations on random nodes: removal proposals (in the congregation
or the crew) and consents or objections to them, alone or at a "meeting" of one side of the
partition (a node whose round is agreed writes the cut by itself), leaving, readmission of a
member who is out (a new invite in the congregation, an `add` in the crew), the newcomer
joining through any node (its member perhaps removed without knowing it yet), ordinary writes
(proposals, responses, commitments, invites), writes by the very member a removal is about,
partitions and pairwise exchanges through `sync.protocol` in-process. At the end the partitions
heal and everyone syncs with everyone until a full round moves nothing. Then, per document:

- every node that is an active member holds the same entries, each with the same status
  (accepted or void) and the same reason, nothing waits, and every view is identical (members
  with status, agreements, void entries, forks, lineage, commitments);
- a node whose member is out (left, removed) knows it: its own status is the one the others
  show, and it holds no entry the others lack;
- a node that is not a member (the newcomer, when only a removed member admitted them) is
  not one in anyone's view, its own included, and holds nothing the members lack;
- a node opened again from its store shows the same views.

Then deterministic cases, each fed to fresh nodes in several orders of arrival: two removals
of each other decided on two sides of a partition; a cut that drops an admission its writer
never saw; void entries and forked logs listed alike; a hand-written paradox (a cut that
voids the readmission its own evidence needs).

The run is derandomized (the same examples on every run) so a failure reproduces; set
CREWNODE_MEMBERSHIP_RANDOM=1 to explore new ones (hypothesis then prints a reproduction blob),
CREWNODE_MEMBERSHIP_SHRINK=1 to shrink a failure, CREWNODE_MEMBERSHIP_EXAMPLES=n for more.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from node.docstate import gone_from_congregation, records_reach
from node.errors import NodeError
from node.ids import now_ms
from node.service import Service
from factories import exchange, sync_until_quiet
from support import wait_for

RAM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
EXAMPLES = int(os.environ.get("CREWNODE_MEMBERSHIP_EXAMPLES", 50))
RANDOM = os.environ.get("CREWNODE_MEMBERSHIP_RANDOM") == "1"
# Shrinking a long failing run of this test can take minutes: off unless asked for.
PHASES = tuple(Phase) if os.environ.get("CREWNODE_MEMBERSHIP_SHRINK") == "1" else \
    (Phase.explicit, Phase.reuse, Phase.generate)
WEIGHTS = {"remove": 2, "consent": 8, "object": 1, "meeting": 4, "leave": 1, "readmit": 3, "write": 3,
           "subject_writes": 4, "newcomer": 1, "sync": 12, "partition": 2, "heal": 1}
OPS = [op for op, weight in WEIGHTS.items() for _ in range(weight)]
WRITES = ["propose", "respond", "commit", "invite"]


def open_service(home: Path, name: str | None = None) -> Service:
    service = Service(home, name=name)
    service.store.db.execute("PRAGMA synchronous=OFF")     # logic, not durability
    return service


class Net:
    def __init__(self, root: Path, n: int, newcomers: int = 1):
        """`n` members, and `newcomers` more nodes that join later (the last ones)."""
        self.root = root
        self.nodes = [open_service(root / f"n{i}", name=f"M{i}") for i in range(n + newcomers)]
        founder = self.nodes[0]
        self.cid = founder.create_congregation("Riverside", "")["id"]
        for node in self.nodes[1:n]:
            self.admit(founder, node)
        self.sync_until_quiet()
        self.crew = founder.create_crew(self.cid, "Kitchen", "", [self.nodes[1].me, self.nodes[2].me])["id"]
        self.sync_until_quiet()
        self.agreements: list[tuple[str, str]] = []           # (agreement id, document), in order made
        self.removals: list[tuple[str, str, int]] = []        # (agreement id, document, subject index)
        self.groups = [0] * len(self.nodes)

    @property
    def ids(self) -> list[str]:
        return [node.me for node in self.nodes]

    def admit(self, inviter: Service, newcomer: Service) -> None:
        key, proof = newcomer.join_proof(inviter.create_invite(self.cid)["code"])
        inviter.admit(key, newcomer.me, newcomer.my_name(), proof)
        exchange(newcomer, inviter)

    def sync(self, i: int, j: int) -> tuple[int, int]:
        return exchange(self.nodes[i], self.nodes[j])

    def sync_until_quiet(self) -> None:
        sync_until_quiet(self.nodes)


def wait_past(node: Service, doc: str) -> None:
    """Wait until the wall clock passes the latest entry `node` holds in `doc`: what another
    node writes next, not knowing of it, then comes after it in time (in-process nodes act
    within the same millisecond, and a tie in time is settled by hash, either way)."""
    wait_for(lambda: now_ms() > node.states[doc].latest_at, timeout=5, interval=0.001, message="the clock did not move")


def status_in(node: Service, doc: str, member: str) -> str | None:
    state = node.states.get(doc)
    found = state.members.get(member) if state is not None else None
    return found.status if found is not None else None


def unanswered(net: Net, node: Service) -> list[str]:
    """Removal rounds this node may still answer (entitled, no answer yet), as people would."""
    waiting = []
    for aid, doc, _ in net.removals:
        state = node.states.get(doc)
        agreement = state.agreements.get(aid) if state is not None else None
        if agreement is not None and node.me in agreement.entitled and agreement.response_of(node.me) is None:
            waiting.append(aid)
    return waiting


def step(net: Net, data, op: str, actor: int) -> None:
    """One operation on node `actor`; a choice its node refuses (NodeError) writes nothing.

    Choices are drawn from lists in the order the test made things, so a run replays exactly.
    """
    node = net.nodes[actor]
    n = len(net.nodes)
    pick = lambda seq: data.draw(st.sampled_from(seq)) if seq else None  # noqa: E731
    docs = [net.cid, net.crew]
    if op == "partition":
        net.groups = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    elif op == "heal":
        net.groups = [0] * n
    elif op == "sync":
        other = data.draw(st.integers(0, n - 1))
        if other != actor and net.groups[actor] == net.groups[other]:
            net.sync(actor, other)
    elif op == "remove":
        doc = pick(docs)
        subject = data.draw(st.integers(0, n - 1))
        if subject != actor and status_in(node, doc, net.ids[subject]) == "active":
            made = node.propose_removal(doc, net.ids[subject], f"reason {len(net.removals)}")
            net.removals.append((made["id"], doc, subject))
            net.agreements.append((made["id"], doc))
    elif op in ("consent", "object"):
        waiting = unanswered(net, node)
        if waiting:                                          # people answer the oldest round first
            node.respond(waiting[0], "consent" if op == "consent" else "object",
                         "not like this" if op == "object" else "")
    elif op == "meeting":
        # The members on the actor's side of the partition meet about one removal round: each
        # syncs with the actor, consents if still to answer, and syncs back.
        rounds = [aid for aid, doc, _ in net.removals if aid in getattr(node.states.get(doc), "agreements", {})]
        if not rounds:
            return
        aid = pick(rounds)
        for other in [actor, *(i for i in range(n) if i != actor)]:
            if net.groups[other] == net.groups[actor]:
                if other != actor:
                    net.sync(other, actor)
                if aid in unanswered(net, net.nodes[other]):
                    try:
                        net.nodes[other].respond(aid, "consent")
                    except NodeError:
                        pass
                if other != actor:
                    net.sync(other, actor)
    elif op == "leave":
        node.leave(pick(docs))
    elif op == "newcomer":
        # A newcomer joins through the actor's node (whose member may have been removed without
        # knowing it yet), then writes at once.
        fresh = [i for i in range(n) if net.nodes[i].me not in getattr(node.states.get(net.cid), "members", {})
                 and net.cid not in net.nodes[i].states]
        if fresh:
            newcomer = net.nodes[pick(fresh)]
            net.admit(node, newcomer)
            newcomer.propose(net.cid, f"Newcomer idea {len(net.agreements)}", "")
    elif op == "readmit":
        doc = pick(docs)
        out = [i for i in range(n) if status_in(node, doc, net.ids[i]) in ("left", "removed")]
        if not out:
            return
        subject = pick(out)
        if doc == net.cid:
            net.admit(node, net.nodes[subject])
        else:
            node.add_crew_member(doc, net.ids[subject])
    elif op in ("write", "subject_writes"):
        if op == "subject_writes":
            if not net.removals:
                return
            _, doc, subject = pick(net.removals)
            node = net.nodes[subject]                        # the member a removal is about writes
        what = pick(WRITES)
        doc = pick(docs)
        visible = doc in node.states and node.me in node.states[doc].members
        if not visible:
            return
        if what == "propose":
            net.agreements.append((node.propose(doc, f"Idea {len(net.agreements)}", "")["id"], doc))
        elif what == "respond":
            known = [a for a, d in net.agreements
                     if d in node.states and a in node.states[d].agreements and node.me in node.states[d].members]
            if known:
                node.respond(pick(known), pick(["consent", "stand_aside"]))
        elif what == "commit" and doc == net.crew:
            node.commit(doc, f"Task {data.draw(st.integers(0, 9))}")
        elif what == "invite":
            node.create_invite(net.cid)


# -- what must agree --------------------------------------------------------------------------


def held(node: Service, doc: str) -> dict:
    return {entry.hash: (status, reason) for _, _, entry, status, reason in node.store.held_entries(doc)}


def views(node: Service, doc: str) -> dict:
    state = node.states[doc]
    out = {}
    if state.type == "congregation":
        seen = node.congregation_view(doc)
        seen.pop("crews")                                    # those visible to me: differs by design
    else:
        seen = node.crew_view(doc)
    seen.pop("my_status")
    out["view"] = seen
    for aid in state.agreements:
        out[f"agreement {aid}"] = node.agreement_view(aid)
    return out


def check_converged(net: Net) -> None:
    for doc in (net.cid, net.crew):
        holders = [node for node in net.nodes if doc in node.states and node.me in node.states[doc].members]
        # Active, and for the crew not gone from the congregation: nodes no longer send a crew's
        # records to a member removed from its congregation, though the crew still counts them.
        active = [node for node in holders if records_reach(node.states, node.states[doc], node.me)]
        if not active:                                      # everyone left or was removed
            continue
        reference = active[0]
        ref_held, ref_views = held(reference, doc), views(reference, doc)
        for node in active[1:]:
            assert node.store.pending_count() == 0, f"entries wait on {node.my_name()}"
            mine = held(node, doc)
            assert set(mine) == set(ref_held), f"{node.my_name()} and {reference.my_name()} hold different entries"
            differ = {h: (mine[h], ref_held[h]) for h in mine if mine[h] != ref_held[h]}
            assert not differ, f"{node.my_name()} and {reference.my_name()} decide entries differently: {differ}"
            assert views(node, doc) == ref_views, f"{node.my_name()} shows another state than {reference.my_name()}"
        for node in holders:
            if node in active:
                continue
            # A crew's records stop at its congregation: a member gone from that need not learn
            # what the crew did about them since (added them again, say).
            if not gone_from_congregation(reference.states, reference.states[doc], node.me):
                status = status_in(reference, doc, node.me)
                assert status_in(node, doc, node.me) == status, f"{node.my_name()} does not know it is {status}"
            extra = set(held(node, doc)) - set(ref_held)
            assert not extra, f"{node.my_name()} holds entries the members lack"
        for node in net.nodes:
            if node not in holders:
                # Never a member, or admitted only by an entry that does not count (its author
                # had been removed): the members agree, and the node has learnt it.
                assert status_in(reference, doc, node.me) is None, f"{node.my_name()} does not know it is a member"
                if doc in node.states:
                    assert not set(held(node, doc)) - set(ref_held), f"{node.my_name()} holds entries the members lack"


def note_what_happened(net: Net) -> None:
    """What this example exercised, for `pytest --hypothesis-show-statistics`."""
    reference = net.nodes[0]
    for doc, kind in ((net.cid, "congregation"), (net.crew, "crew")):
        state = reference.states.get(doc)
        if state is None:
            continue
        statuses = {m.status for m in state.members.values()}
        for status in sorted(statuses - {"active"}):
            event(f"{kind}: a member {status}")
        if any(len(r) > 0 for r in state.readmissions.values()):
            event(f"{kind}: a member readmitted")
        reasons = {reason for _, _, _, status, reason in reference.store.held_entries(doc) if status == "void"}
        for reason in sorted(reasons):
            event(f"{kind} void: {reason[:40]}")


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, print_blob=True, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), n=st.integers(4, 5))
def test_removals_leaves_and_readmissions_on_partitions_converge(data, n):
    with tempfile.TemporaryDirectory(prefix="crewnode-members-", dir=RAM_DIR) as tmp:
        net = Net(Path(tmp), n)
        try:
            for _ in range(data.draw(st.integers(25, 90), label="steps")):
                op = data.draw(st.sampled_from(OPS), label="op")
                actor = data.draw(st.integers(0, len(net.nodes) - 1), label="node")
                try:
                    step(net, data, op, actor)
                except NodeError:
                    pass
            net.groups = [0] * len(net.nodes)
            net.sync_until_quiet()
            check_converged(net)
            note_what_happened(net)
            # State is a function of the entries: a node opened again from its store agrees.
            index = data.draw(st.integers(0, len(net.nodes) - 1), label="reopened")
            node = net.nodes[index]
            before_held = {doc: held(node, doc) for doc in (net.cid, net.crew) if doc in node.states}
            # (Its views, of the documents it is in: one may hold a congregation without being in it,
            # admitted by an entry that does not count.)
            before = {doc: views(node, doc) for doc in before_held if node.me in node.states[doc].members}
            node.close()
            net.nodes[index] = node = open_service(node.home)
            assert {doc: held(node, doc) for doc in before_held} == before_held
            assert {doc: views(node, doc) for doc in before} == before
        finally:
            for node in net.nodes:
                try:
                    node.store.close()
                except Exception:  # noqa: BLE001 - closed already
                    pass


# -- concurrent removals, and the orders news can arrive in ------------------------------------------


def all_entries(*nodes: Service) -> list[bytes]:
    """Every entry any of the nodes holds, each once."""
    seen = {}
    for node in nodes:
        for doc in node.states:
            for _, _, entry, _, _ in node.store.held_entries(doc):
                seen.setdefault(entry.hash, entry.raw)
    return list(seen.values())


def outcome(node: Service, doc: str) -> tuple:
    """What a node decided about a document: each held entry's status and reason, the members,
    and the void entries as the page lists them (in that order)."""
    from node.entries import decode_entry
    state = node.states[doc]
    listed = [decode_entry(raw).hash for _, raw, _ in node.store.void_entries(doc)]
    return held(node, doc), {m: member.status for m, member in state.members.items()}, listed


def arrive_in_orders(root: Path, raws: list[bytes], doc: str, orders: int = 6) -> list[tuple]:
    """Feed the same entries to fresh nodes in several orders and batch sizes (as sync, bundles
    and relays may bring them); returns each node's outcome."""
    import random
    outcomes = []
    for number in range(orders):
        shuffled = list(raws)
        random.Random(number).shuffle(shuffled)
        observer = open_service(root / f"observer{number}")
        size = 1 + number % 4
        for start in range(0, len(shuffled), size):
            observer.ledger.ingest(shuffled[start:start + size])
        assert observer.store.pending_count() == 0, "entries still wait after all arrived"
        outcomes.append(outcome(observer, doc))
        observer.store.close()
    return outcomes


def test_concurrent_removals_resolve_alike_whatever_the_order(tmp_path):
    """M0 proposes removing M1 while M1 proposes removing M0; M2 and M3 consent to both; M0 and
    M1 each consent last on their own side of a partition, so each node writes a cut without
    knowing of the other. Every order of arrival gives one outcome: the earlier cut counts, the
    later one (its author removed by then) is void, and the other round, agreed by all who
    remain, removes the other member too."""
    net = Net(tmp_path, 4, newcomers=0)
    m0, m1, m2, m3 = net.nodes
    remove_m1 = m0.propose_removal(net.cid, m1.me, "first reason")["id"]
    remove_m0 = m1.propose_removal(net.cid, m0.me, "second reason")["id"]
    net.sync_until_quiet()
    for node in (m2, m3):
        node.respond(remove_m1, "consent")
        node.respond(remove_m0, "consent")
    net.sync_until_quiet()
    m0.respond(remove_m1, "consent")
    m1.respond(remove_m0, "consent")
    assert status_in(m0, net.cid, m1.me) == "removed" and status_in(m1, net.cid, m0.me) == "removed"
    # Each side hears its own news first.
    net.sync(2, 0)
    net.sync(3, 1)
    net.sync_until_quiet()
    decided = [outcome(node, net.cid) for node in (m2, m3)]
    assert decided[0] == decided[1]
    statuses, members, _ = decided[0]
    assert members == {m0.me: "removed", m1.me: "removed", m2.me: "active", m3.me: "active"}
    cuts = [entry for _, _, entry, _, _ in m2.store.held_entries(net.cid) if entry.op["t"] == "cut"]
    first = min(cuts, key=lambda e: (e.at, e.hash))
    assert statuses[first.hash] == ("accepted", None)
    loser = first.op["member"]
    late = [e for e in cuts if m2.ledger.devices[e.device] == loser]
    assert late and all(statuses[e.hash] == ("void", "written after its author was removed") for e in late)
    # The same entries arriving in other orders, at other nodes, decide the same.
    for seen in arrive_in_orders(tmp_path, all_entries(m2, m3), net.cid):
        assert seen == decided[0]


def test_a_cut_that_drops_an_admission_its_writer_never_saw(tmp_path):
    """M1 admits a newcomer, and the newcomer writes, in a partition; meanwhile the others
    remove M1 with a cut that keeps none of M1's entries. The newcomer was admitted only by an
    entry the cut drops: not entitled to answer the removal, not a member. Every node decides
    the same whichever arrives first, nothing waits for ever, and the newcomer's node learns
    that its admission does not count."""
    net = Net(tmp_path, 4, newcomers=1)
    m0, m1, m2, m3, newcomer = net.nodes
    removal = m0.propose_removal(net.cid, m1.me, "reason")["id"]
    net.groups = [0, 1, 0, 0, 1]
    for index in (2, 3):
        net.sync(index, 0)
    wait_past(m0, net.cid)
    net.admit(m1, newcomer)                          # M1's node does not know of the removal yet
    newcomer.propose(net.cid, "Newcomer idea", "")
    net.sync(4, 1)
    for node in (m0, m2, m3):
        node.respond(removal, "consent")
        net.sync(0, net.nodes.index(node)) if node is not m0 else None
    assert status_in(m0, net.cid, m1.me) == "removed"
    # M2 hears M1's news (the admission, the newcomer's entry) before the cut; M3 after it.
    net.sync(2, 1)
    net.sync(3, 0)
    net.sync(3, 1)
    net.sync_until_quiet()
    decided = [outcome(node, net.cid) for node in (m0, m2, m3)]
    assert decided[0] == decided[1] == decided[2]
    statuses, members, _ = decided[0]
    assert members[m1.me] == "removed" and newcomer.me not in members
    admission = next(e for _, _, e, _, _ in m0.store.held_entries(net.cid)
                     if e.op["t"] == "admit" and e.op["member"] == newcomer.me)
    idea = next(e for _, _, e, _, _ in m0.store.held_entries(net.cid) if e.op.get("title") == "Newcomer idea")
    assert statuses[admission.hash] == ("void", "written after its author was removed")
    assert statuses[idea.hash] == ("void", "it depends on an entry that does not count")
    for node in (m0, m2, m3):
        assert node.store.pending_count() == 0
        assert idea.hash in {v["hash"] for v in node.congregation_view(net.cid)["void_entries"]}
    # The newcomer's node has learnt it: the congregation is no longer listed as theirs.
    assert newcomer.me not in newcomer.states[net.cid].members
    assert newcomer.list_congregations() == []
    for seen in arrive_in_orders(tmp_path, all_entries(m0, m2, m3), net.cid):
        assert seen == decided[0]


def two_writers(tmp_path) -> tuple:
    """(congregation id, [Xi, Yu] admitted to it, raw entries of it so far) of a founder's node."""
    from factories import Member, admit
    founder = open_service(tmp_path / "founder", name="Ada")
    cid = founder.create_congregation("Riverside", "")["id"]
    writers = [Member("Xi"), Member("Yu")]
    for writer in writers:
        admit(founder, cid, writer.id, writer.name)
    return cid, writers, [entry.raw for _, _, entry, _, _ in founder.store.held_entries(cid)]


def test_void_entries_are_listed_alike_whatever_the_order(tmp_path):
    """Two members leave and each writes once more (by hand, as a node that missed its own
    leaving would): those entries are void. Nodes that got them in opposite orders hold and
    list them alike."""
    from factories import propose_op
    cid, writers, base = two_writers(tmp_path)
    logs = [[writer.write(cid, {"t": "leave", "devices": {writer.identity.device_id: 1}}).raw,
             writer.write(cid, propose_op([], title=f"After {writer.name} left")).raw] for writer in writers]
    listings = []
    for number, order in enumerate((logs[0] + logs[1], logs[1] + logs[0])):
        observer = open_service(tmp_path / f"observer{number}")
        observer.ledger.ingest(base)
        for raw in order:
            observer.ledger.ingest([raw])
        listings.append(outcome(observer, cid))
        observer.store.close()
    assert len(listings[0][2]) == 2 and listings[0] == listings[1]


def test_forks_are_listed_alike_whatever_the_order(tmp_path):
    """Two members' devices each fork their log (two entries at seq 1); nodes that got the
    forks in opposite orders show the same evidence in the same order."""
    from factories import propose_op
    cid, writers, base = two_writers(tmp_path)
    logs = [[writer.write(cid, propose_op([], title=f"{writer.name} {n}"), seq=1, prev="").raw for n in (1, 2)]
            for writer in writers]
    shown = []
    for number, order in enumerate((logs[0] + logs[1], logs[1] + logs[0])):
        observer = open_service(tmp_path / f"observer{number}")
        observer.ledger.ingest(base)
        for raw in order:
            observer.ledger.ingest([raw])
        shown.append((observer.states[cid].forks, outcome(observer, cid)))
        observer.store.close()
    assert len(shown[0][0]) == 2 and shown[0] == shown[1]


def test_a_cut_that_would_undo_its_own_grounds_is_void(tmp_path):
    """A paradox a hostile member can write by hand: X leaves, Y readmits X, X then consents to
    removing Y, and Z's cut of Y keeps none of Y's entries, the readmission included. If the cut
    counts, the readmission does not, so X's consent does not, so the cut does not... The
    recompute must not go round for ever nor end half-way: the latest event of the circle (the
    cut) is void, the same on every node whatever the order."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from factories import Member, admit
    from node.identity import raw_public
    from node.ids import b32
    from node.ledger import PARADOX
    from node.rules import invite_message

    founder = open_service(tmp_path / "founder", name="Ada")
    cid = founder.create_congregation("Riverside", "")["id"]
    x, y, z = Member("Xi"), Member("Yu"), Member("Zo")
    for member in (x, y, z):
        admit(founder, cid, member.id, member.name)
    leave = x.write(cid, {"t": "leave", "devices": {x.identity.device_id: 1}})
    key = Ed25519PrivateKey.generate()
    key_id = b32(raw_public(key))
    invite = y.write(cid, {"t": "invite", "key": key_id, "expires": leave.at + 86_400_000, "note": ""})
    readmit = y.write(cid, {"t": "admit", "member": x.id, "name": "Xi", "invite": key_id,
                            "proof": b32(key.sign(invite_message(key_id, x.id))),
                            "resume": {x.identity.device_id: 1}})
    founder.ledger.ingest([leave.raw, invite.raw, readmit.raw])
    wait_past(founder, cid)
    removal = founder.propose_removal(cid, y.id, "hostile")
    founder.respond(removal["id"], "consent")
    answer = {"t": "respond", "agreement": removal["id"], "version": removal["version"], "response": "consent",
              "reason": ""}
    consents = {member.id: member.write(cid, answer) for member in (x, z)}
    evidence = {founder.me: next(e.hash for _, _, e, _, _ in founder.store.held_entries(cid)
                                 if e.op["t"] == "respond"),
                **{m: e.hash for m, e in consents.items()}}
    cut = z.write(cid, {"t": "cut", "agreement": removal["id"], "member": y.id, "evidence": evidence,
                        "devices": {y.identity.device_id: 1}})      # drops the readmission (seq 2)
    raws = [e.raw for _, _, e, _, _ in founder.store.held_entries(cid)] + [c.raw for c in consents.values()]
    raws.append(cut.raw)
    outcomes = arrive_in_orders(tmp_path, raws, cid, orders=4)
    assert all(seen == outcomes[0] for seen in outcomes)
    statuses, members, _ = outcomes[0]
    assert statuses[cut.hash] == ("void", PARADOX)
    assert statuses[readmit.hash] == ("accepted", None) and statuses[consents[x.id].hash] == ("accepted", None)
    assert members[x.id] == "active" and members[y.id] == "active"


def test_an_exit_is_no_answer_once_the_member_is_back(tmp_path):
    """M1 leaves the crew; M0 adds M1 back while M2, not knowing it, opens a removal of M0 and
    consents: M2's node carries out the cut, with M1's leaving standing in for M1's answer.
    But M1 is a member again and has not answered: that cut is void on every node (not
    waiting for ever on some), and M0 stays."""
    net = Net(tmp_path, 3, newcomers=0)
    m0, m1, m2 = net.nodes
    m1.leave(net.crew)
    net.sync_until_quiet()
    m0.add_crew_member(net.crew, m1.me)
    wait_past(m0, net.crew)
    removal = m2.propose_removal(net.crew, m0.me, "reason")["id"]
    m2.respond(removal, "consent")
    assert status_in(m2, net.crew, m0.me) == "removed"     # M2's node saw it agreed
    net.sync_until_quiet()
    decided = [outcome(node, net.crew) for node in (m0, m1, m2)]
    assert decided[0] == decided[1] == decided[2]
    statuses, members, _ = decided[0]
    assert members == {m0.me: "active", m1.me: "active", m2.me: "active"}
    cut = next(e for _, _, e, _, _ in m0.store.held_entries(net.crew) if e.op["t"] == "cut")
    assert statuses[cut.hash] == ("void", f"the removal was not agreed: {m1.me[:8]} is a member again and has not answered")
    assert m0.agreement_view(removal)["status"] == "proposed"
    for seen in arrive_in_orders(tmp_path, all_entries(m0, m1, m2), net.crew):
        assert seen == decided[0]


def test_a_member_readmitted_by_a_removed_member_learns_it_does_not_count(tmp_path):
    """M1 leaves the crew; M2 removes M0 (M1's leaving stands in for M1's answer); M0, not
    knowing it, adds M1 back, and M1's node hears of it from M0 alone. The readmission was
    written after M0's removal: it does not count, and M1's node, which took it, must learn
    that too, not carry on believing M1 is back."""
    net = Net(tmp_path, 3, newcomers=0)
    m0, m1, m2 = net.nodes
    m1.leave(net.crew)
    net.sync_until_quiet()
    removal = m2.propose_removal(net.crew, m0.me, "reason")["id"]
    m2.respond(removal, "consent")
    assert status_in(m2, net.crew, m0.me) == "removed"
    wait_past(m2, net.crew)
    m0.add_crew_member(net.crew, m1.me)
    net.sync(1, 0)
    assert status_in(m1, net.crew, m1.me) == "active"
    net.sync_until_quiet()
    for node in (m0, m1, m2):
        assert status_in(node, net.crew, m0.me) == "removed"
        assert status_in(node, net.crew, m1.me) == "left", f"{node.my_name()} still counts the readmission"
    readmit = next(e for _, _, e, _, _ in m2.store.held_entries(net.crew) if e.op["t"] == "add")
    assert held(m2, net.crew)[readmit.hash] == ("void", "written after its author was removed")
    assert held(m1, net.crew)[readmit.hash] == ("void", "written after its author was removed")


def test_answers_to_the_kept_side_of_a_forked_proposal_count(tmp_path):
    """A device's log forks, and each branch goes on with a proposal at the same seq: both
    create the agreement with the same id (an id is bound to its entry's place in the log).
    The dropped branch defines nothing: answers to the kept proposal count on every node,
    whatever the order of arrival."""
    from factories import Member, admit, propose_op
    founder = open_service(tmp_path / "founder", name="Ada")
    cid = founder.create_congregation("Riverside", "")["id"]
    writer = Member("Xi")
    admit(founder, cid, writer.id, writer.name)
    one, two = (writer.write(cid, propose_op([], title=title), seq=1, prev="") for title in ("Tea", "Coffee"))
    kept, dropped = sorted((one, two), key=lambda e: e.hash)
    dropped_next = writer.write(cid, propose_op([], title="Dropped, next"), seq=2, prev=dropped.hash)
    kept_next = writer.write(cid, propose_op([], title="Kept, next"), seq=2, prev=kept.hash)
    assert kept_next.op["agreement"] == dropped_next.op["agreement"]
    # The kept branch's first entry, the dropped branch (longer for now), then the kept branch goes on.
    for entry in (kept, dropped, dropped_next, kept_next):
        founder.ledger.ingest([entry.raw])
    aid = kept_next.op["agreement"]
    assert founder.agreement_view(aid)["title"] == "Kept, next"
    founder.respond(aid, "consent")
    raws = [e.raw for _, _, e, _, _ in founder.store.held_entries(cid)]
    outcomes = arrive_in_orders(tmp_path, raws, cid, orders=4)
    assert all(seen == outcomes[0] for seen in outcomes)
    statuses = outcomes[0][0]
    assert {h for h, (status, _) in statuses.items() if status == "void"} == {dropped.hash, dropped_next.hash}
    founder.store.close()
