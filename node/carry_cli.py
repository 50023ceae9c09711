"""CLI commands for carrying entries by hand: bundles, backups, second devices (issue 7).

Each command works whether or not a node is serving the home. When one is (its ports.json and
token answer, for the same device), bundles go through the running node's local API, so the
page shows imported entries at once and the documents' state stays in one process; otherwise
the command opens the home itself. A backup only reads the database (SQLite in WAL mode lets a
second connection read while the node writes).
"""
import getpass
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .errors import NodeError
from .homelock import home_in_use

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
RUNNING_NODE_WAIT_S = 60


class CliError(Exception):
    """A command that cannot go on; the message is for people."""


def add_commands(sub, add_home) -> None:
    """Register the carry commands on the `crewnode` parser."""
    bundle = sub.add_parser("bundle", help="carry news by hand: sealed bundles of entries",
                            description="Bundles carry entries to a member who cannot sync (on a USB stick, "
                                        "by e-mail). A bundle is sealed: only that member's devices can open it.")
    bsub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    export = bsub.add_parser("export", help="write a bundle for one member",
                             description="Write every entry of every congregation and crew that member may read "
                                         "(and nothing else) into FILE, sealed for their devices.")
    export.add_argument("file", type=Path, metavar="FILE", help="the bundle file to write")
    export.add_argument("--for", dest="member", required=True, metavar="MEMBER_ID",
                        help="the member id the bundle is for (on the page: their name, then copy id)")
    add_home(export)
    export.set_defaults(run=bundle_export)
    imp = bsub.add_parser("import", help="take in a bundle sealed for you",
                          description="Open a bundle sealed for you and take its entries, checked exactly as "
                                      "sync checks them. A damaged bundle is refused whole.")
    imp.add_argument("file", type=Path, metavar="FILE", help="the bundle file to read")
    add_home(imp)
    imp.set_defaults(run=bundle_import)

    backup = sub.add_parser("backup", help="save everything, sealed with a passphrase",
                            description="Write your person key, settings and all entries into FILE, encrypted "
                                        "with a passphrase ($CREWNODE_PASSPHRASE, else asked for). With the file "
                                        "and the passphrase you can carry on as yourself on a new machine.")
    backup.add_argument("file", type=Path, metavar="FILE", help="the backup file to write")
    add_home(backup)
    backup.set_defaults(run=backup_cmd)

    restore = sub.add_parser("restore", help="carry on as the same member on a new device",
                             description="Restore a backup into a NEW home: a new device key certified by your "
                                         "person key, all entries, the same member id. A wrong passphrase or a "
                                         "damaged file changes nothing.")
    restore.add_argument("file", type=Path, metavar="FILE", help="the backup file")
    restore.add_argument("--home", type=Path, required=True, metavar="NEWDIR",
                         help="a new (or empty) folder for the restored node")
    restore.set_defaults(run=restore_cmd)

    device = sub.add_parser("device", help="use a second device as the same member",
                            description="Pair a second device: `device add` on the first prints a one-time "
                                        "code, `device join CODE` on the second takes it (same network).")
    dsub = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    add = dsub.add_parser("add", help="print a one-time pairing code (the node must be running)",
                          description="Ask this home's running node for a one-time pairing code, valid for ten "
                                      "minutes. The code carries this node's address on the network.")
    add_home(add)
    add.add_argument("--address", metavar="HOST:PORT",
                     help="the address the new device reaches this node's sync port at (default: guessed)")
    add.add_argument("--label", default="", help="a name for the new device, e.g. 'phone'")
    add.set_defaults(run=device_add)
    join = dsub.add_parser("join", help="become a second device of the member who made CODE",
                           description="Pair this machine with your first device: receive a device certificate "
                                       "signed by your person key (which stays on the first device) and your "
                                       "congregations and crews.")
    join.add_argument("code", metavar="CODE", help="the code `crewnode device add` printed")
    join.add_argument("--home", type=Path, required=True, metavar="DIR", help="a new folder for this device's node")
    join.add_argument("--name", help="your display name (default: the one your first device uses)")
    join.set_defaults(run=device_join)


# -- talking to a running node -------------------------------------------------------------------

def running_node(home: Path):
    """(base URL, token) of the node serving `home` now, or None when none is (nothing holds the
    home). A node that holds it but does not answer is a refusal: going round it to the store
    would write behind its back."""
    home = Path(home)
    if not home_in_use(home):
        return None
    busy = CliError(f"another crewnode process is using {home} and its node does not answer: if a node is "
                    "running for it, wait until it is less busy (or start it again), then run this again")
    try:
        ports = json.loads((home / "ports.json").read_text())
        token = (home / "token").read_text().strip()
        base = f"http://127.0.0.1:{int(ports['port'])}"
    except (OSError, ValueError, KeyError, TypeError):
        raise busy from None
    try:
        # (a node busy with a long sync or a recompute answers late, not never)
        status, me = _request(base, token, "GET", "/api/me", timeout=RUNNING_NODE_WAIT_S)
    except OSError:
        raise busy from None
    from .identity import load_identity
    identity = load_identity(home)
    if status != 200 or identity is None or not isinstance(me, dict) or me.get("device") != identity.device_id:
        return None
    return base, token


def _request(base, token, method, path, data=None, content_type="application/json", timeout=120, raw=False):
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    if raw and status == 200:
        return status, body
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body.decode("utf-8", "replace")


def _api(running, method, path, data=None, content_type="application/json", raw=False):
    base, token = running
    status, answer = _request(base, token, method, path, data, content_type, raw=raw)
    if status >= 400:
        message = answer.get("error") if isinstance(answer, dict) else answer
        raise CliError(str(message or f"the node answered {status}"))
    return answer


def _with_home(home: Path, fn):
    """Run `fn(service)` on the home in this process (no node is serving it)."""
    from .identity import load_identity
    from .service import Service
    if load_identity(home) is None:
        raise CliError(f"there is no crewnode home at {home}: run `crewnode serve --home {home}` first, "
                       "or give the right --home")
    service = Service(home)
    try:
        return fn(service)
    finally:
        service.close()


def _check_writable(path: Path) -> None:
    """Refuse, in words, a FILE that cannot be written: checked before the work (a backup's
    passphrase, sealing a bundle) rather than after it."""
    path = Path(path)
    if path.is_dir():
        raise CliError(f"cannot write {path}: it is a folder; give the name of a file to write in it")
    if path.parent.exists() and not path.parent.is_dir():
        raise CliError(f"cannot write {path}: {path.parent} is a file, not a folder")
    if not path.parent.exists():
        raise CliError(f"cannot write {path}: no such folder {path.parent}")


def _check_new_home(home: Path, verb: str) -> None:
    """Refuse a home that is not a new (or empty) folder, before anything is asked or contacted:
    a node must never move in among someone's files."""
    home = Path(home)
    if home.exists() and not home.is_dir():
        raise CliError(f"{home} is a file, not a folder: {verb} into a new folder")
    if home.exists() and any(home.iterdir()):
        raise CliError(f"{home} already exists and is not empty: {verb} into a new folder")
    # The folders above it are made as needed; a file on the way would stop that midway.
    above = next(parent for parent in home.absolute().parents if parent.exists())
    if not above.is_dir():
        raise CliError(f"cannot make the folder {home}: {above} is a file, not a folder")


def _write_file(path: Path, data: bytes, private: bool = False) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:          # no permission, a full disk: nothing was written
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def _read_file(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def _passphrase(confirm: bool) -> str:
    given = os.environ.get("CREWNODE_PASSPHRASE")
    if given:
        return given
    if not sys.stdin.isatty():
        raise CliError("no passphrase: set $CREWNODE_PASSPHRASE, or run this in a terminal to be asked")
    from .carry import MIN_PASSPHRASE
    first = getpass.getpass("Passphrase: ")
    if confirm and len(first) < MIN_PASSPHRASE:          # said now, not after typing it twice
        raise CliError(f"a backup passphrase needs at least {MIN_PASSPHRASE} characters; nothing was written")
    if confirm and getpass.getpass("Passphrase again: ") != first:
        raise CliError("the two passphrases differ; nothing was written")
    return first


def _guard(fn):
    """Turn refusals into a message on stderr and exit code 1."""
    def run(args) -> int:
        try:
            return fn(args) or 0
        except (CliError, NodeError) as exc:
            print(f"crewnode: {getattr(exc, 'message', None) or exc}", file=sys.stderr)
            return 1
    run.__doc__ = fn.__doc__
    return run


# -- the commands ---------------------------------------------------------------------------------

@_guard
def bundle_export(args) -> int:
    """`crewnode bundle export FILE --for MEMBER_ID`."""
    from . import carry
    member = args.member.strip()        # an id copied from a page often brings a space along
    _check_writable(args.file)
    running = running_node(args.home)
    if running:
        data = _api(running, "GET", "/api/bundles?for=" + urllib.parse.quote(member), raw=True)
    else:
        data = _with_home(args.home, lambda s: carry.export_bundle(s.store, s.states, s.identity, member))
    _write_file(args.file, data)
    print(f"wrote {args.file} ({len(data) // 1024 + 1} KiB), sealed for member {member[:12]}…: "
          "only their devices can open it")
    return 0


@_guard
def bundle_import(args) -> int:
    """`crewnode bundle import FILE`."""
    from . import carry
    data = _read_file(args.file)
    if not data:
        raise CliError(f"{args.file} is empty: not a crewnode bundle")
    running = running_node(args.home)
    if running:
        result = _api(running, "POST", "/api/import", data, "application/octet-stream")
    else:
        result = _with_home(args.home, lambda s: carry.import_bundle(s.ledger, s.identity, data).as_dict())
    print(f"imported {result['accepted']} new entries ({result['known']} already here"
          + (f", {result['pending']} waiting for earlier ones" if result.get("pending") else "")
          + (f", {result['void']} kept but not counted (written by a member or device no longer in)"
             if result.get("void") else "") + ")")
    for item in result["refused"][:20]:
        print(f"  refused: {item['reason']}")
    return 0


@_guard
def backup_cmd(args) -> int:
    """`crewnode backup FILE`: reads the home's database directly (works while serving)."""
    from . import carry
    from .identity import load_identity
    from .store import Store
    identity = load_identity(args.home)
    if identity is None:
        raise CliError(f"there is no crewnode home at {args.home}")
    if identity.person_key is None:
        raise CliError("this device does not hold your person key (it was paired as a second device): "
                       "make the backup on your first device")
    _check_writable(args.file)
    passphrase = _passphrase(confirm=True)
    store = Store(Path(args.home) / "crewnode.db")
    try:
        data = carry.make_backup(store, identity, passphrase)
    finally:
        store.close()
    _write_file(args.file, data, private=True)
    print(f"wrote {args.file}: your person key and all entries, sealed with your passphrase. Keep it safe, "
          "and keep the passphrase somewhere else.")
    return 0


@_guard
def restore_cmd(args) -> int:
    """`crewnode restore FILE --home NEWDIR`."""
    from . import carry
    from .service import Service
    data = _read_file(args.file)
    home = Path(args.home)
    _check_new_home(home, "restore")
    done = carry.restore(data, _passphrase(confirm=False), home, Service)
    print(f"restored member {done['member'][:12]}… into {home} as a new device ({done['device'][:12]}…): "
          f"{done['entries']} entries. Start it with `crewnode serve --home {home}`.")
    if done.get("previous_device"):
        print(f"If the old device ({done['previous_device'][:12]}…) is lost, retire it on the Devices page.")
    return 0


@_guard
def device_add(args) -> int:
    """`crewnode device add`: needs this home's node running (it answers the new device)."""
    running = running_node(args.home)
    if not running:
        raise CliError(f"the node of {args.home} is not running, and it is the one that answers the new device: "
                       f"start it with `crewnode serve --home {args.home}`, then run this again")
    body = {"label": args.label}
    if args.address:
        body["address"] = args.address
    answer = _api(running, "POST", "/api/devices/pair", json.dumps(body).encode())
    print(answer["code"])
    print(f"On the new device, on the same network, within ten minutes (until {answer['expires']}):\n"
          f"  crewnode device join {answer['code']} --home NEW-FOLDER", file=sys.stderr)
    return 0


@_guard
def device_join(args) -> int:
    """`crewnode device join CODE --home DIR`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from sync import protocol
    from sync.engine import verify_peer
    from sync.transport import SyncClient, TransportError

    from . import carry
    from .identity import (Identity, IdentityError, check_device_cert, load_identity, make_device_cert, raw_public,
                           raw_seal_public)
    from .ids import b32, canonical_json, unb32
    from .service import Service

    home = Path(args.home)
    if load_identity(home) is not None:
        raise CliError(f"{home} already holds a node; a new device needs a new folder")
    _check_new_home(home, "join")
    secret, pin, address = carry.parse_pair_code(args.code)
    device_key, seal_key = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    device_pub, seal_pub = raw_public(device_key), raw_seal_public(seal_key)
    # Until the first device certifies it, this device shows itself under a throwaway person key.
    stranger = make_device_cert(Ed25519PrivateKey.generate(), device_pub, seal_pub)
    client = SyncClient(address, device_key, canonical_json(stranger), verify_peer)
    try:
        try:
            client.connect()
        except (TransportError, OSError) as exc:
            raise CliError(f"could not reach your first device at {address}: {exc} (is its node running, "
                           "on the same network?)") from None
        if carry.pair_pin(client.peer_device_key) != pin:
            raise CliError(f"the node at {address} is not the device that made this code; nothing was done")
        request = {"device": b32(device_pub), "seal": b32(seal_pub), "proof": b32(carry.pair_proof(secret, device_pub, seal_pub))}
        try:
            reply = protocol.unpack(client.call("pair", protocol.pack(request)))[0]
        except TransportError as exc:
            raise CliError(f"your first device refused: {exc.message}") from None
        first_member = client.peer_member_id
    finally:
        client.close()
    cert = reply.get("cert")
    try:
        person, device = check_device_cert(cert)
    except IdentityError as exc:
        raise CliError(f"the certificate your first device sent does not hold: {exc}") from None
    if person != first_member or unb32(device) != device_pub or unb32(cert["seal"]) != seal_pub:
        raise CliError("the certificate your first device sent is for other keys; nothing was saved")
    identity = Identity(person, device_key, cert, None, seal_key)
    home.mkdir(parents=True, exist_ok=True)
    identity.save(home)
    print(f"this machine is now a device of member {person[:12]}… (home {home})")
    service = Service(home, name=args.name or reply.get("name") or None)
    try:
        def run(fn, *a):
            return fn(service, *a)
        with SyncClient(address, device_key, identity.cert_blob, verify_peer) as synced:
            received, _ = protocol.run_exchange(run, person, synced.call)
            announced = carry.announce_device(service)
            if announced:
                protocol.run_exchange(run, person, synced.call)
    except (TransportError, OSError, NodeError) as exc:
        print(f"crewnode: paired, but fetching your documents failed ({exc}); start this node with "
              f"`crewnode serve --home {home}` and it will sync when it meets your other device", file=sys.stderr)
        return 1
    finally:
        service.close()
    docs = len(carry.readable_docs(service.states, person))
    print(f"received {received} entries: {docs} congregations and crews. Start it with `crewnode serve --home {home}`.")
    return 0
