"""Convergence: several in-memory nodes, random operations, partitions and sync orders.

Each example builds 3 to 5 `Service`s in a temporary folder. The first founds a congregation;
some of the others join at once (invite, proof, admission, then a sync with their inviter),
the rest may join later (through any member that knows the invite) or stay strangers. Then a
random run of operations on random nodes (propose, revise, respond, commit, status, crews,
crew members, renames, shared-content edits, invites, withdrawals and joins) interleaves with partitions and
pairwise exchanges driven in-process through `sync.protocol.run_exchange` + `protocol.serve`,
exactly what the HTTPS transport carries. At the end the partitions heal and everyone syncs
with everyone until a full round moves nothing; then every node must show the same state:
the same entries per document, the same version vectors, the same views, nothing waiting; no
node holds a crew it is not a member of, and a stranger holds nothing. A node closed and
opened again (snapshots, replay) must show the same state too.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.entries import decode_entry
from node.errors import NodeError
from node.identity import raw_public
from node.ids import b32
from node.service import Service, invite_key
from factories import exchange, sync_until_quiet
from sync import protocol

FULL_BATCH = protocol.BATCH_ENTRIES
# Many small stores are made and thrown away: in memory where the system has a RAM folder.
RAM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
OPS = ["propose", "propose", "respond", "respond", "respond", "revise", "retire", "commit", "commit", "status",
       "crew", "add_member", "rename", "edit", "invite", "withdraw", "join", "join", "sync", "sync", "sync",
       "sync", "sync", "sync", "gossip", "partition"]


def open_service(home: Path, name: str | None = None) -> Service:
    service = Service(home, name=name)
    # The test checks logic, not durability: skip the fsync of every single write.
    service.store.db.execute("PRAGMA synchronous=OFF")
    return service


def member_of(service: Service, doc: str) -> bool:
    state = service.states.get(doc)
    return state is not None and service.me in state.members


class Net:
    """The nodes under test and what the test knows about them."""

    def __init__(self, root: Path, n: int, joined_at_start: int):
        self.nodes = [open_service(root / f"n{i}", name=f"Member {i}") for i in range(n)]
        self.root = root
        self.cid = self.nodes[0].create_congregation("Riverside", "Meet by the river")["id"]
        self.codes: list[str] = []
        self.crews: list[str] = []
        self.agreements: list[tuple] = []        # (agreement id, document)
        self.commitments: list[tuple] = []       # (commitment id, crew)
        self.groups = [0] * n                    # partition: nodes sync only within a group
        self.log: list[str] = []
        for i in range(1, joined_at_start + 1):
            self.join(i, 0, self.nodes[0].create_invite(self.cid)["code"])

    def join(self, newcomer: int, via: int, code: str) -> bool:
        """`newcomer` proves `code` to node `via`, which admits them; then they sync."""
        new, inviter = self.nodes[newcomer], self.nodes[via]
        key, proof = new.join_proof(code)
        try:
            inviter.admit(key, new.me, new.my_name(), proof)
        except NodeError:                        # unknown here yet, used, withdrawn, or inviter not active
            return False
        exchange(new, inviter)
        return True

    def joined(self, i: int) -> bool:
        return member_of(self.nodes[i], self.cid)

    def sync(self, i: int, j: int) -> tuple[int, int]:
        return exchange(self.nodes[i], self.nodes[j])

    def sync_until_quiet(self) -> None:
        sync_until_quiet(self.nodes)

    def held_in_test_order(self, service: Service, docs) -> list[bytes]:
        """The entries `service` holds of `docs`, in an order a replay gives again: documents
        as the test made them, then devices as the nodes were made (the store's order is by
        device id, a random key, which would make hypothesis draw other entries on a replay)."""
        nodes = {s.identity.device_id: i for i, s in enumerate(self.nodes)}
        made = [self.cid, *self.crews]
        entries = [decode_entry(raw) for doc in docs for raw in service.store.raw_after(doc, {})]
        entries.sort(key=lambda e: (made.index(e.doc), nodes[e.device], e.seq))
        return [e.raw for e in entries]


def visible(service: Service, doc: str) -> bool:
    return doc in service.states and service.me in service.states[doc].members


def step(net: Net, data, op: str, actor: int) -> None:
    """Run one random operation on node `actor` (an invalid choice is simply skipped).

    Choices are drawn from lists in the order the test made things (never from random ids or
    from orders that depend on clock ties), so that hypothesis can replay and shrink a run.
    """
    node = net.nodes[actor]
    pick = lambda seq: data.draw(st.sampled_from(seq)) if seq else None  # noqa: E731
    text = data.draw(st.sampled_from(["tea", "rota", "garden", "keys", "money", "quiet"]))
    if op == "partition":
        net.groups = data.draw(st.lists(st.integers(0, 2), min_size=len(net.nodes), max_size=len(net.nodes)))
        return
    if op == "sync":
        other = data.draw(st.integers(0, len(net.nodes) - 1))
        if other != actor and net.groups[actor] == net.groups[other]:
            net.sync(actor, other)
        return
    if op == "gossip":
        # Some of another node's entries, in random order, as a bundle carried by hand would
        # bring them: out of causal order, with gaps (they wait), only of shared documents.
        other = net.nodes[data.draw(st.integers(0, len(net.nodes) - 1))]
        if other is node or net.groups[actor] != net.groups[net.nodes.index(other)]:
            return
        raws = net.held_in_test_order(other, protocol.shared_docs(other, node.me))
        chosen = data.draw(st.lists(st.sampled_from(raws), max_size=12)) if raws else []
        protocol.take_entries(node, chosen)
        return
    if op == "join":
        if net.codes and not net.joined(actor):
            net.join(actor, data.draw(st.integers(0, len(net.nodes) - 1)), pick(net.codes))
        return
    if not net.joined(actor):
        return
    crews = [c for c in net.crews if visible(node, c)]
    scopes = [net.cid, *crews]
    agreements = [a for a, doc in net.agreements if visible(node, doc) and a in node.states[doc].agreements]
    commitments = [c for c, doc in net.commitments if visible(node, doc) and c in node.states[doc].commitments]

    def members_of(doc):                       # in node order, not join order (clock ties)
        active = set(node.states[doc].active_members())
        return [s.me for s in net.nodes if s.me in active]

    if op == "propose":
        scope = pick(scopes)
        net.agreements.append((node.propose(scope, f"About {text}", f"We {text} on Sundays")["id"], scope))
    elif op == "respond" and agreements:
        response = pick(["consent", "consent", "object", "stand_aside"])
        node.respond(pick(agreements), response, "not yet" if response == "object" else "")
    elif op == "revise" and agreements:
        node.revise(pick(agreements), f"About {text}, revised", "Second draft")
    elif op == "retire" and agreements:
        node.retire(pick(agreements))
    elif op == "commit" and crews:
        crew = pick(crews)
        made = node.commit(crew, f"Bring {text}", pick([None, "2026-12-01"]), pick(members_of(crew)))
        net.commitments.append((made["id"], crew))
    elif op == "status" and commitments:
        node.set_commitment_status(pick(commitments), pick(["open", "done", "released"]))
    elif op == "crew":
        others = data.draw(st.lists(st.sampled_from(members_of(net.cid)), max_size=3, unique=True))
        net.crews.append(node.create_crew(net.cid, f"Crew {text}", "", others)["id"])
    elif op == "add_member" and crews:
        node.add_crew_member(pick(crews), pick(members_of(net.cid)))
    elif op == "rename":
        node.set_name(f"Member {actor} {text}")
    elif op == "edit":
        # An edit of the shared pycrdt content (name/purpose): concurrent edits merge.
        node._write(pick(scopes), {"t": "meta"}, {pick(["name", "purpose"]): f"{text} {actor}"})
    elif op == "invite":
        net.codes.append(node.create_invite(net.cid)["code"])
    elif op == "withdraw" and net.codes:
        node.withdraw_invite(net.cid, b32(raw_public(invite_key(pick(net.codes)))))


def state_of(service: Service, cid: str) -> dict:
    """Everything a member can see, in comparable form, plus the raw facts behind it."""
    out: dict = {}
    congregation = service.congregation_view(cid)
    congregation.pop("my_status")
    out["congregation"] = {**congregation, "crews": None}
    for doc, state in service.states.items():
        if service.me not in state.members:
            continue
        if state.type == "crew":
            out[f"crew {doc}"] = service.crew_view(doc)
        for aid in state.agreements:
            out[f"agreement {aid}"] = service.agreement_view(aid)
    return out


def facts_of(service: Service) -> dict:
    """Per document: the accepted entries' hashes and the version vector."""
    out = {}
    for doc in service.states:
        hashes = {r[0] for r in service.store.db.execute("SELECT hash FROM entries WHERE doc = ?", [doc])}
        vector = service.store.vector(doc)
        assert vector == service.states[doc].vector, "in-memory vector differs from the stored one"
        out[doc] = (frozenset(hashes), tuple(sorted(vector.items())))
    return out


def check_converged(net: Net) -> None:
    members = [s for i, s in enumerate(net.nodes) if net.joined(i)]
    strangers = [s for i, s in enumerate(net.nodes) if not net.joined(i)]
    for stranger in strangers:
        assert stranger.states == {}, "a stranger's node received documents"
        count = stranger.store.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        assert count == 0, "a stranger's node holds entries"
    docs = set().union(*(s.states for s in members))
    for doc in docs:
        holders = [s for s in members if doc in s.states]
        member_ids = set(holders[0].states[doc].members)
        for s in members:
            # Privacy follows membership: exactly the members hold a document.
            assert (doc in s.states) == (s.me in member_ids), (
                f"node {s.my_name()} {'holds' if doc in s.states else 'lacks'} document {doc[:8]}")
    reference_facts = facts_of(members[0])
    reference_state = state_of(members[0], net.cid)
    for s in members:
        assert s.store.pending_count() == 0, f"entries still wait on {s.my_name()}"
        facts = facts_of(s)
        for doc, value in facts.items():
            if doc in reference_facts:
                assert value == reference_facts[doc], f"document {doc[:8]} differs on {s.my_name()}"
        mine = state_of(s, net.cid)
        shared = set(mine) & set(reference_state)
        for key in shared:
            assert mine[key] == reference_state[key], f"{key} differs on {s.my_name()}"
    # pairwise for crews that the first member does not see
    for s in members:
        for t in members:
            a, b = state_of(s, net.cid), state_of(t, net.cid)
            for key in set(a) & set(b):
                assert a[key] == b[key], f"{key} differs between {s.my_name()} and {t.my_name()}"


@settings(max_examples=int(os.environ.get("CREWNODE_CONVERGENCE_EXAMPLES", 30)), deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), n=st.integers(3, 5))
def test_random_operations_partitions_and_syncs_converge(data, n):
    with tempfile.TemporaryDirectory(prefix="crewnode-conv-", dir=RAM_DIR) as tmp:
        root = Path(tmp)
        joined_at_start = n - 1 - data.draw(st.integers(0, n - 2), label="late joiners or strangers")
        batch = data.draw(st.sampled_from([2, 3, 7, FULL_BATCH]), label="batch size")
        saved, protocol.BATCH_ENTRIES = protocol.BATCH_ENTRIES, batch   # small batches: many rounds
        net = Net(root, n, joined_at_start)
        try:
            steps = data.draw(st.integers(10, 60), label="steps")
            for _ in range(steps):
                op = data.draw(st.sampled_from(OPS), label="op")
                actor = data.draw(st.integers(0, n - 1), label="node")
                try:
                    step(net, data, op, actor)
                except NodeError:
                    pass                                 # refused locally: nothing written
            net.groups = [0] * n
            net.sync_until_quiet()
            check_converged(net)
            # State is a function of the entries: a node opened again from its store agrees.
            reopened_index = data.draw(st.integers(0, n - 1), label="reopened")
            if net.joined(reopened_index):
                before = state_of(net.nodes[reopened_index], net.cid)
                home = net.nodes[reopened_index].home
                net.nodes[reopened_index].close()
                net.nodes[reopened_index] = open_service(home)
                assert state_of(net.nodes[reopened_index], net.cid) == before
        finally:
            protocol.BATCH_ENTRIES = saved
            for node in net.nodes:
                try:
                    node.store.close()
                except Exception:  # noqa: BLE001 - closed already
                    pass
