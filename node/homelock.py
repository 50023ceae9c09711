"""One process at a time on a member's home.

Two nodes on one home would each write this device's next entry at the same seq: a forked log,
of which every node keeps one side and drops the other, with what was written on it. A command
line opening the store behind a running node's back would do the same. The lock is an flock on
a file in the home, so it goes with its process, however that ends.
"""
import fcntl
import os
from pathlib import Path

from .errors import Conflict

LOCK_FILE = "lock"


class HomeInUse(Conflict):
    """Another process (a node serving the home, say) holds it."""


def lock_home(home: Path):
    """Hold `home` for this process until the returned file is closed; HomeInUse if another does."""
    handle = open(Path(home) / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        by = f" (process {holder})" if holder.isdigit() else ""
        raise HomeInUse(f"a crewnode node is already running for {home}{by}: use its page, or stop it "
                        "before starting another on the same home") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def home_in_use(home: Path) -> bool:
    """Whether a process holds `home` now."""
    try:
        handle = open(Path(home) / LOCK_FILE)
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
