"""The `crewnode` command: serve a node, print its token, carry entries by hand."""
import argparse
import json
import os
import signal
import sys
import threading
import webbrowser
from pathlib import Path


def default_home() -> Path:
    """`$CREWNODE_HOME`, else the platform's user data folder."""
    if os.environ.get("CREWNODE_HOME"):
        return Path(os.environ["CREWNODE_HOME"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "crewnode"
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", Path.home())) / "crewnode"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "crewnode"


def add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, default=None,
                        help="the node's data folder (default: $CREWNODE_HOME, else your user data folder)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="crewnode", description=(
        "crewnode: an offline-first membership node for crews and congregations. "
        "Each member runs one; nodes sync with each other with no server."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run this member's node and its local page",
                           description="Run the node: the local page and API on 127.0.0.1, the sync "
                                       "listener for peers. A new home gets a new identity.")
    add_home(serve)
    serve.add_argument("--name", help="your display name (set on creation; renames later)")
    serve.add_argument("--port", type=int, default=8470, help="port of the local page and API on 127.0.0.1 (0: any free port)")
    serve.add_argument("--sync-port", type=int, default=8471, help="port peers sync with (0: any free port)")
    serve.add_argument("--sync-host", default="0.0.0.0", help="address the sync listener binds to (default all)")
    serve.add_argument("--no-discovery", action="store_true", help="do not advertise or look for peers on the LAN")
    serve.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")

    token = sub.add_parser("token", help="print the API token of a home")
    add_home(token)

    from . import carry_cli
    carry_cli.add_commands(sub, add_home)
    return parser


def main(argv=None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "home", None) is None and hasattr(args, "home"):
        args.home = default_home()
    if args.command == "serve":
        return serve(args)
    if args.command == "token":
        return print_token(args)
    return args.run(args)


def print_token(args) -> int:
    """`crewnode token`."""
    path = Path(args.home) / "token"
    if not path.exists():
        print(f"no node has been served from {args.home} yet; run `crewnode serve` first", file=sys.stderr)
        return 1
    print(path.read_text().strip())
    return 0


def serve(args) -> int:
    """`crewnode serve`: run until SIGINT/SIGTERM, then stop cleanly."""
    from werkzeug.serving import make_server

    from .homelock import HomeInUse
    from .runtime import Runtime

    try:
        runtime = Runtime(args.home, name=args.name, sync_host=args.sync_host, sync_port=args.sync_port,
                          discovery=not args.no_discovery)
    except HomeInUse as exc:
        print(f"crewnode: {exc.message}", file=sys.stderr)
        return 1
    server = make_server("127.0.0.1", args.port, runtime.app, threaded=True)
    port = server.server_port
    ports = {"port": port, "sync_port": runtime.sync_port}
    tmp = Path(args.home) / "ports.json.tmp"
    tmp.write_text(json.dumps(ports))
    os.replace(tmp, Path(args.home) / "ports.json")
    url = f"http://127.0.0.1:{port}/?token={runtime.token}"
    print(f"crewnode is running for {runtime.name or 'a new member'} ({runtime.member_id[:12]}…)", flush=True)
    print(f"  page:  {url}", flush=True)
    print(f"  ports: page {port}, sync {runtime.sync_port}", flush=True)
    stopping = threading.Event()

    def stop(signum, frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    finally:
        print("crewnode is stopping…", flush=True)
        # Requests already being answered finish before the store closes (no new ones arrive).
        runtime.app.config["IN_FLIGHT"].wait_idle(timeout=10)
        runtime.stop()
        print("crewnode stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
