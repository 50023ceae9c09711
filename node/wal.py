"""Copying the write-ahead log into the database file, on a thread of its own, when quiet.

SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the thread
that committed: during a long sync the node's thread would stop for a few hundred milliseconds
every few batches, copying pages and waiting for fsync. Here a second connection does it beside
the node's thread (SQLite releases the GIL meanwhile), once writes have paused for a moment, so
it does not compete with a sync under way for the second core; or at once if the WAL has grown
very large.
"""
import os
import sqlite3
import threading
import time

CHECKPOINT_BYTES = 4 * 1024 * 1024      # worth a checkpoint once writes pause
URGENT_BYTES = 256 * 1024 * 1024        # checkpoint now, writes or not
QUIET_S = 0.5                           # writes have paused when none came for this long


class Checkpointer:
    """Checkpoints a database's WAL in the background once it has grown past a few MB."""

    def __init__(self, path, threshold: int = CHECKPOINT_BYTES):
        self._path = str(path)
        self._wal = f"{self._path}-wal"
        self._threshold = threshold
        self._wake = threading.Event()
        self._stopping = False
        self._last_write = 0.0
        self._thread: threading.Thread | None = None

    def nudge(self) -> None:
        """Called after a commit: checkpoint once writes pause, if the WAL has grown past the threshold."""
        self._last_write = time.monotonic()
        if self._stopping or self._wal_size() < self._threshold:
            return
        if self._thread is None:                    # started on first need: most stores never need it
            self._thread = threading.Thread(target=self._run, name="crewnode-checkpoint", daemon=True)
            self._thread.start()
        self._wake.set()

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except OSError:
            return 0

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            while True:
                self._wake.wait()
                self._wake.clear()
                while not self._stopping and self._wal_size() < URGENT_BYTES:
                    wait = self._last_write + QUIET_S - time.monotonic()
                    if wait <= 0:
                        break
                    time.sleep(wait)
                if self._stopping:
                    return
                # PASSIVE: copies what it can without blocking the writer or any reader.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            return                                  # the node's own connection checkpoints at close
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the thread (waiting for a checkpoint under way to finish)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
