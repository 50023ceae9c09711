"""Copying the write-ahead log into the database file, on a thread of its own.

SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the thread
that committed: during a long sync the node's thread would stop for a few hundred milliseconds
every few batches, copying pages and waiting for fsync. Here a second connection does it
beside the node's thread (sqlite releases the GIL meanwhile), and the node's thread goes on.
"""
import os
import sqlite3
import threading

CHECKPOINT_BYTES = 4 * 1024 * 1024


class Checkpointer:
    """Checkpoints a database's WAL in the background once it has grown past a few MB."""

    def __init__(self, path, threshold: int = CHECKPOINT_BYTES):
        self._path = str(path)
        self._wal = f"{self._path}-wal"
        self._threshold = threshold
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def nudge(self) -> None:
        """Called after a commit: checkpoint soon if the WAL has grown past the threshold."""
        try:
            big = os.stat(self._wal).st_size >= self._threshold
        except OSError:
            return
        if not big or self._stopping:
            return
        if self._thread is None:                    # started on first need: most stores never need it
            self._thread = threading.Thread(target=self._run, name="crewnode-checkpoint", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            while True:
                self._wake.wait()
                self._wake.clear()
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
