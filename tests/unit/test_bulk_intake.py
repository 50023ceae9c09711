"""Taking in big batches: the store's writer thread, WAL checkpoints and facts snapshots left
for quiet moments, the exchange's batch limit, and entry times that follow what was read.

Real Services on real SQLite files; conditions are waited for with a deadline.
"""
import os
import sqlite3
import time

import pytest

from factories import Member, admit, content_edits, service
from node.ids import now_ms
from node.entries import MAX_NUMBER
from node.errors import StorageFailed
from node.ledger import SNAPSHOT_EVERY
from node.packed_rows import SharedRows, each_row
from node.service import CLOCK_SKEW_MS
from node.store import Store
from node import worker
from node.worker import NodeThread
from support import wait_for
from sync import protocol

WAIT = 15


@pytest.fixture
def ada(tmp_path):
    svc = service(tmp_path, "Ada")
    yield svc
    svc.close()


def test_received_entries_are_readable_at_once_though_written_behind(ada):
    cid = ada.create_congregation("Riverside", "")["id"]
    mo = Member("Mo")
    admit(ada, cid, mo.id, "Mo")
    entries = content_edits(mo, cid, 50)
    result = ada.ledger.ingest([e.raw for e in entries])
    assert len(result.accepted) == 50
    # The rows may still be on their way on the writer thread: any use of the store waits.
    assert ada.store.held_among([e.hash for e in entries]) == {e.hash for e in entries}
    assert ada.store.vector(cid)[mo.identity.device_id] == 50


def stored_both_ways(folder, rows) -> list:
    """The rows of the entries table (rowid first) after writing `rows` behind (packed), which
    must be those of a plain INSERT of the same rows."""
    behind, plain = Store(folder / "behind.db"), Store(folder / "plain.db")
    try:
        behind.write_behind(rows)
        with plain.atomic():
            plain.insert_entries(rows)
        read = "SELECT rowid, * FROM entries ORDER BY rowid"
        stored = behind.db.execute(read).fetchall()
        assert stored == plain.db.execute(read).fetchall()
        return stored
    finally:
        behind.close()
        plain.close()


def test_rows_written_behind_are_stored_exactly_as_given(tmp_path):
    # The packed layout (node.packed_rows) against the plain INSERT: every column, texts that
    # are not ASCII, a void row with its reason, ids of other lengths, the largest numbers.
    rows = [(f"{i:064x}", "d" * 64, "dev" + "v" * (i % 40), i + 1, "A" * 52, 1_700_000_000_000 + i,
             ["meta", "propose", "réponse", ""][i % 4], os.urandom(i % 300 + 72),
             "void" if i % 7 == 0 else "accepted", f"forked log: ünï {i}" if i % 7 == 0 else None)
            for i in range(500)]
    rows.append(("f" * 64, "e" * 64, "x", MAX_NUMBER, "y" * 64, MAX_NUMBER, "meta", b"\0" * 80, "accepted", None))
    assert [r[1:] for r in stored_both_ways(tmp_path, rows)] == rows


def test_shared_rows_are_stored_as_their_rows_one_by_one(tmp_path):
    shared = SharedRows("d" * 64, "v" * 52, "a" * 52, "meta", "accepted", None,
                        [f"{i:064x}" for i in range(5)], 7, [100 + i for i in range(5)], [bytes([i]) * 80 for i in range(5)])
    rows = [("f" * 64, "d" * 64, "v" * 52, 6, "a" * 52, 99, "name", b"n" * 90, "accepted", None), shared,
            ("e" * 64, "d" * 64, "w" * 52, 1, "b" * 52, 1, "meta", b"m" * 75, "void", "forked")]
    assert [row[3] for row in each_row(rows)] == [6, 7, 8, 9, 10, 11, 1]
    assert [r[1:] for r in stored_both_ways(tmp_path, rows)] == list(each_row(rows))


def test_a_new_store_has_large_pages_and_an_older_file_keeps_its_own(tmp_path):
    new = Store(tmp_path / "new.db")
    try:
        assert new.db.execute("PRAGMA page_size").fetchone()[0] == 16384
    finally:
        new.close()
    older = sqlite3.connect(tmp_path / "older.db")
    older.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT)")   # a file made before
    older.close()
    rows = [("a" * 64, "d" * 64, "v" * 52, 1, "a" * 52, 1, "meta", b"x" * 80, "accepted", None)]
    store = Store(tmp_path / "older.db")
    try:
        store.write_behind(rows)
        assert store.db.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert store.held_among(["a" * 64]) == {"a" * 64}
    finally:
        store.close()


def test_a_row_that_does_not_fit_the_packed_layout_is_refused_before_anything_is_written(tmp_path):
    store = Store(tmp_path / "crewnode.db")
    try:
        row = ("a" * 64, "d" * 64, "v" * 52, 1, "a" * 52, 1, "meta", b"x" * 80, "accepted", None)
        for bad in ({3: MAX_NUMBER + 1}, {5: -1}, {2: "v" * 65}, {4: "has space"}, {0: "a" * 63}, {0: "é" * 64}):
            with pytest.raises(ValueError):
                store.write_behind([tuple(bad.get(i, v) for i, v in enumerate(row))])
        store.write_behind([])
        assert store.max_rowid() == 0
    finally:
        store.close()


def test_a_failed_write_behind_is_reported_at_the_next_use_of_the_store(tmp_path):
    store = Store(tmp_path / "crewnode.db")
    try:
        def broken(_store):
            raise RuntimeError("disk on fire")
        store.write_behind([], broken)
        with pytest.raises(StorageFailed, match="disk on fire"):
            store.max_rowid()
        assert store.max_rowid() == 0                 # reported once; the store goes on
    finally:
        store.close()


def test_entries_that_could_not_be_stored_are_forgotten_and_come_again(ada):
    """A full disk while a batch is written behind: the node goes back to what is stored, says
    so, and takes the same entries in when they come again. (SQLite's max_page_count makes the
    database full for real.)"""
    cid = ada.create_congregation("Riverside", "")["id"]
    mo = Member("Mo")
    admit(ada, cid, mo.id, "Mo")
    entries = content_edits(mo, cid, 400)
    ada.ledger.ingest([e.raw for e in entries[:100]])
    stored = ada.store.vector(cid)
    count = ada.states[cid].count
    pages = ada.store.db.execute("PRAGMA page_count").fetchone()[0]
    ada.store.db.execute(f"PRAGMA max_page_count = {pages}")
    told = []
    ada.listeners.append(told.append)               # as the live page listens
    ada.ledger.ingest([e.raw for e in entries[100:]])           # taken in; its write fails behind
    with pytest.raises(StorageFailed, match="could not be stored .*full"):
        ada.ledger.ingest([e.raw for e in entries[100:]])
    assert ada.store.vector(cid) == stored and ada.states[cid].count == count
    assert told == [[]]                             # the page is told to show what is held
    assert ada.ledger.heads[(cid, mo.identity.device_id)][0] == 100
    ada.store.db.execute("PRAGMA max_page_count = 1073741823")
    result = ada.ledger.ingest([e.raw for e in entries])
    assert (len(result.accepted), result.known) == (300, 100)
    assert ada.store.vector(cid)[mo.identity.device_id] == 400 and ada.states[cid].count == count + 300


def test_the_wal_is_copied_into_the_database_once_writes_pause(tmp_path):
    path = tmp_path / "crewnode.db"
    store = Store(path)
    try:
        before = os.path.getsize(path)
        rows = [(f"{i:064x}", "d" * 64, "v" * 52, i + 1, "a" * 52, i, "meta", os.urandom(1000), "accepted", None)
                for i in range(6000)]                 # about 6 MB: past the checkpoint threshold
        with store.atomic():
            store.insert_entries(rows)
        assert os.path.getsize(path) == before, "nothing is checkpointed inside the commit"
        wait_for(lambda: os.path.getsize(path) > 5_000_000, timeout=WAIT, message="no checkpoint after writes paused")
    finally:
        store.close()


@pytest.fixture
def facts_due(tmp_path):
    """(node, congregation id) of a node that has just taken in a sync's worth of entries: its
    facts snapshot is due, and waits for a quiet moment."""
    node = NodeThread(lambda: service(tmp_path, "Ada"))
    try:
        cid = node.call(lambda s: s.create_congregation("Riverside", "")["id"])
        mo = Member("Mo")
        node.call(lambda s: admit(s, cid, mo.id, "Mo"))
        raws = [e.raw for e in content_edits(mo, cid, SNAPSHOT_EVERY + 10)]
        facts_then = node.call(lambda s: (protocol.take_entries(s, raws), s.store.snapshot_facts(cid))[1])
        assert facts_then is None, "not while entries are being taken in"
        yield node, cid
    finally:
        node.stop()


def test_facts_due_during_a_sync_are_saved_when_the_node_is_quiet(facts_due, tmp_path):
    _, cid = facts_due
    db = tmp_path / "Ada" / "crewnode.db"

    def facts_saved() -> bool:
        # Read beside the node: asking the node itself would keep it from ever being quiet.
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT length(facts) FROM snapshots WHERE doc = ?", [cid]).fetchone()
        return bool(row and row[0])

    wait_for(facts_saved, timeout=WAIT, message="no facts snapshot at a quiet moment")


def test_facts_due_are_saved_even_when_the_node_is_never_quiet(facts_due, monkeypatch):
    """A page that polls every fraction of a second must not put idle work off for ever."""
    monkeypatch.setattr(worker, "IDLE_AT_MOST_S", 1.0)
    node, cid = facts_due
    deadline = time.monotonic() + WAIT
    while node.call(lambda s: s.store.snapshot_facts(cid)) is None:    # a call every 0.1 s: never quiet
        assert time.monotonic() < deadline, "idle work never ran while the node was kept busy"
        time.sleep(0.1)


def test_an_exchange_answers_at_most_the_limit_asked_and_refuses_a_bad_one(ada):
    cid = ada.create_congregation("Riverside", "")["id"]
    bea = service(ada.home.parent, "Bea")
    try:
        admit(ada, cid, bea.me, "Bea")
        for i in range(5):
            ada.propose(cid, f"Idea {i}", "")
        meta, entries = protocol.unpack(protocol.serve(ada, bea.me, "exchange", protocol.pack({"have": {}, "limit": 3})))
        assert len(entries) == 3 and meta["more"] is True
        for bad in (0, -1, "3", 2.5, True):
            with pytest.raises(protocol.ProtocolError, match="limit"):
                protocol.serve(ada, bea.me, "exchange", protocol.pack({"have": {}, "limit": bad}))
    finally:
        bea.close()


def test_what_a_member_writes_comes_after_what_they_have_read(ada):
    cid = ada.create_congregation("Riverside", "")["id"]
    mo = Member("Mo")
    admit(ada, cid, mo.id, "Mo")
    ahead = now_ms() + 60_000                         # Mo's clock runs a minute ahead
    ada.ledger.ingest([mo.write(cid, {"t": "name", "name": "Mo"}, at=ahead).raw])
    ada.propose(cid, "After Mo", "")
    mine = [e for _, _, e, _, _ in ada.store.held_entries(cid) if e.op.get("title") == "After Mo"]
    assert mine and mine[0].at == ahead + 1


def test_a_clock_far_ahead_does_not_drag_others_along(ada):
    cid = ada.create_congregation("Riverside", "")["id"]
    mo = Member("Mo")
    admit(ada, cid, mo.id, "Mo")
    far = now_ms() + CLOCK_SKEW_MS + 3_600_000        # an hour past the skew allowed
    ada.ledger.ingest([mo.write(cid, {"t": "name", "name": "Mo"}, at=far).raw])
    ada.propose(cid, "Now", "")
    mine = [e for _, _, e, _, _ in ada.store.held_entries(cid) if e.op.get("title") == "Now"]
    assert mine and mine[0].at < far and abs(mine[0].at - now_ms()) < 60_000
