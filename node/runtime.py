"""A running node: the Service on its thread, the local app, sync and discovery.

This is where node core, sync and Flask are composed; node core itself knows nothing of them.
"""
import gc
import os
from pathlib import Path

from sync.autosync import AutoSync
from sync.discovery import Discovery
from sync.engine import SyncEngine

from . import security
from .app import create_app
from .service import Service
from .worker import NodeThread


# A node's heap is mostly long-lived objects without cycles (documents' states, modules); a sync
# batch adds tens of thousands of them. With Python's defaults the cyclic collector then walks
# the whole heap again after nearly every batch; with these it does so about once per
# twenty million allocations, and never walks what was there at start-up.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_garbage_collector() -> None:
    """Collect cycles less often, and leave what start-up made (modules, the app) out of it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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
        tune_garbage_collector()

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
