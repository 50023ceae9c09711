"""sync.discovery across real hosts: network namespaces on one bridge.

Each host runs discovery_probe.py, which starts a Discovery and prints its
events as JSON lines; the tests read them with deadlines.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from zeroconf import DNSIncoming, DNSPointer, DNSService, DNSText

from support import wait_for
from sync.discovery import SERVICE_TYPE

from .netns import Lan, requires_root

pytestmark = [requires_root, pytest.mark.lan]

PROBE = Path(__file__).resolve().with_name("discovery_probe.py")
REPO = PROBE.parents[2]
START_TIMEOUT = 10.0  # python start + zeroconf probing (~2 s) on a loaded machine
FIND_TIMEOUT = 10.0
LOST_TIMEOUT = 5.0  # goodbye packets go out at once; this is slack
# The probe checks interfaces every 5 s (the default); then a re-announce.
LATE_LINK_TIMEOUT = 15.0
INSTANCE_RE = re.compile(r"crewnode-[0-9a-f]{16}")


class Probe:
    """One discovery_probe.py process in a namespace, and the events it printed."""

    def __init__(self, lan: Lan, i: int, port: int, env: dict | None = None, hostname: str | None = None):
        self.host = lan.hosts[i]
        self.port = port
        argv = [sys.executable, str(PROBE), str(port)]
        if hostname:
            # A private UTS namespace with a host name we can look for on the wire.
            argv = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]
        self.proc = lan.run(
            i, argv, cwd=REPO, env={**os.environ, **(env or {})}, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.events: list[dict] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    def describe(self) -> str:
        """The probe's events and stderr, for assertion messages."""
        tail = "".join(self.stderr[-20:])
        return f"{self.host.ns}: events={self.events} rc={self.proc.poll()} stderr:\n{tail}"

    def event(self, kind: str, instance_id: str | None = None) -> dict | None:
        """The first event of this kind (about this peer), if any yet."""
        return next(
            (e for e in list(self.events)
             if e["event"] == kind and (instance_id is None or e.get("id") == instance_id)),
            None,
        )

    def wait_started(self) -> str:
        """Wait until the probe advertises; return its instance id."""
        started = wait_for(lambda: self.event("started"), START_TIMEOUT,
                           message=lambda: f"probe did not start: {self.describe()}")
        return started["id"]

    @property
    def instance_id(self) -> str:
        return self.event("started")["id"]

    def stop(self) -> None:
        """Close stdin: the probe stops its Discovery (goodbye) and exits."""
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def wait_found(finder: Probe, peer: Probe, timeout: float = FIND_TIMEOUT) -> dict:
    """Wait until ``finder`` reports ``peer``; return the found event."""
    return wait_for(
        lambda: finder.event("found", peer.instance_id), timeout,
        message=lambda: f"{finder.host.ns} did not find {peer.instance_id}: {finder.describe()}",
    )


def assert_found_right(finder: Probe, peer: Probe, timeout: float = FIND_TIMEOUT) -> None:
    """``finder`` found ``peer`` with the peer's port and LAN address."""
    found = wait_found(finder, peer, timeout)
    assert found["port"] == peer.port
    assert peer.host.addr in found["addresses"]
    assert not any(a.startswith("127.") for a in found["addresses"]), found


def test_hosts_find_each_other(make_lan):
    lan = make_lan(3)
    probes = [Probe(lan, i, 7100 + i) for i in range(3)]
    ids = [p.wait_started() for p in probes]
    assert len(set(ids)) == 3 and all(INSTANCE_RE.fullmatch(i) for i in ids)
    for a in probes:
        for b in probes:
            if a is not b:
                assert_found_right(a, b)
    for p in probes:  # never reports itself
        assert p.event("found", p.instance_id) is None


def test_goodbye_reports_lost(lan):
    a, b = Probe(lan, 0, 7200), Probe(lan, 1, 7201)
    a.wait_started(), b.wait_started()
    assert_found_right(a, b)
    b.stop()
    assert b.event("stopped") is not None, b.describe()
    wait_for(lambda: a.event("lost", b.instance_id), LOST_TIMEOUT,
             message=lambda: f"no lost after goodbye: {a.describe()}")


def test_link_up_after_start_is_discovered(lan):
    lan.cut(1)  # host 1 starts like a laptop not yet on the Wi-Fi
    a, b = Probe(lan, 0, 7300), Probe(lan, 1, 7301)
    a.wait_started(), b.wait_started()
    # Both have announced; neither could have heard the other yet.
    assert a.event("found") is None and b.event("found") is None, (a.describe(), b.describe())
    lan.restore(1)
    assert_found_right(a, b, LATE_LINK_TIMEOUT)
    assert_found_right(b, a, LATE_LINK_TIMEOUT)


# -- what goes on the wire ------------------------------------------------------


def mdns_payloads(pcap: bytes) -> list[bytes]:
    """UDP payloads to or from port 5353 in an Ethernet pcap (IPv4 only)."""
    magic = pcap[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise AssertionError(f"not a pcap file: {magic!r}")
    assert struct.unpack(endian + "I", pcap[20:24])[0] == 1, "expected Ethernet link type"
    payloads, off = [], 24
    while off + 16 <= len(pcap):
        incl = struct.unpack(endian + "I", pcap[off + 8:off + 12])[0]
        frame = pcap[off + 16:off + 16 + incl]
        off += 16 + incl
        if frame[12:14] != b"\x08\x00" or frame[14 + 9] != 17:  # IPv4, UDP
            continue
        udp = frame[14 + (frame[14] & 0x0F) * 4:]
        sport, dport = struct.unpack("!HH", udp[:4])
        if 5353 in (sport, dport):
            payloads.append(udp[8:])
    return payloads


def txt_entries(text: bytes) -> list[bytes]:
    """The length-prefixed strings of a TXT record's data."""
    out, i = [], 0
    while i < len(text):
        n = text[i]
        out.append(text[i + 1:i + 1 + n])
        i += 1 + n
    return out


def test_advertisement_names_no_one(lan, tmp_path):
    marker = f"Marker-Member-{secrets.token_hex(4)}"
    hostnames = [f"alices-laptop-{secrets.token_hex(3)}", f"bobs-laptop-{secrets.token_hex(3)}"]
    env = {"CREWNODE_MEMBER_NAME": marker}
    with lan.capture(tmp_path / "mdns.pcap") as cap:
        a = Probe(lan, 0, 7400, env, hostname=hostnames[0])
        b = Probe(lan, 1, 7401, env, hostname=hostnames[1])
        a.wait_started(), b.wait_started()
        assert a.event("started")["holds_name"], "the probe should hold the marker name"
        assert_found_right(a, b)
        assert_found_right(b, a)
        b.stop()  # its goodbye is on the wire too
        wait_for(lambda: a.event("lost", b.instance_id), LOST_TIMEOUT,
                 message=lambda: a.describe())
    data = cap.data
    for secret in [marker, *hostnames]:
        for form in {secret, secret.lower()}:
            assert form.encode() not in data, f"{form!r} leaked onto the LAN"

    payloads = mdns_payloads(data)
    assert payloads, "no mDNS captured"
    ids = {a.instance_id, b.instance_id}
    instance_names = {f"{i}.{SERVICE_TYPE}" for i in ids}
    host_names = {f"{i}.local." for i in ids}
    allowed_names = {SERVICE_TYPE} | instance_names | host_names
    txts = 0
    for payload in payloads:
        msg = DNSIncoming(payload)
        assert msg.valid, payload
        for q in msg.questions:
            assert q.name in allowed_names, q
        for rec in msg.answers():
            assert rec.name in allowed_names, rec
            if isinstance(rec, DNSPointer):
                assert rec.alias in instance_names, rec
            elif isinstance(rec, DNSService):
                assert rec.server in host_names, rec
            elif isinstance(rec, DNSText):
                iid = rec.name[: -len(SERVICE_TYPE) - 1]
                assert sorted(txt_entries(rec.text)) == sorted([b"v=1", f"id={iid}".encode()]), rec
                txts += 1
    assert txts >= 2, "expected both probes' TXT records on the wire"
    for i in ids:
        assert i.encode() in data
