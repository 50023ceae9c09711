"""The `crewnode` command line: help, `token`, and ports.json for port 0."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))
from conftest import NodeFactory  # noqa: E402


def crewnode(*args, env_extra=None, timeout=30):
    env = {k: v for k, v in os.environ.items() if k != "CREWNODE_HOME"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "crewnode"
    assert script.exists(), f"{script} missing: is crewnode installed in this environment?"
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "serve" in done.stdout


def test_help_lists_the_commands():
    done = crewnode("--help")
    assert done.returncode == 0
    for command in ("serve", "token"):
        assert command in done.stdout
    assert "usage: crewnode" in done.stdout


def test_serve_help_explains_every_flag():
    done = crewnode("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for flag, words in [("--home", "CREWNODE_HOME"), ("--name", "name"), ("--port", "127.0.0.1"),
                        ("--sync-port", "sync"), ("--sync-host", "address"), ("--no-discovery", "LAN"),
                        ("--no-browser", "browser")]:
        assert flag in text, flag
        assert words in text, (flag, words)
    assert "0: any free port" in text


def test_token_help():
    done = crewnode("token", "--help")
    assert done.returncode == 0 and "--home" in done.stdout


def test_no_command_or_a_bad_flag_is_a_usage_error():
    assert crewnode().returncode == 2
    done = crewnode("serve", "--port", "eighty")
    assert done.returncode == 2 and "invalid int value" in done.stderr
    assert crewnode("no-such-command").returncode == 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    factory = NodeFactory(tmp_path_factory.mktemp("cli"))
    try:
        yield factory.start(name="Ada")
    finally:
        factory.stop_all()


def test_token_prints_the_token(served):
    node = served
    done = crewnode("token", "--home", str(node.home))
    assert done.returncode == 0
    assert done.stdout == node.token + "\n"
    assert done.stdout.strip() == (node.home / "token").read_text().strip()
    # the token printed is the one the API takes
    assert node.api("GET", "/api/me", token=done.stdout.strip())[0] == 200
    # $CREWNODE_HOME is the default home
    by_env = crewnode("token", env_extra={"CREWNODE_HOME": str(node.home)})
    assert by_env.returncode == 0 and by_env.stdout.strip() == node.token


def test_token_of_a_home_never_served(tmp_path):
    done = crewnode("token", "--home", str(tmp_path / "nothing-here"))
    assert done.returncode != 0 and done.stdout == ""
    assert "serve" in done.stderr
    assert not (tmp_path / "nothing-here").exists()


def test_port_zero_writes_ports_json(served):
    node = served
    ports = json.loads((node.home / "ports.json").read_text())
    assert set(ports) == {"port", "sync_port"}
    assert ports["port"] == node.port and ports["port"] > 0
    assert isinstance(ports["sync_port"], int) and ports["sync_port"] > 0
    assert node.api("GET", "/api/health", token=None) == (200, {"ok": True})
    log = node.log.read_text()
    assert f"http://127.0.0.1:{ports['port']}/?token={node.token}" in log     # the page's URL is printed
    assert str(ports["sync_port"]) in log
    with socket.create_connection(("127.0.0.1", ports["sync_port"]), timeout=5):
        pass                                                                 # something listens there


def test_busy_port_is_a_clear_error(served, tmp_path):
    node = served
    done = crewnode("serve", "--home", str(tmp_path / "other"), "--port", str(node.port), "--sync-port", "0",
                    "--sync-host", "127.0.0.1", "--no-discovery", "--no-browser", timeout=30)
    assert done.returncode != 0
    assert "in use" in done.stderr + done.stdout and "Traceback" not in done.stderr
    assert node.api("GET", "/api/health", token=None)[0] == 200


def test_serve_stops_cleanly_on_ctrl_c(node_factory):
    """SIGINT as Ctrl-C sends it (SIGTERM: see test_durability's clean restart)."""
    import signal
    node = node_factory.start(name="Ada")
    node.proc.send_signal(signal.SIGINT)
    assert node.proc.wait(timeout=10) == 0
    assert "crewnode stopped." in node.log.read_text()
