"""A running node: the Service on its thread, the local app, sync and discovery.

This is where node core, sync and Flask are composed; node core itself knows nothing of them.
"""
from pathlib import Path

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
        self.app = create_app(self.node, self.token, self.sync)
        me = self.node.call(Service.me_view)
        self.member_id, self.name = me["id"], me["name"]

    def stop(self) -> None:
        """Stop everything; the store is closed last, after snapshots."""
        self.sync.stop()
        self.node.stop()
