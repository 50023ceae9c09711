"""Nothing is lost: a write acknowledged is on disk, whatever happens to the process after.

Writers stream requests at a real node and record each acknowledged (201) write; the node is
killed with SIGKILL mid-stream, started again on the same home, and every acknowledged write
must be there, the store intact and writable.
"""
import sqlite3
import threading

import pytest


def setup_world(node):
    _, cong = node.api("POST", "/api/congregations", {"name": "Durable", "purpose": "keeps"}, expect=201)
    _, crew = node.api("POST", f"/api/congregations/{cong['id']}/crews", {"name": "Kitchen", "purpose": "meals"},
                       expect=201)
    return cong["id"], crew["id"]


def snapshot_of(node, cid, crew_id) -> dict:
    """Everything the API shows about the node's data."""
    out = {path: node.api("GET", path, expect=200)[1] for path in (
        "/api/me", "/api/congregations", f"/api/congregations/{cid}", f"/api/congregations/{cid}/history",
        f"/api/crews/{crew_id}")}
    out["agreements"] = {a["id"]: node.api("GET", f"/api/agreements/{a['id']}", expect=200)[1]
                         for a in out[f"/api/congregations/{cid}"]["agreements"]}
    return out


class Writer(threading.Thread):
    """Posts one write after another until stopped or the node goes away; records acknowledgements."""

    def __init__(self, node, path, make_body, id_key="id"):
        super().__init__(daemon=True)
        self.node, self.path, self.make_body, self.id_key = node, path, make_body, id_key
        self.acked: list[tuple[str, dict]] = []
        self.sent = 0
        self.failures: list = []
        self.halt = threading.Event()

    def run(self):
        i = 0
        while not self.halt.is_set():
            body = self.make_body(i)
            self.sent += 1
            try:
                status, answer = self.node.api("POST", self.path, body, timeout=10)
            except Exception as exc:           # connection refused or reset: the node is gone
                self.failures.append(repr(exc))
                return
            if status != 201:
                self.failures.append((status, answer))
                return
            self.acked.append((answer[self.id_key], body))
            i += 1


def integrity(home) -> str:
    with sqlite3.connect(home / "crewnode.db") as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_acknowledged_writes_survive_a_stop_mid_stream(node_factory, wait_for, how):
    node = node_factory.start(name="Ada")
    cid, crew_id = setup_world(node)
    writers = [
        Writer(node, f"/api/crews/{crew_id}/commitments", lambda i: {"what": f"task {i}", "due": "2026-12-31"}),
        Writer(node, f"/api/congregations/{cid}/agreements", lambda i: {"title": f"rule {i}", "text": "x" * 500}),
        Writer(node, f"/api/crews/{crew_id}/agreements", lambda i: {"title": f"crew rule {i}"}),
    ]
    for w in writers:
        w.start()

    def enough():
        failed = [w.failures for w in writers if w.failures]
        assert not failed, f"writes failed before the kill: {failed}"
        return all(len(w.acked) >= 15 for w in writers)

    wait_for(enough, timeout=30, message=lambda: f"acks so far {[len(w.acked) for w in writers]}")
    if how == "SIGKILL":
        node.kill()                                        # mid-stream: the writers are still sending
    else:
        node.proc.terminate()
        assert node.proc.wait(timeout=15) == 0, "a clean stop with writes in flight"
    for w in writers:
        w.join(timeout=15)
        assert not w.is_alive()
        assert w.failures, "the writer should have seen the node go away"
        assert not any(isinstance(f, tuple) for f in w.failures), w.failures    # no non-201 answers before
    assert integrity(node.home) == "ok"
    node.restart()
    _, crew = node.api("GET", f"/api/crews/{crew_id}", expect=200)
    commitments = {c["id"]: c for c in crew["commitments"]}
    for cmt_id, body in writers[0].acked:
        assert cmt_id in commitments, f"acknowledged commitment {body['what']} lost"
        assert commitments[cmt_id]["what"] == body["what"]
    assert len(commitments) - len(writers[0].acked) in (0, 1)       # at most the one in flight
    _, cong = node.api("GET", f"/api/congregations/{cid}", expect=200)
    held = {a["id"]: a for a in cong["agreements"]}
    for aid, body in writers[1].acked:
        assert aid in held and held[aid]["title"] == body["title"] and held[aid]["text"] == body["text"]
    crew_agreements = {a["id"] for a in crew["agreements"]}
    assert {aid for aid, _ in writers[2].acked} <= crew_agreements
    # the store takes further writes, and they count after yet another restart
    _, later = node.api("POST", f"/api/crews/{crew_id}/commitments", {"what": "after the crash"}, expect=201)
    node.api("PATCH", f"/api/commitments/{writers[0].acked[0][0]}", {"status": "done"}, expect=200)
    node.restart()
    _, crew = node.api("GET", f"/api/crews/{crew_id}", expect=200)
    statuses = {c["id"]: c["status"] for c in crew["commitments"]}
    assert statuses[later["id"]] == "open" and statuses[writers[0].acked[0][0]] == "done"
    assert integrity(node.home) == "ok"


def test_kill_right_after_an_acknowledgement(node_factory):
    """The write answered last before the kill is there: it was on disk before the answer."""
    node = node_factory.start(name="Ada")
    cid, crew_id = setup_world(node)
    made = []
    for round_ in range(2):
        _, commitment = node.api("POST", f"/api/crews/{crew_id}/commitments", {"what": f"last {round_}"},
                                 expect=201)
        made.append(commitment["id"])
        node.api("PATCH", f"/api/commitments/{made[0]}", {"status": ["done", "released", "open"][round_]},
                 expect=200)
        node.kill()
        node.restart()
        _, crew = node.api("GET", f"/api/crews/{crew_id}", expect=200)
        statuses = {c["id"]: c["status"] for c in crew["commitments"]}
        assert set(made) <= set(statuses)
        assert statuses[made[0]] == ["done", "released", "open"][round_]


def test_clean_restart_keeps_everything(node_factory):
    node = node_factory.start(name="Ada")
    cid, crew_id = setup_world(node)
    node.api("PATCH", "/api/me", {"name": "Ada Lovelace"}, expect=200)
    _, agreement = node.api("POST", f"/api/congregations/{cid}/agreements",
                            {"title": "Quiet", "text": "after ten", "review_by": "2027-01-01"}, expect=201)
    node.api("POST", f"/api/agreements/{agreement['id']}/responses", {"response": "object", "reason": "later"},
             expect=200)
    _, commitment = node.api("POST", f"/api/crews/{crew_id}/commitments", {"what": "Rice", "due": "2026-11-30"},
                             expect=201)
    node.api("PATCH", f"/api/commitments/{commitment['id']}", {"status": "released"}, expect=200)
    before = snapshot_of(node, cid, crew_id)
    assert node.stop() == 0
    assert "crewnode stopped." in node.log.read_text()
    node.restart()
    after = snapshot_of(node, cid, crew_id)
    before["/api/me"].pop("sync_port", None), after["/api/me"].pop("sync_port", None)   # ports are new
    assert after == before
    assert integrity(node.home) == "ok"


def test_start_up_from_a_snapshot_and_replay_after_it(node_factory):
    """A clean stop snapshots the documents; a start reads the snapshot and replays what came after."""
    node = node_factory.start(name="Ada")
    cid, crew_id = setup_world(node)
    for i in range(5):
        node.api("POST", f"/api/congregations/{cid}/agreements", {"title": f"before snapshot {i}"}, expect=201)
    assert node.stop() == 0
    with sqlite3.connect(node.home / "crewnode.db") as conn:
        snapshots = dict(conn.execute("SELECT doc, upto FROM snapshots").fetchall())
        top = conn.execute("SELECT MAX(rowid) FROM entries").fetchone()[0]
    assert set(snapshots) == {cid, crew_id} and all(upto == top for upto in snapshots.values())
    node.restart()
    _, cong = node.api("GET", f"/api/congregations/{cid}", expect=200)
    assert (cong["name"], cong["purpose"]) == ("Durable", "keeps")            # from the snapshot's content
    assert len(cong["agreements"]) == 5
    _, crew = node.api("GET", f"/api/crews/{crew_id}", expect=200)
    assert (crew["name"], crew["purpose"]) == ("Kitchen", "meals")
    # written after the snapshot, then a crash: replayed on top of the snapshot
    _, second_crew = node.api("POST", f"/api/congregations/{cid}/crews", {"name": "Garden", "purpose": "beans"},
                              expect=201)
    node.api("POST", f"/api/congregations/{cid}/agreements", {"title": "after snapshot"}, expect=201)
    before = snapshot_of(node, cid, crew_id)
    node.kill()
    node.restart()
    after = snapshot_of(node, cid, crew_id)
    before["/api/me"].pop("sync_port", None), after["/api/me"].pop("sync_port", None)
    assert after == before
    _, garden = node.api("GET", f"/api/crews/{second_crew['id']}", expect=200)
    assert (garden["name"], garden["purpose"]) == ("Garden", "beans")
    assert node.stop() == 0
    node.restart()
    after_again = snapshot_of(node, cid, crew_id)
    after_again["/api/me"].pop("sync_port", None)
    assert after_again == before


def test_a_corrupt_store_is_reported_not_overwritten(node_factory):
    """A store that is not SQLite makes serve exit with an error and leaves the file alone."""
    node = node_factory.start(name="Ada")
    node.stop()
    garbage = b"not a database at all" * 100
    db = node.home / "crewnode.db"
    for suffix in ("-wal", "-shm"):
        (node.home / f"crewnode.db{suffix}").unlink(missing_ok=True)
    db.write_bytes(garbage)
    with pytest.raises(AssertionError, match="exited with code"):
        node.restart()
    assert db.read_bytes() == garbage
