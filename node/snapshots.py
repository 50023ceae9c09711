"""Snapshots of a document's facts, so that a node with a long history starts without replaying it.

A document's state is its pycrdt content (snapshotted as a pycrdt update) plus the facts folded
from its entries (members, names, agreements, commitments, ...: a `DocState`'s attributes).
Replaying the facts means decoding every entry again, which for tens of thousands of entries
takes seconds; restoring them from a snapshot takes milliseconds.

The facts are pickled, with three guards:
- a fingerprint of the code that defines and folds them (this Python, and the source of
  docstate, entries, rules, ledger and this module): after any change to that code an old
  snapshot is not used, and the node replays its entries instead (and writes a new one later);
- a restricted unpickler that builds only the dataclasses of node.docstate and node.entries
  and plain containers, never any other callable, so a damaged or planted snapshot cannot run
  code; anything else is refused and the node replays instead;
- entries inside the facts are kept without their raw bytes and signature (the store has
  them; nothing reads them from a state), and repeated member ids are pickled once.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import pickle
import sys
from pathlib import Path

from pycrdt import Doc, Map

from . import docstate, entries
from .docstate import DocState
from .entries import Entry

log = logging.getLogger(__name__)
_NOT_FACTS = ("ydoc", "meta")
_SOURCES = ("docstate.py", "entries.py", "rules.py", "ledger.py", "snapshots.py")
_SAFE_BUILTINS = {"set", "frozenset"}
_ID_LISTS = ("entitled", "members")


@functools.lru_cache(maxsize=1)
def fingerprint() -> bytes:
    """What the facts' meaning depends on: this Python and the code that folds entries."""
    digest = hashlib.sha256(repr(sys.version_info[:2]).encode())
    for name in _SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.digest()


def dump_facts(state: DocState, upto: int) -> bytes | None:
    """The facts of `state`, as folded from the entries stored up to rowid `upto`; None when
    they cannot be pickled (a state holding something new): the next start then replays."""
    try:
        return _dump(state, upto)
    except Exception:                                   # noqa: BLE001 - never fail a snapshot or a stop
        log.warning("the facts of %s could not be saved; the next start replays its entries", state.id,
                    exc_info=True)
        return None


def _dump(state: DocState, upto: int) -> bytes:
    facts = {k: v for k, v in vars(state).items() if k not in _NOT_FACTS}
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pool: dict[str, str] = {}

    def slim(entry: Entry):
        header, op = entry.header, entry.header.get("op")
        if isinstance(op, dict) and any(isinstance(op.get(k), list) for k in _ID_LISTS):
            op = {k: [pool.setdefault(m, m) if isinstance(m, str) else m for m in v]
                  if k in _ID_LISTS and isinstance(v, list) else v for k, v in op.items()}
            header = {**header, "op": op}
        return Entry, (entry.hash, header, entry.body, b"", b"")

    pickler.dispatch_table = {Entry: slim}
    pickler.dump((fingerprint(), upto, facts))
    return buffer.getvalue()


class _FactsUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return {"set": set, "frozenset": frozenset}[name]
        if module in (docstate.__name__, entries.__name__):
            found = getattr(sys.modules[module], name, None)
            if found is Entry or (isinstance(found, type) and dataclasses.is_dataclass(found)):
                return found
        raise pickle.UnpicklingError(f"a snapshot may not name {module}.{name}")


def load_facts(blob, ydoc_state: bytes | None) -> tuple[int, DocState] | None:
    """(upto, state) from a snapshot's facts and pycrdt content; None when it cannot be used
    (none, made by other code, or damaged): the caller then replays the entries."""
    if not isinstance(blob, (bytes, bytearray)) or not blob:
        return None
    try:
        mark, upto, facts = _FactsUnpickler(io.BytesIO(blob)).load()
    except Exception:                                   # noqa: BLE001 - any damage: replay instead
        return None
    if mark != fingerprint() or not isinstance(upto, int) or not isinstance(facts, dict):
        return None
    state = DocState.__new__(DocState)
    state.__dict__.update(facts)
    state.ydoc = Doc()
    state.meta = state.ydoc.get("meta", type=Map)
    if ydoc_state:
        state.ydoc.apply_update(ydoc_state)
    return upto, state
