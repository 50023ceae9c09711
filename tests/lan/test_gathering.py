"""A gathering: real nodes in network namespaces on one bridge find each other and sync by themselves.

Each host runs ``crewnode serve`` with discovery on (lan_node.py); the tests only ever use the
local API of each node, from inside its namespace, and never give an address or ask for a sync:
peers are found, a newcomer joins with nothing but an invite code, changes spread, a node that
stops is dropped after its goodbye, and a link cut in the middle of a burst of writes heals into
identical histories. A capture on the bridge shows that nothing written, no name and no key ever
crosses the LAN in the clear.

Needs root (network namespaces) and tcpdump; skipped with the reason otherwise, except in CI
(CI=true), where these tests must run and fail instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import struct
import threading
import time

import pytest
from zeroconf import DNSIncoming, DNSPointer, DNSService, DNSText

from node.ids import unb32
from support import wait_for
from sync.discovery import SERVICE_TYPE

from . import netns
from .lan_node import SYNC_PORT, LanNode

pytestmark = pytest.mark.lan

START_TIMEOUT = 30.0     # three nodes starting at once on a loaded 2-core machine
FIND_TIMEOUT = 15.0      # zeroconf announces within ~2 s; then one handshake each
JOIN_TIMEOUT = 20.0      # a join is tried at once with the LAN peers present, else every 5 s
SPREAD_TIMEOUT = 5.0     # a change is pushed ~0.3 s after it is written
GOODBYE_TIMEOUT = 5.0    # goodbye packets go out when a node stops
HEAL_TIMEOUT = 45.0      # after a cut: retries back off (2, 4, 8 s ...), rescans every 5 s


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _unavailable(reason: str):
    if _in_ci():
        pytest.fail(f"{reason}; CI=true, so the LAN tests must run (as root, with .ci/run's packages)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _namespaces_possible():
    # netns probes once at import whether namespaces can be made here (root, iproute2).
    if not netns._usable:
        _unavailable(netns._why or "network namespaces cannot be made here")


@pytest.fixture
def gathering(make_lan, tmp_path):
    """``gathering(names)``: a LAN with one started node per name; all stopped after the test."""
    nodes: list[LanNode] = []

    def make(names: list[str], capture=None) -> list[LanNode]:
        lan = make_lan(len(names))
        if capture is not None:
            capture(lan)
        made = [LanNode(lan, i, tmp_path / f"home-{i}-{name}", name) for i, name in enumerate(names)]
        nodes.extend(made)
        for node in made:
            node.start()
        for node in made:
            node.wait_ready(START_TIMEOUT)
        return made

    yield make
    for node in nodes:
        try:
            rc = node.stop()
        finally:
            node.close()
        # pytest shows this only for a failing test.
        print(f"{node} exited with {rc}\n{node.log_tail(60)}")


# -- helpers ----------------------------------------------------------------------------------


def describe(nodes) -> str:
    return "\n".join(node.log_tail(25) for node in nodes)


def lan_peers(node: LanNode) -> dict[str, dict]:
    """The LAN peers a node lists, by member id (None until authenticated)."""
    return {p["id"]: p for p in node.get("/api/peers") if p["source"] == "lan"}


def wait_peers(node: LanNode, others: list[LanNode], *, named: bool, timeout: float) -> dict:
    """Wait until ``node`` lists exactly ``others`` as LAN peers (with their names if ``named``)."""
    def seen():
        peers = lan_peers(node)
        want = {o.id: o for o in others}
        if set(peers) != set(want):
            return None
        for pid, other in want.items():
            if peers[pid]["address"] != other.sync_address:
                return None
            if named and peers[pid]["name"] != other.name:
                return None
        return peers
    return wait_for(seen, timeout, interval=0.2,
                    message=lambda: f"{node.name} lists {lan_peers(node)}; want {[o.name for o in others]}")


def found_congregation(founder: LanNode, newcomers: list[LanNode], name: str, purpose: str = "") -> str:
    """The founder's new congregation, joined by each newcomer with only an invite code."""
    cid = founder.post("/api/congregations", {"name": name, "purpose": purpose}, expect=201)["id"]
    for node in newcomers:
        code = founder.post(f"/api/congregations/{cid}/invites", {"note": f"for {node.name}"}, expect=201)["code"]
        answer = node.post("/api/join", {"code": code}, expect=202)     # no address: the LAN will do
        assert answer["congregation_id"] == cid and answer["status"] in ("pending", "joined"), answer
    for node in newcomers:
        wait_for(lambda node=node: cid in {c["id"] for c in node.get("/api/congregations")}, JOIN_TIMEOUT,
                 interval=0.2, message=lambda node=node: f"{node.name} did not join\n{node.log_tail()}")
    every = [founder, *newcomers]
    for node in every:
        wait_for(lambda node=node: len(node.get(f"/api/congregations/{cid}")["members"]) == len(every),
                 JOIN_TIMEOUT, interval=0.2, message=lambda node=node: f"{node.name} does not know all members")
    return cid


def agreement_titles(node: LanNode, cid: str) -> list[str]:
    return [a["title"] for a in node.get(f"/api/congregations/{cid}")["agreements"]]


def history(node: LanNode, cid: str) -> list[dict]:
    return node.get(f"/api/congregations/{cid}/history")


def digest(entries: list[dict]) -> str:
    """One hash over a history, independent of the order entries arrived in."""
    rows = sorted(json.dumps([e["author"], e["device"], e["seq"], e["at"], e["summary"]]) for e in entries)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def wait_all_hold(nodes: list[LanNode], cid: str, titles: set[str], timeout: float) -> float:
    """Wait until every node shows every title; returns the seconds it took."""
    t0 = time.monotonic()
    wait_for(lambda: all(titles <= set(agreement_titles(n, cid)) for n in nodes), timeout, interval=0.1,
             message=lambda: "not everywhere: " + "; ".join(
                 f"{n.name} lacks {sorted(titles - set(agreement_titles(n, cid)))}" for n in nodes)
             + "\n" + describe(nodes))
    return time.monotonic() - t0


# -- three nodes gather by themselves -----------------------------------------------------------


def test_three_nodes_find_each_other_join_with_a_code_and_converge(gathering):
    ada, bob, cem = nodes = gathering(["Ada", "Bob", "Cem"])

    # Found with no address given: each lists the other two, authenticated by member id, as
    # LAN peers at their LAN address; strangers sharing nothing show no name.
    for node in nodes:
        peers = wait_peers(node, [o for o in nodes if o is not node], named=False, timeout=FIND_TIMEOUT)
        assert all(p["name"] is None for p in peers.values()), peers

    # A newcomer is in with only the invite code: the founder's node is found on the LAN.
    cid = found_congregation(ada, [bob, cem], "Garden", "we grow things")

    # Now that they share a congregation, peers show each other's names.
    for node in nodes:
        peers = wait_peers(node, [o for o in nodes if o is not node], named=True, timeout=FIND_TIMEOUT)
        assert all(p["last_sync"] for p in peers.values()), peers

    # A change spreads to all, with no manual sync, within seconds; from every node.
    titles = set()
    for node in nodes:
        title = f"{node.name}'s tool rota"
        node.post(f"/api/congregations/{cid}/agreements", {"title": title, "text": "We lend tools."}, expect=201)
        titles.add(title)
        wait_all_hold(nodes, cid, {title}, SPREAD_TIMEOUT)
    histories = [history(n, cid) for n in nodes]
    assert len({digest(h) for h in histories}) == 1, [len(h) for h in histories]

    # A node that stops sends goodbye and is dropped from the others' peers at once.
    assert cem.stop() == 0, cem.log_tail()
    for node in (ada, bob):
        wait_for(lambda node=node: cem.id not in lan_peers(node), GOODBYE_TIMEOUT, interval=0.2,
                 message=lambda node=node: f"{node.name} still lists Cem: {lan_peers(node)}")
        assert {o.id for o in (ada, bob) if o is not node} == set(lan_peers(node))
    # ... and the two left still sync by themselves.
    bob.post(f"/api/congregations/{cid}/agreements", {"title": "After Cem left", "text": "-"}, expect=201)
    wait_all_hold([ada, bob], cid, {"After Cem left"}, SPREAD_TIMEOUT)


# -- what crosses the LAN -------------------------------------------------------------------------


def pcap_packets(pcap: bytes):
    """(protocol, src port, dst port, payload) of each IPv4 UDP/TCP frame of an Ethernet pcap."""
    magic = pcap[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\x4d\x3c\xb2\xa1": "<",
              b"\xa1\xb2\xc3\xd4": ">", b"\xa1\xb2\x3c\x4d": ">"}.get(magic)
    assert endian, f"not a pcap file: {magic!r}"
    assert struct.unpack(endian + "I", pcap[20:24])[0] == 1, "expected Ethernet link type"
    off = 24
    while off + 16 <= len(pcap):
        incl = struct.unpack(endian + "I", pcap[off + 8:off + 12])[0]
        frame = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        if frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        proto, ihl = ip[9], (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        seg = ip[ihl:total]
        if proto == 17:
            yield "udp", *struct.unpack("!HH", seg[:4]), seg[8:]
        elif proto == 6:
            data_off = (seg[12] >> 4) * 4
            yield "tcp", *struct.unpack("!HH", seg[:4]), seg[data_off:]


def forms(secret: str) -> set[bytes]:
    """The ways a word could show up in bytes: as written, lower, upper, UTF-16."""
    out = set()
    for s in {secret, secret.lower(), secret.upper()}:
        out |= {s.encode(), s.encode("utf-16-le"), s.encode("utf-16-be")}
    return out


def txt_strings(text: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(text):
        out.append(text[i + 1:i + 1 + text[i]])
        i += 1 + text[i]
    return out


def test_the_wire_carries_no_words_names_or_keys(gathering, tmp_path):
    if shutil.which("tcpdump") is None:
        _unavailable("tcpdump is not installed (Debian package `tcpdump`)")
    tag = secrets.token_hex(3)
    names = [f"Wilhelmina{tag}", f"Bartholomew{tag}"]
    words = [f"Marmalade{tag}", f"Quokka{tag}", f"Orchard{tag}", f"Saffron{tag}", f"Thistle{tag}"]
    capture = {}

    def start_capture(lan):
        # From before the nodes start, so announcements, answers and goodbyes are all in it.
        capture["cm"] = lan.capture(tmp_path / "gathering.pcap")
        capture["cap"] = capture["cm"].__enter__()

    try:
        ada, bob = nodes = gathering(names, capture=start_capture)
        cid = found_congregation(ada, [bob], f"{words[2]} congregation", f"to share {words[3]}")
        ada.post(f"/api/congregations/{cid}/agreements",
                 {"title": "Jam", "text": f"We make {words[0]} on Sundays."}, expect=201)
        bob.post(f"/api/congregations/{cid}/agreements",
                 {"title": f"{words[4]} patch", "text": f"A {words[1]} guards it."}, expect=201)
        wait_all_hold(nodes, cid, {"Jam", f"{words[4]} patch"}, SPREAD_TIMEOUT)
        devices = {e["device"] for e in history(ada, cid)}
        token_words = [n.token for n in nodes]
        assert bob.stop() == 0, bob.log_tail()        # its goodbye is on the wire too
        wait_for(lambda: bob.id not in lan_peers(ada), GOODBYE_TIMEOUT, interval=0.2)
    finally:
        if "cm" in capture:
            capture["cm"].__exit__(None, None, None)
    data = capture["cap"].data
    assert b"_crewnode" in data, "the capture missed the advertisements"   # the grep below can see
    packets = list(pcap_packets(data))

    # Sync really happened during the capture, over TLS, and no HTTP shows.
    sync = [p for proto, sport, dport, p in packets if proto == "tcp" and SYNC_PORT in (sport, dport) and p]
    assert sum(map(len, sync)) > 2000, "no sync traffic captured"
    assert any(p[:1] == b"\x16" and p[1:3] == b"\x03\x01" for p in sync), "no TLS handshake seen"
    assert b"HTTP/1." not in b"".join(sync), "plain HTTP on the sync port"

    # Nothing written, no name, no key, no token anywhere in the capture.
    ids = [n.id for n in nodes] + sorted(devices)
    secrets_ = [*words, *names, *token_words, *ids]
    for secret in secrets_:
        for form in forms(secret):
            assert form not in data, f"{secret!r} ({form!r}) crossed the LAN in the clear"
    for key in ids:   # member and device ids are base32 of public keys: the raw keys neither
        assert unb32(key) not in data, f"the raw key of {key} crossed the LAN"

    # The mDNS packets: only our random instance names, version and instance id.
    mdns = [p for proto, sport, dport, p in packets if proto == "udp" and 5353 in (sport, dport)]
    assert mdns, "no mDNS captured"
    for payload in mdns:
        for secret in secrets_:
            assert secret.lower().encode() not in payload.lower(), f"{secret!r} in an mDNS packet"
    txts = 0
    for payload in mdns:
        msg = DNSIncoming(payload)
        assert msg.valid, payload
        for rec in msg.answers():
            assert rec.name == SERVICE_TYPE or rec.name.startswith("crewnode-"), rec
            if isinstance(rec, DNSPointer):
                assert rec.alias.startswith("crewnode-") and rec.alias.endswith("." + SERVICE_TYPE), rec
            elif isinstance(rec, DNSService):
                assert rec.server.startswith("crewnode-") and rec.port == SYNC_PORT, rec
            elif isinstance(rec, DNSText):
                iid = rec.name[: -len(SERVICE_TYPE) - 1]
                assert sorted(txt_strings(rec.text)) == sorted([b"v=1", f"id={iid}".encode()]), rec
                txts += 1
    assert txts >= 2, "expected both nodes' TXT records on the wire"


# -- a cut in the middle of a sync ------------------------------------------------------------------


def test_a_link_cut_mid_sync_heals_into_identical_histories(gathering):
    ada, bob, cem = nodes = gathering(["Ada", "Bob", "Cem"])
    cid = found_congregation(ada, [bob, cem], "Workshop")
    lan = ada.lan
    per_node = 15
    errors: list[BaseException] = []

    def burst(node: LanNode) -> None:
        try:
            for k in range(per_node):
                node.post(f"/api/congregations/{cid}/agreements",
                          {"title": f"{node.name} {k}", "text": f"burst write {k} by {node.name}"}, expect=201)
                time.sleep(0.05)
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    writers = [threading.Thread(target=burst, args=(n,)) for n in nodes]
    for w in writers:
        w.start()
    # Wait until Cem is in the middle of it: some of the others' writes reached Cem, not all.
    wait_for(lambda: any(t.startswith(("Ada", "Bob")) for t in agreement_titles(cem, cid)), 10, interval=0.05)
    lan.cut(cem.host.index)
    cut_at = time.monotonic()
    for w in writers:
        w.join(60)            # Cem keeps writing while cut off, as a laptop off the Wi-Fi does
    assert not errors, errors
    received_during_cut = set(agreement_titles(cem, cid))
    time.sleep(max(0.0, 3.0 - (time.monotonic() - cut_at)))
    lan.restore(cem.host.index)
    assert not {f"Ada {per_node - 1}", f"Bob {per_node - 1}"} <= received_during_cut, \
        "the cut came too late to cut anything"

    titles = {f"{n.name} {k}" for n in nodes for k in range(per_node)}
    healed = wait_all_hold(nodes, cid, titles, HEAL_TIMEOUT)
    print(f"healed {healed:.1f} s after the link came back")

    def same_histories():
        hs = [history(n, cid) for n in nodes]
        return hs if len({digest(h) for h in hs}) == 1 else None
    histories = wait_for(same_histories, 10, interval=0.2,
                         message=lambda: f"histories differ: {[len(history(n, cid)) for n in nodes]}")
    for node, h in zip(nodes, histories):
        keys = [(e["device"], e["seq"]) for e in h]
        assert len(keys) == len(set(keys)), f"{node.name} holds an entry twice"
        shown = agreement_titles(node, cid)
        assert sorted(shown) == sorted(set(shown)) and titles <= set(shown), f"{node.name}: duplicates in {shown}"
