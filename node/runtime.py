"""A running node: the Service on its thread, the local app, sync and discovery.

This is where node core, sync and Flask are composed; node core itself knows nothing of them.
"""
import os
from pathlib import Path

from sync.autosync import AutoSync
from sync.discovery import Discovery
from sync.engine import SyncEngine

from . import security
from .app import create_app
from .service import Service
from .worker import NodeThread


class Runtime:
    """Everything `crewnode serve` runs, started in the right order and stopped in reverse."""

    def __init__(self, home: Path, name: str | None = None, sync_host: str = "0.0.0.0",
                 sync_port: int = 8471, discovery: bool = True):
        self.home = Path(home)
        self.node = NodeThread(lambda: Service(self.home, name=name))
        self.token = security.load_or_create_token(self.home)
        self.sync = SyncEngine(self.node, sync_host, sync_port)
        self.sync.start()
        self.sync_port = self.sync.port
        self.discovery = None
        if discovery:
            self._start_discovery()
        self.app = create_app(self.node, self.token, self.sync)
        me = self.node.call(Service.me_view)
        self.member_id, self.name = me["id"], me["name"]

    def _start_discovery(self) -> None:
        autosync = AutoSync(self.sync)
        self.sync.autosync = autosync
        self.node.call(lambda s: s.listeners.append(autosync.changed))
        autosync.start()
        # Tests and the gathering benchmark narrow discovery to loopback; members never need to.
        interfaces = os.environ.get("CREWNODE_DISCOVERY_INTERFACES")
        self.discovery = Discovery(self.sync_port, autosync.found, autosync.lost,
                                   interfaces=interfaces.split(",") if interfaces else None)
        self.discovery.start()

    def stop(self) -> None:
        """Stop everything: goodbye on the LAN first, the store closed last, after snapshots."""
        if self.discovery is not None:
            self.discovery.stop()
            self.sync.autosync.stop()
        self.sync.stop()
        self.node.stop()
