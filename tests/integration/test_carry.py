"""Issue 7 with real node processes: sealed bundles, backup and restore, a second device, exports.

Every flow goes through the `crewnode` command line the way a member would type it, against
homes that are being served (node_factory) or not.
"""
from __future__ import annotations

import http.cookiejar
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "correct horse battery staple"


def crewnode(*args, passphrase: str | None = PASSPHRASE, check: bool | None = True, timeout: float = 120):
    """Run `crewnode ARGS`; returns the CompletedProcess. `check=False`: must fail with a message."""
    env = {k: v for k, v in os.environ.items() if k not in ("CREWNODE_HOME", "CREWNODE_PASSPHRASE")}
    if passphrase is not None:
        env["CREWNODE_PASSPHRASE"] = passphrase
    done = subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], cwd=REPO, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if check is True:
        assert done.returncode == 0, f"crewnode {' '.join(map(str, args))}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    elif check is False:
        assert done.returncode != 0, f"crewnode {' '.join(map(str, args))} should have failed:\n{done.stdout}"
        assert done.stderr.strip(), "a refusal says why"
        assert "Traceback" not in done.stderr, f"a refusal says why in words, not in a traceback:\n{done.stderr}"
    return done


def member_id(node) -> str:
    return node.api("GET", "/api/me", expect=200)[1]["id"]


def congregation_with(ada, *others, name="Riverside"):
    """Ada founds a congregation; each other node joins it with an invite code over sync."""
    cid = ada.api("POST", "/api/congregations", {"name": name, "purpose": "test"}, expect=201)[1]["id"]
    for other in others:
        code = ada.api("POST", f"/api/congregations/{cid}/invites", {"note": ""}, expect=201)[1]["code"]
        _, joined = other.api("POST", "/api/join", {"code": code, "address": ada.sync_address}, expect=202)
        assert joined["status"] == "joined", joined
    return cid


def agreement_titles(node, cid) -> set[str]:
    return {a["title"] for a in node.api("GET", f"/api/congregations/{cid}", expect=200)[1]["agreements"]}


def entry_count(node, cid) -> int:
    return len(node.api("GET", f"/api/congregations/{cid}/history", expect=200)[1])


def home_page(node, path: str = "") -> str:
    """The node's home page (or another at `path`) as a member's browser gets it (the token
    link, then the session)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(node.url, timeout=30) as resp:
        page = resp.read().decode()
    if not path:
        return page
    with opener.open(node.base + path, timeout=30) as resp:
        return resp.read().decode()


def speak(node, cid, title):
    """`node` writes an entry (so its device certificate, with its sealing key, reaches others)."""
    node.api("POST", f"/api/congregations/{cid}/agreements", {"title": title, "text": ""}, expect=201)


# -- bundles ------------------------------------------------------------------------------------

def test_bundle_round_trip_sealed_for_one_member(node_factory, tmp_path):
    ada, bob, cy = node_factory(name="Ada"), node_factory(name="Bob"), node_factory(name="Cy")
    cid = congregation_with(ada, bob, cy)
    speak(bob, cid, "Bob was here")
    bob.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)
    # A crew Bob is not in: its entries must not travel in Bob's bundle.
    crew = ada.api("POST", f"/api/congregations/{cid}/crews",
                   {"name": "Kitchen", "purpose": "secret soup", "members": [member_id(cy)]}, expect=201)[1]["id"]
    ada.api("POST", f"/api/crews/{crew}/agreements", {"title": "Crewsecretword", "text": ""}, expect=201)
    bob_id = member_id(bob)
    bob.stop()
    speak(ada, cid, "Marmaladeword for the gathering")

    bundle = tmp_path / "for-bob.crewbundle"
    crewnode("bundle", "export", bundle, "--for", bob_id, "--home", ada.home)     # Ada's node is serving
    data = bundle.read_bytes()
    for word in (b"Marmaladeword", b"Riverside", b"Crewsecretword", b"Kitchen", b"Bob was here"):
        assert word not in data, f"{word!r} is readable in the bundle"

    # Cy cannot open it, and nothing changes on Cy's node.
    before = entry_count(cy, cid)
    refused = crewnode("bundle", "import", bundle, "--home", cy.home, check=False)
    assert "sealed for another member" in refused.stderr
    assert entry_count(cy, cid) == before

    # Bob imports it with his node stopped; once served again he sees Ada's news and no crew.
    done = crewnode("bundle", "import", bundle, "--home", bob.home)
    assert "imported" in done.stdout
    bob.restart()
    assert "Marmaladeword for the gathering" in agreement_titles(bob, cid)
    assert bob.api("GET", f"/api/crews/{crew}")[0] == 404
    again = crewnode("bundle", "import", bundle, "--home", bob.home)   # importing twice is harmless
    assert "imported 0 new entries" in again.stdout


def news_for_bob(node_factory, title) -> tuple:
    """(Ada, Bob, cid): both in one congregation, Bob's sealing key known to Ada, and news of
    Ada's (an agreement named `title`) that Bob does not have yet."""
    ada, bob = node_factory(name="Ada"), node_factory(name="Bob")
    cid = congregation_with(ada, bob)
    speak(bob, cid, "hello")
    bob.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)
    speak(ada, cid, title)
    return ada, bob, cid


def test_bundle_import_into_a_serving_node_shows_at_once(node_factory, tmp_path):
    ada, bob, cid = news_for_bob(node_factory, "Carried by hand")
    bundle = tmp_path / "b.crewbundle"
    ada.stop()
    crewnode("bundle", "export", bundle, "--for", member_id(bob), "--home", ada.home)  # Ada not serving
    crewnode("bundle", "import", bundle, "--home", bob.home)                           # Bob serving
    assert "Carried by hand" in agreement_titles(bob, cid)          # no restart: the node took it


def test_an_empty_bundle_file_is_refused_in_words(node_factory, tmp_path):
    bob = node_factory(name="Bob")
    empty = tmp_path / "empty.crewbundle"
    empty.write_bytes(b"")
    refused = crewnode("bundle", "import", empty, "--home", bob.home, check=False)
    assert f"{empty} is empty: not a crewnode bundle" in refused.stderr


def test_a_short_passphrase_is_refused_before_it_is_typed_again(node_factory, tmp_path):
    """In a terminal, as a member types it."""
    import pty
    ada = node_factory(name="Ada")
    env = {k: v for k, v in os.environ.items() if k not in ("CREWNODE_HOME", "CREWNODE_PASSPHRASE")}
    pid, fd = pty.fork()
    if pid == 0:                                             # the child: crewnode in the terminal
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "node.cli", "backup", str(tmp_path / "b"),
                                   "--home", str(ada.home)], env)

    def read_until(done, seconds=60) -> bytes:
        """What the terminal shows until `done(shown)`, the child ends, or the deadline."""
        shown, deadline = b"", time.monotonic() + seconds
        while not done(shown) and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    chunk = os.read(fd, 1024)
                except OSError:                              # the terminal closes with the child
                    break
                if not chunk:
                    break
                shown += chunk
        return shown

    try:
        assert b"Passphrase: " in read_until(lambda shown: b"Passphrase: " in shown)
        os.write(fd, b"short\n")
        said = read_until(lambda shown: b"characters" in shown or b"again" in shown)
        said += read_until(lambda shown: False, seconds=10)     # to the end (the child exits)
    finally:
        deadline = time.monotonic() + 10
        while not (ended := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        if not ended[0]:                                      # still waiting for input: never hang
            os.kill(pid, signal.SIGKILL)
            ended = os.waitpid(pid, 0)
        status = ended[1]
        os.close(fd)
    assert b"needs at least 8 characters" in said and b"again" not in said
    assert os.waitstatus_to_exitcode(status) == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("damage", ["truncate-end", "truncate-half", "flip-header", "flip-middle", "flip-last"])
def test_a_damaged_bundle_is_refused_whole(node_factory, tmp_path, damage):
    ada, bob = node_factory(name="Ada"), node_factory(name="Bob")
    cid = congregation_with(ada, bob)
    speak(bob, cid, "hello")
    bob.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)
    for i in range(3):
        speak(ada, cid, f"news {i}")
    bundle = tmp_path / "b.crewbundle"
    crewnode("bundle", "export", bundle, "--for", member_id(bob), "--home", ada.home)
    data = bytearray(bundle.read_bytes())
    if damage == "truncate-end":
        data = data[:-1]
    elif damage == "truncate-half":
        data = data[:len(data) // 2]
    else:
        at = {"flip-header": 40, "flip-middle": len(data) // 2 + 7, "flip-last": len(data) - 1}[damage]
        data[at] ^= 0x01
    bundle.write_bytes(bytes(data))
    before = entry_count(bob, cid)
    refused = crewnode("bundle", "import", bundle, "--home", bob.home, check=False)
    assert "damaged" in refused.stderr or "sealed for another member" in refused.stderr, refused.stderr
    assert entry_count(bob, cid) == before
    assert not (agreement_titles(bob, cid) & {"news 0", "news 1", "news 2"})


def test_bundle_export_takes_a_member_id_pasted_with_spaces(node_factory, tmp_path):
    ada = node_factory(name="Ada")
    congregation_with(ada)
    bundle = tmp_path / "b.crewbundle"
    crewnode("bundle", "export", bundle, "--for", f" {member_id(ada)}\n", "--home", ada.home)
    assert bundle.exists()
    refused = crewnode("bundle", "export", tmp_path / "c", "--for", "ada", "--home", ada.home, check=False)
    assert "'ada' is not a member id: a member id is 52 lowercase letters and digits" in refused.stderr


def test_export_and_backup_refuse_a_missing_folder_or_a_folder_in_words(node_factory, tmp_path):
    ada = node_factory(name="Ada")
    congregation_with(ada)
    missing, folder = tmp_path / "no-such-folder" / "x.crewfile", tmp_path / "a-folder"
    folder.mkdir()
    for command in (["bundle", "export"], ["backup"]):
        for_ada = ["--for", member_id(ada)] if command[0] == "bundle" else []
        refused = crewnode(*command, missing, *for_ada, "--home", ada.home, check=False)
        assert f"cannot write {missing}: no such folder {missing.parent}" in refused.stderr
        refused = crewnode(*command, folder, *for_ada, "--home", ada.home, check=False)
        assert f"cannot write {folder}: it is a folder" in refused.stderr
    assert not missing.parent.exists() and not any(folder.iterdir())
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# -- backup and restore -------------------------------------------------------------------------

def test_restore_after_losing_the_home_continues_the_same_member_without_a_fork(node_factory, tmp_path):
    ada, bob = node_factory(name="Ada"), node_factory(name="Bob")
    cid = congregation_with(ada, bob)
    speak(ada, cid, "Before the laptop died")
    bob.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)
    ada_id, old_device = member_id(ada), ada.api("GET", "/api/me")[1]["device"]
    backup = tmp_path / "ada.crewbackup"
    crewnode("backup", backup, "--home", ada.home)                    # while Ada's node is serving
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    assert b"Before the laptop died" not in backup.read_bytes() and b"Riverside" not in backup.read_bytes()

    ada.stop()
    shutil.rmtree(ada.home)                                           # the laptop is gone

    new_home = tmp_path / "ada-new"
    wrong = crewnode("restore", backup, "--home", new_home, passphrase="not the passphrase", check=False)
    assert "wrong passphrase" in wrong.stderr and not new_home.exists()
    crewnode("restore", backup, "--home", new_home)
    assert oct((new_home / "identity" / "seal.key").stat().st_mode & 0o777) == "0o600"
    ada2 = node_factory.start(home=new_home, name="Ada")
    me = ada2.api("GET", "/api/me", expect=200)[1]
    assert me["id"] == ada_id and me["device"] != old_device
    assert "Before the laptop died" in agreement_titles(ada2, cid)

    speak(ada2, cid, "Carrying on")
    synced = bob.api("POST", "/api/sync", {"address": ada2.sync_address}, expect=200)[1]
    assert synced["received"] >= 2                                    # its announcement and the agreement
    agreements = bob.api("GET", f"/api/congregations/{cid}", expect=200)[1]["agreements"]
    carrying = next(a for a in agreements if a["title"] == "Carrying on")
    assert carrying["proposed_by"] == ada_id                          # the same member, a new device
    history = bob.api("GET", f"/api/congregations/{cid}/history", expect=200)[1]
    new_device_seqs = sorted(h["seq"] for h in history if h["device"] == me["device"])
    assert new_device_seqs[0] == 1                                    # a fresh log: nothing forked
    old = sorted(h["seq"] for h in history if h["device"] == old_device)
    assert old == list(range(1, len(old) + 1))


@pytest.mark.parametrize("damage", ["truncate", "flip-middle", "flip-last", "kdf-parameter", "kdf-memory"])
def test_a_damaged_backup_restores_nothing(node_factory, tmp_path, damage):
    ada = node_factory(name="Ada")
    congregation_with(ada)
    backup = tmp_path / "ada.crewbackup"
    crewnode("backup", backup, "--home", ada.home)
    data = bytearray(backup.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    elif damage == "kdf-parameter":                # no longer a power of two: scrypt cannot take it
        assert b'"n":131072' in data
        data = data.replace(b'"n":131072', b'"n":131073', 1)
    elif damage == "kdf-memory":                   # 2 GiB asked of whoever restores it: refused unread
        start = len(b"CREWNODE-BACKUP1") + 4
        (size,) = struct.unpack(">I", data[start - 4:start])
        header = json.loads(data[start:start + size])
        header["kdf"].update(n=2 ** 20, r=16)
        raw = json.dumps(header).encode()
        data = data[:start - 4] + struct.pack(">I", len(raw)) + raw + data[start + size:]
    else:
        data[len(data) // 2 if damage == "flip-middle" else -1] ^= 0x40
    backup.write_bytes(bytes(data))
    target = tmp_path / "restored"
    refused = crewnode("restore", backup, "--home", target, check=False)
    assert "damaged" in refused.stderr
    if damage == "kdf-memory":
        assert "far more memory or time" in refused.stderr
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if "restoring" in p.name]


def test_backup_needs_a_passphrase_and_restore_a_new_home(node_factory, tmp_path):
    ada = node_factory(name="Ada")
    refused = crewnode("backup", tmp_path / "b", "--home", ada.home, passphrase=None, check=False)
    assert "passphrase" in refused.stderr and not (tmp_path / "b").exists()
    crewnode("backup", tmp_path / "b", "--home", ada.home)
    refused = crewnode("restore", tmp_path / "b", "--home", ada.home, check=False)
    assert "not empty" in refused.stderr
    (tmp_path / "a-file").write_text("not a folder")
    refused = crewnode("restore", tmp_path / "b", "--home", tmp_path / "a-file" / "sub", check=False)
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in refused.stderr


# -- a second device ----------------------------------------------------------------------------

def test_a_second_device_joins_writes_and_is_retired(node_factory, tmp_path):
    ada, bob = node_factory(name="Ada"), node_factory(name="Bob")
    cid = congregation_with(ada, bob)
    crew = ada.api("POST", f"/api/congregations/{cid}/crews",
                   {"name": "Garden", "purpose": "", "members": [member_id(bob)]}, expect=201)[1]["id"]
    speak(bob, cid, "hello")                      # so that Bob's sealing key is known to Ada's devices
    bob.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)
    ada_id = member_id(ada)

    stopped = node_factory(name="Zed")
    stopped.stop()
    refused = crewnode("device", "add", "--home", stopped.home, check=False)
    assert "not running" in refused.stderr

    code = crewnode("device", "add", "--home", ada.home, "--label", "phone").stdout.strip()
    assert code.endswith(ada.sync_address)
    wrong = code[:2] + ("a" if code[2] != "a" else "b") + code[3:]
    assert "refused" in crewnode("device", "join", wrong, "--home", tmp_path / "nope", check=False).stderr
    assert not (tmp_path / "nope").exists()
    phone_home = tmp_path / "phone"
    joined = crewnode("device", "join", code, "--home", phone_home)
    assert "received" in joined.stdout
    assert not (phone_home / "identity" / "person.key").exists()     # the person key stays on the first device
    reused = crewnode("device", "join", code, "--home", tmp_path / "phone2", check=False)   # one-time code
    assert "refused" in reused.stderr

    phone = node_factory.start(home=phone_home, name="Ada")
    phone_me = phone.api("GET", "/api/me", expect=200)[1]
    assert phone_me["id"] == ada_id
    assert phone.api("GET", f"/api/crews/{crew}", expect=200)[1]["name"] == "Garden"
    phone.api("POST", f"/api/crews/{crew}/commitments", {"what": "Water the beans", "due": "2031-05-01"}, expect=201)
    phone.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)
    assert [c["what"] for c in ada.api("GET", f"/api/crews/{crew}")[1]["commitments"]] == ["Water the beans"]
    # Bob's node meets both of Ada's devices: two nodes, two lines.
    phone.api("POST", "/api/sync", {"address": bob.sync_address}, expect=200)
    ada_device = ada.api("GET", "/api/me", expect=200)[1]["device"]
    met = {p["device"]: p for p in bob.api("GET", "/api/peers", expect=200)[1] if p["id"] == ada_id}
    assert set(met) == {ada_device, phone_me["device"]} and not any(p["retired"] for p in met.values())

    devices = ada.api("GET", "/api/devices", expect=200)[1]
    assert {d["id"] for d in devices} == {ada.api("GET", "/api/me")[1]["device"], phone_me["device"]}
    assert [d["this"] for d in devices] == [True, False]
    assert phone.api("POST", f"/api/devices/{devices[0]['id']}/retire")[0] == 403   # no person key there
    assert ada.api("POST", f"/api/devices/{devices[0]['id']}/retire")[0] == 409     # not the one I use

    # The phone writes while offline, then is lost and retired from the first device.
    phone.api("POST", f"/api/crews/{crew}/commitments", {"what": "Written after the loss"}, expect=201)
    retired = ada.api("POST", f"/api/devices/{phone_me['device']}/retire", expect=200)[1]
    assert retired["retired"] is True
    bob.api("POST", "/api/sync", {"address": ada.sync_address}, expect=200)

    met = {p["device"]: p for p in bob.api("GET", "/api/peers", expect=200)[1] if p["id"] == ada_id}
    assert met[phone_me["device"]]["retired"] is True and met[ada_device]["retired"] is False
    assert "Retired device" in home_page(bob, "/peers")
    # Bob's node refuses the retired device outright, and its later entries even when carried by hand.
    assert phone.api("GET", "/api/me", expect=200)[1]["device_retired"] is None
    status, answer = phone.api("POST", "/api/sync", {"address": bob.sync_address})
    assert status >= 400 and "retired" in answer["error"]
    # ... and the phone's node says so from then on, to whoever picks it up
    told = phone.api("GET", "/api/me", expect=200)[1]["device_retired"]
    assert told["by"] == member_id(bob) and told["by_name"] == "Bob"
    assert "This device was retired" in home_page(phone)
    bundle = tmp_path / "from-phone.crewbundle"
    phone.stop()
    crewnode("bundle", "export", bundle, "--for", member_id(bob), "--home", phone_home)
    crewnode("bundle", "import", bundle, "--home", bob.home)
    whats = [c["what"] for c in bob.api("GET", f"/api/crews/{crew}")[1]["commitments"]]
    assert whats == ["Water the beans"]                              # its earlier entries stay


def test_device_join_leaves_a_folder_in_use_alone(node_factory, tmp_path):
    ada = node_factory(name="Ada")
    code = crewnode("device", "add", "--home", ada.home).stdout.strip()
    mine = tmp_path / "my-files"
    mine.mkdir(mode=0o755)
    (mine / "notes.txt").write_text("mine")
    refused = crewnode("device", "join", code, "--home", mine, check=False)
    assert f"{mine} already exists and is not empty: join into a new folder" in refused.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and mine.stat().st_mode & 0o777 == 0o755
    (tmp_path / "a-file").write_text("not a folder")
    refused = crewnode("device", "join", code, "--home", tmp_path / "a-file" / "sub", check=False)
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in refused.stderr
    crewnode("device", "join", code, "--home", tmp_path / "phone")   # the one-time code is still unused


def test_device_join_says_when_the_code_holds_no_address(tmp_path):
    code = "abcd-efgh-ijkl-mnop-qrst-uvwx-yz23-4567@nonsense"
    refused = crewnode("device", "join", code, "--home", tmp_path / "phone", check=False)
    assert "'nonsense' is not an address" in refused.stderr
    assert not (tmp_path / "phone").exists()


# -- exports ------------------------------------------------------------------------------------

def test_congregation_json_and_crew_calendar(node_factory):
    from icalendar import Calendar

    ada, bob = node_factory(name="Ada"), node_factory(name="Bob")
    cid = congregation_with(ada, bob)
    crew = ada.api("POST", f"/api/congregations/{cid}/crews",
                   {"name": "Garden", "purpose": "beans", "members": [member_id(bob)]}, expect=201)[1]["id"]
    ada.api("POST", f"/api/crews/{crew}/commitments", {"what": "Water the beans", "due": "2031-05-01"}, expect=201)
    ada.api("POST", f"/api/crews/{crew}/commitments", {"what": "No date"}, expect=201)

    status, export = ada.api("GET", f"/api/congregations/{cid}/export", expect=200)
    assert export["congregation"]["name"] == "Riverside"
    assert {m["name"] for m in export["congregation"]["members"]} == {"Ada", "Bob"}
    assert [c["name"] for c in export["crews"]] == ["Garden"]
    assert len(export["history"]) >= 3

    status, ics = ada.api("GET", f"/api/crews/{crew}/calendar.ics", expect=200)
    cal = Calendar.from_ical(ics)
    events = [e for e in cal.walk("VEVENT")]
    assert len(events) == 1
    assert "Water the beans" in str(events[0]["summary"])
    assert events[0].decoded("dtstart").isoformat() == "2031-05-01"


def test_devices_page_renders(node_factory):
    ada = node_factory(name="Ada")
    congregation_with(ada)
    status, html = ada.api("GET", "/devices", expect=200, headers={"Accept": "text/html"})
    assert "My devices" in html and "Download a backup" in html


def test_every_carry_command_has_help():
    for args in (["bundle", "export"], ["bundle", "import"], ["backup"], ["restore"], ["device", "add"],
                 ["device", "join"]):
        done = crewnode(*args, "--help")
        assert "usage: crewnode " + " ".join(args) in done.stdout


# -- one process at a time on a home (node.homelock) -----------------------------------------------

def test_a_second_node_on_the_same_home_is_refused(node_factory):
    ada = node_factory(name="Ada")
    ports = (ada.home / "ports.json").read_text()
    second = crewnode("serve", "--home", ada.home, "--port", "0", "--sync-port", "0", "--sync-host", "127.0.0.1",
                      "--no-discovery", "--no-browser", check=False, timeout=60)
    assert "already running for" in second.stderr and "Traceback" not in second.stderr
    # the first node goes on, its ports as they were
    assert (ada.home / "ports.json").read_text() == ports
    cid = ada.api("POST", "/api/congregations", {"name": "Still here"}, expect=201)[1]["id"]
    assert ada.api("GET", f"/api/congregations/{cid}", expect=200)[1]["name"] == "Still here"


def test_a_command_waits_for_a_busy_node_rather_than_going_round_it(node_factory, tmp_path):
    ada, bob, cid = news_for_bob(node_factory, "Carried while Bob's node was busy")
    bundle = tmp_path / "b.crewbundle"
    crewnode("bundle", "export", bundle, "--for", member_id(bob), "--home", ada.home)
    # Bob's node does not answer for a while (as in a long recompute): the import waits for it.
    bob.proc.send_signal(signal.SIGSTOP)
    try:
        env = {k: v for k, v in os.environ.items() if k != "CREWNODE_HOME"}
        importing = subprocess.Popen([sys.executable, "-m", "node.cli", "bundle", "import", str(bundle),
                                      "--home", str(bob.home)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and importing.poll() is None:
            time.sleep(0.1)
    finally:
        bob.proc.send_signal(signal.SIGCONT)
    out, err = importing.communicate(timeout=120)
    assert importing.returncode == 0, err
    assert "imported 1 new entries" in out
    assert "Carried while Bob's node was busy" in agreement_titles(bob, cid)   # taken by the node itself
