"""Received batches (node/batches.py): content-only entries gathered in runs, signatures checked
one per hash-chain, and runs taken in whole by the ledger with the outcome of one by one."""
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc

from factories import Member, admit, content_edits, service
from node import views
from node.batches import CheckedBatch, check_batch
from node.entries import MAX_NUMBER, SIG_CONTEXT, EntryError, decode_entry
from node.ids import canonical_json
from node.service import Service

DOC = "ab" * 32


def test_content_only_entries_are_gathered_in_runs_between_other_entries():
    mo = Member("Mo")
    first = mo.write(DOC, {"t": "name", "name": "Mo"})
    edits = content_edits(mo, DOC, 3)
    rename = mo.write(DOC, {"t": "name", "name": "Moe"})
    more = content_edits(mo, DOC, 2)
    batch = check_batch([e.raw for e in reversed([first, *edits, rename, *more])])
    assert batch.refused == [] and sorted(e.seq for e in batch.entries) == [1, 5]
    assert [(run.seq, run.last_seq, run.prev) for run in batch.runs] == [(2, 4, first.hash), (6, 7, rename.hash)]
    run = batch.runs[0]
    assert (run.doc, run.device) == (DOC, mo.identity.device_id)
    assert run.hashes == [e.hash for e in edits] and run.raws == [e.raw for e in edits]
    assert run.bodies == [e.body for e in edits] and run.ats == [e.at for e in edits]
    assert [(e.hash, e.header) for e in run.entries()] == [(e.hash, e.header) for e in edits]


def test_a_chain_whose_last_signature_fails_is_checked_entry_by_entry():
    mo = Member("Mo")
    log = [mo.write(DOC, {"t": "name", "name": "Mo"}), *content_edits(mo, DOC, 4)]
    forged = log[-1].raw[:-64] + bytes(64)
    batch = check_batch([e.raw for e in log[:-1]] + [forged])
    assert batch.refused == [(log[-1].hash, "signature does not hold")]
    assert [e.hash for e in batch.unsigned] == [log[-1].hash] and batch.runs == []
    assert sorted(e.seq for e in batch.entries) == [1, 2, 3, 4]
    # Its signature is what vouches for the run before it: without it, each is checked.
    assert [run.hashes for run in check_batch([e.raw for e in log]).runs] == [[e.hash for e in log[1:]]]


_MO = Member("Mo")
_GOOD = _MO.write(DOC, {"t": "name", "name": "Mo"})
_CONTENT = {"v": 1, "doc": DOC, "dev": _MO.identity.device_id, "seq": 2, "prev": _GOOD.hash, "at": 1_767_225_600_000,
            "op": {"t": "meta"}}


@pytest.mark.parametrize("spacing", ["canonical", "spaced", "unsorted"])
@pytest.mark.parametrize("changes", [
    {}, {"at": 0}, {"at": MAX_NUMBER}, {"at": MAX_NUMBER + 1}, {"at": -1}, {"at": 2 ** 64}, {"at": "1"},
    {"seq": MAX_NUMBER}, {"seq": MAX_NUMBER + 1}, {"seq": 1}, {"seq": 0}, {"seq": True},
    {"dev": _MO.identity.device_id.upper()}, {"dev": _MO.identity.device_id[:-1]}, {"dev": "a" * 64},
    {"dev": Member().identity.device_id}, {"doc": ""}, {"doc": "AB" * 32}, {"doc": "ab" * 31}, {"prev": ""},
    {"prev": "zz" * 32}, {"op": {"t": "meta", "agreement": "x"}}, {"op": {"t": "name", "name": "x"}},
    {"op": {"t": "Meta"}}, {"cert": _MO.identity.cert}, {"x": 1}, {"v": 2}, {"body": b""},
], ids=repr)
def test_a_header_read_the_short_way_is_one_decode_entry_takes(changes, spacing):
    """The short reading of content-only headers (a pattern, not a parser) takes no entry that
    decode_entry refuses, and reads the same fields; anything else goes the long way."""
    header = {**_CONTENT, **changes}
    body = header.pop("body", b"\x01\x02")
    text = {"canonical": canonical_json(header), "spaced": json.dumps(header, sort_keys=True).encode(),
            "unsorted": json.dumps(header, separators=(",", ":")).encode()}[spacing]
    signed = len(text).to_bytes(4, "big") + text + len(body).to_bytes(4, "big") + body
    raw = signed + _MO.identity.sign(SIG_CONTEXT + hashlib.sha256(signed).digest())
    batch = check_batch([raw])
    try:
        entry = decode_entry(raw)
    except EntryError as exc:
        assert (batch.refused, batch.entries, batch.runs) == ([(None, str(exc))], [], [])
        return
    assert len(batch.runs) + len(batch.entries) + len(batch.unsigned) == 1
    short = entry.op == {"t": "meta"} and entry.cert is None and spacing == "canonical" and entry.signature_holds()
    assert len(batch.runs) == short
    for run in batch.runs:
        assert (run.doc, run.device, run.seq, run.prev, run.hashes, run.ats, run.bodies, run.raws) == \
               (entry.doc, entry.device, entry.seq, entry.prev, [entry.hash], [entry.at], [entry.body], [raw])


# -- the ledger takes runs in as it would their entries one by one ----------------------------

@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Ada's congregation, where Mo and Bea write content edits between other entries; Bea
    leaves in the middle and edits on (void). Returns the raws in log order, where Bea's leave
    is among them, how many of them are Ada's, and Ada's home."""
    ada = service(tmp_path_factory.mktemp("runs"), "Ada")
    cid = ada.create_congregation("Riverside", "")["id"]
    mo, bea = Member("Mo"), Member("Bea")
    admit(ada, cid, mo.id, "Mo")
    admit(ada, cid, bea.id, "Bea")
    mo_doc, bea_doc = Doc(), Doc()
    written = [mo.write(cid, {"t": "name", "name": "Mo"}), bea.write(cid, {"t": "name", "name": "Bea"})]
    for i in range(3):
        written += content_edits(mo, cid, 4 + i, mo_doc) + content_edits(bea, cid, 3, bea_doc)
        written += [mo.write(cid, {"t": "name", "name": f"Mo {i}"})]
    device = bea.identity.device_id
    leave = bea.write(cid, {"t": "leave", "devices": {device: bea.heads[cid][0] + 1}})
    written += [leave] + content_edits(bea, cid, 3, bea_doc) + content_edits(mo, cid, 5, mo_doc)
    ada_raws = ada.store.raw_after(cid, {})
    raws = ada_raws + [e.raw for e in written]
    ada.close()
    return {"raws": raws, "leave_at": raws.index(leave.raw), "ada": len(ada_raws), "home": ada.home}


def fresh(home: Path, root: Path):
    """A Service seeing through Ada's identity, holding nothing yet."""
    (root / "observer").mkdir(parents=True)
    shutil.copytree(home / "identity", root / "observer" / "identity")
    return Service(root / "observer")


def outcome(svc) -> dict:
    """What a node made of the entries: each document's facts, content and stored rows."""
    out = {}
    for doc, state in svc.states.items():
        rows = svc.store.db.execute("SELECT hash, device, seq, author, at, kind, status, reason FROM entries "
                                    "WHERE doc = ? ORDER BY hash", [doc]).fetchall()
        out[doc] = {"members": views.member_list(state), "vector": dict(state.vector), "count": state.count,
                    "latest": state.latest_at, "content": state.meta.to_py(), "rows": rows,
                    "heads": svc.ledger.doc_heads(doc)}
    return out


@pytest.fixture(scope="module")
def one_by_one(history, tmp_path_factory):
    """The outcome of the whole history taken in as Entry objects, none of them in runs."""
    raws, home = history["raws"], history["home"]
    svc = fresh(home, tmp_path_factory.mktemp("plain"))
    assert svc.ledger.ingest(CheckedBatch([decode_entry(raw) for raw in raws], [])).refused == []
    done = outcome(svc)
    # (void once the leave is in effect: the document is computed again after the batch)
    assert [row[-2] for rows in done.values() for row in rows["rows"]].count("void") == 3
    yield done
    svc.close()


def test_runs_give_what_entries_one_by_one_give(history, one_by_one, tmp_path):
    raws, leave_at, home = history["raws"], history["leave_at"], history["home"]
    assert len(check_batch(raws).runs) == 6              # Mo: 4, Bea: before and after leaving
    svc = fresh(home, tmp_path)
    try:
        # The edits after the leave come in a later batch, in a document with an exit in play:
        # their run is taken apart, and each is void.
        first = svc.ledger.ingest(raws[:leave_at + 1])
        rest = svc.ledger.ingest(raws[leave_at + 1:])
        assert (first.refused, rest.refused, rest.void) == ([], [], 3)
        assert first.accepted_count + rest.accepted_count + rest.void == len(raws)
        assert outcome(svc) == one_by_one
    finally:
        svc.close()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_runs_give_the_same_in_any_order_and_batching(history, one_by_one, data):
    raws = history["raws"]
    order = data.draw(st.permutations(range(len(raws))), label="order")
    sizes = data.draw(st.lists(st.integers(1, 40), max_size=10), label="batches")
    with tempfile.TemporaryDirectory() as root:
        svc = fresh(history["home"], Path(root))
        try:
            i = 0
            for size in sizes + [len(raws)]:
                assert svc.ledger.ingest([raws[j] for j in order[i:i + size]]).refused == []
                i += size
            assert svc.store.pending_count() == 0
            assert outcome(svc) == one_by_one
        finally:
            svc.close()


def test_a_batch_ending_in_runs_and_sent_again(history, tmp_path):
    raws, leave_at, home = history["raws"], history["leave_at"], history["home"]
    prefix = raws[:leave_at - 1]                        # ends with runs of Mo's and Bea's edits
    svc, plain = fresh(home, tmp_path / "runs"), fresh(home, tmp_path / "plain")
    try:
        svc.ledger.ingest(prefix[:-10])
        assert svc.ledger.ingest(prefix[-10:]).accepted_count == 10
        plain.ledger.ingest(CheckedBatch([decode_entry(raw) for raw in prefix], []))
        assert outcome(svc) == outcome(plain)
        again = svc.ledger.ingest(prefix)
        assert (again.known, again.accepted_count) == (len(prefix), 0)
        assert outcome(svc) == outcome(plain)
    finally:
        svc.close()
        plain.close()


def test_an_entry_that_waits_and_comes_again_first_in_a_run(history, tmp_path):
    raws, ada = history["raws"], history["ada"]
    mo_first, mo_edits = raws[ada], raws[ada + 2:ada + 6]
    svc = fresh(history["home"], tmp_path)
    try:
        assert svc.ledger.ingest(raws[:1]).accepted_count == 1                 # the congregation
        assert svc.ledger.ingest([mo_edits[0]]).pending == 1                  # before Mo's first entry
        assert svc.ledger.ingest([mo_first]).pending == 1                     # before Mo's admission
        result = svc.ledger.ingest(raws[1:ada] + mo_edits)   # (a run from the edit that waits)
        assert (result.accepted_count, result.pending, svc.store.pending_count()) == (ada - 1 + 5, 0, 0)
        assert svc.store.vector(decode_entry(raws[0]).hash)[decode_entry(mo_first).device] == 5
    finally:
        svc.close()


def test_entries_and_runs_of_a_document_not_asked_for_are_refused(history, tmp_path):
    raws, ada, home = history["raws"], history["ada"], history["home"]
    svc = fresh(home, tmp_path)
    try:
        assert svc.ledger.ingest(raws[:ada]).accepted_count == ada
        mo = raws[ada:ada + 6]                          # Mo's first entry, Bea's, then a run of Mo's
        assert check_batch(mo).runs
        result = svc.ledger.ingest(mo, allowed_docs={"cd" * 32})
        assert sorted(result.refused) == sorted((decode_entry(raw).hash, "this document was not part of the exchange")
                                                for raw in mo)
        assert (result.accepted_count, result.pending, svc.store.pending_count()) == (0, 0, 0)
        assert len(svc.store.raw_after(decode_entry(raws[0]).hash, {})) == ada
    finally:
        svc.close()
