"""The node's SQLite file: accepted entries, entries waiting for their dependencies, snapshots.

One connection, used from the node's own thread, and by a writer thread while the node's
thread waits for it (see `write_behind`). Writes are grouped into one transaction per batch
(sqlite-utils commits on every call otherwise), and the file is in WAL mode with full sync,
so an entry is on disk before anyone is told it was written (entries received from peers,
which the peers still hold, are committed without an fsync of their own: see atomic).
"""
import json
import logging
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from . import packed_rows
from .entries import decode_entry, decode_held
from .errors import StorageFailed
from .wal import Checkpointer

log = logging.getLogger(__name__)
ENTRY_COLUMNS = ("hash", "doc", "device", "seq", "author", "at", "kind", "raw", "status", "reason")
_INSERT_PACKED = packed_rows.insert_sql("entries", ENTRY_COLUMNS)


class Store:
    """Entries and snapshots in `home/crewnode.db`."""

    def __init__(self, path: Path, hold=None):
        """`hold`: what keeps the home for this process (node.homelock), let go when the store closes."""
        self._hold = hold
        # Autocommit outside `atomic()`: Python's implicit transactions would otherwise keep a
        # lone write uncommitted and turn the next `atomic()` into a savepoint that never commits.
        # Not bound to one thread: the writer thread uses it too, never at the same time.
        self._db = sqlite_utils.Database(sqlite3.connect(str(path), isolation_level=None, check_same_thread=False))
        self._behind: Future | None = None             # the write under way on the writer thread
        self._writer: ThreadPoolExecutor | None = None
        self._writer_thread: threading.Thread | None = None
        # Called (on the thread that finds out) when a write behind failed: whoever holds in
        # memory what it was writing must forget it.
        self.on_lost_writes = None
        # 16 KiB pages (SQLite's default is 4 KiB): inserting a received batch touches fewer
        # pages of the entries' indexes, about a fifth less work for the writer. Takes effect
        # only in a new file (before its first table); an older file keeps its pages.
        self.db.execute("PRAGMA page_size=16384")
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=FULL")
        # 32 MiB of page cache (the default is 2 MiB): the entries' indexes of a long history
        # stay in memory, so inserting a batch does not re-read them page by page.
        self.db.execute("PRAGMA cache_size=-32768")
        # The WAL is copied into the file by a thread of its own (node.wal), not by the commit
        # that crosses a threshold; this connection still does it at close.
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self.checkpointer = Checkpointer(path)
        self._create_tables()

    def _create_tables(self) -> None:
        db = self.db
        if "entries" not in db.table_names():
            db["entries"].create({
                "hash": str, "doc": str, "device": str, "seq": int, "author": str, "at": int,
                "kind": str, "raw": bytes, "status": str,
            }, pk="hash")
            db["entries"].create_index(["doc", "device", "seq"])
        if "reason" not in db["entries"].columns_dict:
            db["entries"].add_column("reason", str)
        if "pending" not in db.table_names():
            db["pending"].create({"hash": str, "doc": str, "raw": bytes, "reason": str, "received": int}, pk="hash")
            db["pending"].create_index(["doc"])
        if "sender" not in db["pending"].columns_dict:
            db["pending"].add_column("sender", str)
        if "snapshots" not in db.table_names():
            db["snapshots"].create({"doc": str, "upto": int, "state": bytes, "facts": str}, pk="doc")
        if "kv" not in db.table_names():
            db["kv"].create({"key": str, "value": str}, pk="key")

    @property
    def db(self) -> sqlite_utils.Database:
        """The database, once any write under way on the writer thread is done."""
        if self._behind is not None and threading.current_thread() is not self._writer_thread:
            self.catch_up()
        return self._db

    def catch_up(self) -> None:
        """Wait for the write under way on the writer thread. If it failed, nothing of it is
        stored: `on_lost_writes` is called, then StorageFailed raised, once."""
        behind, self._behind = self._behind, None
        if behind is None:
            return
        try:
            behind.result()
        except Exception as exc:
            if self.on_lost_writes is not None:
                self.on_lost_writes()
            raise StorageFailed(f"received entries could not be stored ({exc}); none of them were kept, "
                                "and the next sync brings them again") from exc

    def write_behind(self, rows: list[tuple], then=None) -> None:
        """Insert held entries (as `insert_entries`), then run `then(store)`, in one transaction
        (not durable, as `atomic(False)`) made by a writer thread while the caller goes on; the
        next use of the store waits for it.

        For received batches: the rows travel packed (node.packed_rows) into a single INSERT,
        which SQLite runs with the GIL released while the node's thread takes in the next batch.
        """
        packed = packed_rows.pack_rows(rows)
        self.catch_up()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="crewnode-store", initializer=self._be_writer)
        self._behind = self._writer.submit(self._write_rows, packed, then)

    def _be_writer(self) -> None:
        self._writer_thread = threading.current_thread()

    def _write_rows(self, packed: dict, then) -> None:
        try:
            with self.atomic(durable=False):
                self._db.conn.execute(_INSERT_PACKED, packed)
                if then is not None:
                    then(self)
        except Exception:
            log.exception("a batch of received entries could not be stored")
            raise

    @contextmanager
    def atomic(self, durable: bool = True):
        """One transaction for a batch of writes, on disk (fsynced) when it commits.

        Not `durable`: for entries received from a peer, which the peer still holds. The commit
        is not fsynced (WAL with synchronous=NORMAL): a crash of the process loses nothing, a
        power cut may lose the last such batches but never corrupts the file, and the next sync
        brings them again. My own entries are always written durably.
        """
        level = None if durable else self.db.execute("PRAGMA synchronous").fetchone()[0]
        if level is not None and level > 1:
            self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self.db.atomic():
                yield
            self.checkpointer.nudge()
        finally:
            if level is not None and level > 1:
                self.db.execute(f"PRAGMA synchronous={int(level)}")

    def close(self) -> None:
        """Close the connection (WAL content is checkpointed by SQLite)."""
        try:
            self.catch_up()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
            self.checkpointer.close()
            self._db.close()
            if self._hold is not None:
                self._hold.close()

    # -- entries ---------------------------------------------------------------------------

    def insert_entries(self, rows: list[tuple]) -> None:
        """Insert held entries: (hash, doc, device, seq, author, at, kind, raw, status, reason),
        or packed_rows.SharedRows."""
        self.db.conn.executemany(
            f"INSERT OR IGNORE INTO entries ({', '.join(ENTRY_COLUMNS)}) VALUES ({', '.join('?' * len(ENTRY_COLUMNS))})",
            packed_rows.each_row(rows))

    def set_statuses(self, verdicts: dict) -> None:
        """Record, after a recompute, which held entries count: {hash: None or why not}."""
        self.db.conn.executemany(
            "UPDATE entries SET status = ?, reason = ? WHERE hash = ?",
            [("accepted" if why is None else "void", why, h) for h, why in verdicts.items()])

    def status_of(self, entry_hash: str) -> tuple | None:
        """(status, reason) of a held entry, or None."""
        row = self.db.execute("SELECT status, reason FROM entries WHERE hash = ?", [entry_hash]).fetchone()
        return (row[0], row[1]) if row else None

    def hashes_at(self, doc: str, device: str, seq: int) -> list[str]:
        """Hashes of every held entry at (doc, device, seq): more than one means a forked log."""
        return [r[0] for r in self.db.execute(
            "SELECT hash FROM entries WHERE doc = ? AND device = ? AND seq = ?", [doc, device, seq])]

    def void_entries(self, doc: str, limit: int = 50) -> list[tuple]:
        """(author, raw, reason) of a document's held entries that do not count, newest first."""
        return self.db.execute(
            "SELECT author, raw, reason FROM entries WHERE doc = ? AND status = 'void' ORDER BY at DESC, hash DESC LIMIT ?",
            [doc, limit]).fetchall()

    def void_admissions(self, doc: str) -> list[tuple]:
        """(rowid, author, Entry) of a document's admissions that do not count."""
        return [(rowid, author, decode_entry(raw)) for rowid, author, raw in self.db.execute(
            "SELECT rowid, author, raw FROM entries WHERE doc = ? AND status = 'void' AND kind IN ('admit', 'add')",
            [doc])]

    def has_void(self, doc: str, reason: str) -> bool:
        """True when the document holds a void entry for that reason."""
        return self.db.execute("SELECT 1 FROM entries WHERE doc = ? AND reason = ? LIMIT 1",
                               [doc, reason]).fetchone() is not None

    def held_among(self, hashes) -> set[str]:
        """Which of `hashes` are held here (one query per 500, not one per entry)."""
        hashes = list(hashes)
        out: set[str] = set()
        for start in range(0, len(hashes), 500):
            chunk = hashes[start:start + 500]
            out.update(r[0] for r in self.db.execute(
                f"SELECT hash FROM entries WHERE hash IN ({','.join('?' * len(chunk))})", chunk))
        return out

    def has(self, entry_hash: str) -> bool:
        """True when the entry is accepted here."""
        return self.db.execute("SELECT 1 FROM entries WHERE hash = ?", [entry_hash]).fetchone() is not None

    def hash_at(self, doc: str, device: str, seq: int) -> str | None:
        """Hash of the accepted entry at (doc, device, seq), if any."""
        row = self.db.execute("SELECT hash FROM entries WHERE doc = ? AND device = ? AND seq = ?",
                              [doc, device, seq]).fetchone()
        return row[0] if row else None

    def doc_ids(self) -> list[str]:
        """Every document with accepted entries, genesis-first order of creation."""
        return [r[0] for r in self.db.execute(
            "SELECT doc FROM entries WHERE seq = 1 AND hash = doc ORDER BY rowid")]

    def entries_of(self, doc: str, after_rowid: int = 0):
        """(rowid, author, Entry) of a document's held entries, in stored order."""
        for rowid, author, entry, _, _ in self.held_entries(doc, after_rowid):
            yield rowid, author, entry

    def held_entries(self, doc: str, after_rowid: int = 0):
        """(rowid, author, Entry, status, reason) of a document's held entries, in stored order;
        status is "accepted", or "void" with the reason it does not count."""
        for rowid, entry_hash, author, raw, status, reason in self.db.execute(
                "SELECT rowid, hash, author, raw, status, reason FROM entries WHERE doc = ? AND rowid > ? ORDER BY rowid",
                [doc, after_rowid]):
            yield rowid, author, decode_held(raw, entry_hash), status, reason

    def raw_after(self, doc: str, vector: dict[str, int], limit: int | None = None) -> list[bytes]:
        """Raw entries of `doc` beyond `vector` (device -> highest seq), in log order."""
        have = self.vector(doc)
        out: list[bytes] = []
        for device, top in sorted(have.items()):
            since = vector.get(device, 0)
            if top <= since:
                continue
            out.extend(r[0] for r in self.db.execute(
                "SELECT raw FROM entries WHERE doc = ? AND device = ? AND seq > ? ORDER BY seq",
                [doc, device, since]))
            if limit is not None and len(out) >= limit:
                break
        return out if limit is None else out[:limit]

    def rowid_of(self, entry_hash: str) -> int | None:
        """The stored position of a held entry."""
        row = self.db.execute("SELECT rowid FROM entries WHERE hash = ?", [entry_hash]).fetchone()
        return row[0] if row else None

    def missing(self, doc: str, vector: dict[str, int], limit: int, upto: int | None = None) -> list[bytes]:
        """Up to `limit` raw entries of `doc` beyond `vector`, in the order they were accepted here.

        Acceptance order is causal order (every entry was accepted after what it depends on),
        so a peer can accept a batch in this order without waiting.
        """
        return [raw for _, raw in self.missing_rows(doc, vector, limit, upto)]

    def missing_rows(self, doc: str, vector: dict[str, int], limit: int, upto: int | None = None,
                     after: int = 0) -> list[tuple[int, bytes]]:
        """(rowid, raw) of up to `limit` entries of `doc` beyond `vector` and stored after rowid
        `after` (a cursor), in stored order.

        The scan starts at the first entry the peer lacks: the first stored of the devices'
        entries at the seq after the peer's (an entry is stored only after the one it follows,
        so every later entry of a device comes after it). Each batch of a long sync thus reads
        what it sends, not the whole document again.
        """
        conn = self.db.conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS peer_vector (device TEXT PRIMARY KEY, seq INTEGER)")
        conn.execute("DELETE FROM peer_vector")
        conn.executemany("INSERT OR REPLACE INTO peer_vector VALUES (?, ?)", list(vector.items()))
        first = conn.execute(
            "SELECT MIN(e.rowid) FROM entries e LEFT JOIN peer_vector v ON v.device = e.device"
            " WHERE e.doc = ? AND e.seq = COALESCE(v.seq, 0) + 1", [doc]).fetchone()[0]
        if first is None:
            return []
        # One lower bound (SQLite seeks to one of two and only filters by the other).
        return conn.execute(
            "SELECT e.rowid, e.raw FROM entries e NOT INDEXED LEFT JOIN peer_vector v ON v.device = e.device"
            " WHERE e.rowid >= ? AND e.rowid <= ? AND e.doc = ? AND e.seq > COALESCE(v.seq, 0)"
            " ORDER BY e.rowid LIMIT ?",
            [max(first, after + 1), upto if upto is not None else 2**62, doc, limit]).fetchall()

    def device_entries(self, doc: str, device: str) -> list[bytes]:
        """Every held entry of one device in a document, every branch, in stored order."""
        return [r[0] for r in self.db.execute(
            "SELECT raw FROM entries WHERE doc = ? AND device = ? ORDER BY rowid", [doc, device])]

    def log_entries(self, doc: str, device: str, first: int, last: int) -> list[bytes]:
        """Held entries of one device in a document from seq `first` to `last`, in seq order."""
        return [r[0] for r in self.db.execute(
            "SELECT raw FROM entries WHERE doc = ? AND device = ? AND seq BETWEEN ? AND ? ORDER BY seq, rowid",
            [doc, device, first, last])]

    def device_count(self, doc: str, device: str) -> int:
        """How many entries of one device in a document are held, every branch."""
        return self.db.execute("SELECT COUNT(*) FROM entries WHERE doc = ? AND device = ?", [doc, device]).fetchone()[0]

    def vector(self, doc: str) -> dict[str, int]:
        """device -> highest accepted seq, for one document."""
        return dict(self.db.execute(
            "SELECT device, MAX(seq) FROM entries WHERE doc = ? GROUP BY device", [doc]).fetchall())

    def vector_upto(self, doc: str, rowid: int) -> dict[str, int]:
        """device -> highest seq among a document's entries stored up to `rowid`."""
        return dict(self.db.execute(
            "SELECT device, MAX(seq) FROM entries WHERE doc = ? AND rowid <= ? GROUP BY device", [doc, rowid]).fetchall())

    def history(self, doc: str, limit: int = 500) -> list[tuple]:
        """(author, device, seq, at, raw, why it does not count or None) newest first."""
        return self.db.execute(
            "SELECT author, device, seq, at, raw, CASE WHEN status = 'void' THEN COALESCE(reason, '') END"
            " FROM entries WHERE doc = ? ORDER BY at DESC, rowid DESC LIMIT ?",
            [doc, limit]).fetchall()

    def heads(self) -> dict[tuple, tuple]:
        """(doc, device) -> (seq, hash) of the newest entry on each log's kept branch.

        Each log's last entry comes from the (doc, device, seq) index, without reading the table;
        only a log whose last entry is on a dropped branch of a fork is looked at in full.
        """
        kept = "NOT (status = 'void' AND reason LIKE 'forked log%')"
        out: dict[tuple, tuple] = {}
        for doc, device, top in self.db.execute("SELECT doc, device, MAX(seq) FROM entries GROUP BY doc, device"):
            for h, status, reason in self.db.execute(
                    "SELECT hash, status, reason FROM entries WHERE doc = ? AND device = ? AND seq = ?",
                    [doc, device, top]):
                if not (status == "void" and (reason or "").lower().startswith("forked log")):
                    out[(doc, device)] = (top, h)
            if (doc, device) not in out:
                row = self.db.execute(
                    f"SELECT seq, hash FROM entries WHERE doc = ? AND device = ? AND {kept} ORDER BY seq DESC LIMIT 1",
                    [doc, device]).fetchone()
                if row:
                    out[(doc, device)] = (row[0], row[1])
        return out

    def max_rowid(self) -> int:
        """The rowid of the newest entry."""
        return self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM entries").fetchone()[0]

    # -- pending ---------------------------------------------------------------------------

    def add_pending(self, rows: list[tuple]) -> None:
        """Keep entries that wait for their dependencies: (hash, doc, raw, reason, received,
        sender: the peer member that brought it, or None)."""
        self.db.conn.executemany(
            "INSERT OR REPLACE INTO pending (hash, doc, raw, reason, received, sender) VALUES (?, ?, ?, ?, ?, ?)", rows)

    def drop_pending(self, hashes: list[str]) -> None:
        """Forget pending entries that were accepted or refused."""
        self.db.conn.executemany("DELETE FROM pending WHERE hash = ?", [(h,) for h in hashes])

    def pending_raw(self) -> list[tuple[str, bytes, str | None]]:
        """(hash, raw, sender) of every pending entry, the longest waiting first."""
        return self.db.execute("SELECT hash, raw, sender FROM pending ORDER BY rowid").fetchall()

    def pending_count(self) -> int:
        """How many entries wait."""
        return self.db.execute("SELECT COUNT(*) FROM pending").fetchone()[0]

    # -- snapshots and settings ------------------------------------------------------------

    def save_snapshot(self, doc: str, upto: int, state: bytes, facts: bytes | None = None) -> None:
        """Keep a document's pycrdt state as of entry rowid `upto`, so start-up skips replay;
        with `facts` (node.snapshots), its facts too. Without, facts kept earlier stay: they
        carry their own position, and start-up replays the entries after it."""
        if facts is None:
            self.db.execute("INSERT INTO snapshots (doc, upto, state, facts) VALUES (?, ?, ?, '')"
                            " ON CONFLICT(doc) DO UPDATE SET upto = excluded.upto, state = excluded.state",
                            [doc, upto, state])
        else:
            self.db.execute("INSERT OR REPLACE INTO snapshots (doc, upto, state, facts) VALUES (?, ?, ?, ?)",
                            [doc, upto, state, facts])

    def drop_snapshot(self, doc: str) -> None:
        """Forget a snapshot that no longer matches what counts."""
        self.db.execute("DELETE FROM snapshots WHERE doc = ?", [doc])

    def snapshot(self, doc: str) -> tuple[int, bytes] | None:
        """(upto, state) of a document's snapshot, if any."""
        row = self.db.execute("SELECT upto, state FROM snapshots WHERE doc = ?", [doc]).fetchone()
        return (row[0], row[1]) if row else None

    def snapshot_facts(self, doc: str):
        """The facts kept with a document's snapshot (node.snapshots), or None."""
        row = self.db.execute("SELECT facts FROM snapshots WHERE doc = ?", [doc]).fetchone()
        return row[0] if row and row[0] else None

    def device_authors(self) -> dict[str, str]:
        """device -> member, for every device with a held entry (its first entry in each
        document, found through the index: every entry of a device has the same author)."""
        return dict(self.db.execute(
            "SELECT e.device, e.author FROM (SELECT doc, device, MIN(seq) AS seq FROM entries GROUP BY doc, device) m"
            " JOIN entries e ON e.doc = m.doc AND e.device = m.device AND e.seq = m.seq").fetchall())

    def get(self, key: str, default=None):
        """A setting, JSON-decoded."""
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def put(self, key: str, value) -> None:
        """Store a setting as JSON."""
        self.db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", [key, json.dumps(value)])
