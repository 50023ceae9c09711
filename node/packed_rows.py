"""Rows of the entries table packed into blobs, for one INSERT that needs no Python per row.

A received batch is written by a thread of its own (Store.write_behind). Rows bound one by one
would take the GIL for each, and wait for it behind the node's thread; so a batch travels as
three blobs, which a single `INSERT ... SELECT` takes apart with `substr` while SQLite runs
without the GIL. (Parsing a JSON text of the rows instead costs SQLite about twice as much.)

- records: one per row, fixed-width ASCII: the hash (64 hex digits), then numbers as decimal
  digits offset by a power of ten, so that each has the same width with no padding (`_FIELDS`);
- pieces: what rows share, written once, which records point to. An ids piece: document id,
  device id and author id, each padded with spaces to 64 characters (key ids are at most 64
  characters and never hold a space). A label piece: the byte lengths of kind, status and reason
  (plus one; reason none: 0), then their texts;
- raw: the entries' bytes, one after another.
"""
from itertools import accumulate
from typing import NamedTuple

_ID = 64
_WIDE = 19                       # seq, time, positions in the raw blob
_NARROW = 10                     # positions in the pieces blob, text lengths
MAX_NUMBER = 8 * 10 ** (_WIDE - 1) - 1  # (plus the offset: still below SQLite's largest integer)
_RECORD = "%s%d%d%d%d%d%d"
# A record: hash, ids piece, seq, time, label piece, raw start, raw length.
_FIELDS = (("hash", _ID), ("ids", _NARROW), ("seq", _WIDE), ("at", _WIDE), ("label", _NARROW),
           ("raw_start", _WIDE), ("raw_length", _WIDE))
RECORD = sum(width for _, width in _FIELDS)
_AT = dict(zip((name for name, _ in _FIELDS), accumulate((width for _, width in _FIELDS), initial=1)))


class SharedRows(NamedTuple):
    """Rows of entries that follow one another in one device's log of one document and share
    author, kind, status and reason (a ContentRun's), without a tuple for each."""

    doc: str
    device: str
    author: str
    kind: str
    status: str
    reason: str | None
    hashes: list
    first_seq: int
    ats: list
    raws: list

    def each(self):
        """Each row, as a tuple (hash, doc, device, seq, author, at, kind, raw, status, reason)."""
        for i, (entry_hash, at, raw) in enumerate(zip(self.hashes, self.ats, self.raws)):
            yield (entry_hash, self.doc, self.device, self.first_seq + i, self.author, at, self.kind, raw,
                   self.status, self.reason)


def each_row(rows: list):
    """Every row of `rows` (tuples, or SharedRows), as a tuple."""
    for row in rows:
        if type(row) is SharedRows:
            yield from row.each()
        else:
            yield row


def _read(field: str) -> str:
    width = dict(_FIELDS)[field]
    return f"(CAST(substr(:records, k * {RECORD} + {_AT[field]}, {width}) AS INTEGER) - {10 ** (width - 1)})"


def _text(blob: str, start: str, length) -> str:
    return f"CAST(substr(:{blob}, {start}, {length}) AS TEXT)"


def insert_sql(table: str, columns: tuple) -> str:
    """The INSERT that takes apart what `pack_rows` made, rows in their order (for rowids)."""
    assert columns == ("hash", "doc", "device", "seq", "author", "at", "kind", "raw", "status", "reason")
    label_text = f"label + {3 * _NARROW}"
    # (lengths are stored plus one, so that no reason, -1, is a number like the others)
    lengths = ", ".join(f"(CAST(substr(:pieces, label + {n * _NARROW}, {_NARROW}) AS INTEGER) - {10 ** (_NARROW - 1) + 1}) AS {name}"
                        for n, name in enumerate(("kind_len", "status_len", "reason_len")))
    fields = (f"k, {_read('ids')} AS ids, {_read('seq')} AS seq, {_read('at')} AS at, "
              f"{_read('label')} AS label, substr(:raw, {_read('raw_start')}, {_read('raw_length')}) AS raw")
    values = [_text("records", f"k * {RECORD} + 1", _ID), _text("pieces", "ids", _ID),
              f"rtrim({_text('pieces', f'ids + {_ID}', _ID)}, ' ')", "seq",
              f"rtrim({_text('pieces', f'ids + {2 * _ID}', _ID)}, ' ')", "at",
              _text("pieces", label_text, "kind_len"), "raw",
              _text("pieces", f"{label_text} + kind_len", "status_len"),
              f"CASE WHEN reason_len >= 0 THEN {_text('pieces', f'{label_text} + kind_len + status_len', 'reason_len')} END"]
    return (f"WITH RECURSIVE record(k) AS (SELECT 0 WHERE length(:records) > 0 UNION ALL SELECT k + 1 FROM record"
            f" WHERE (k + 2) * {RECORD} <= length(:records)), "
            f"row AS (SELECT *, {lengths} FROM (SELECT {fields} FROM record)) "
            f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) SELECT {', '.join(values)} FROM row ORDER BY k")


def pack_rows(rows: list[tuple]) -> dict:
    """The parameters of `insert_sql` for rows (hash, doc, device, seq, author, at, kind, raw,
    status, reason), or SharedRows; raises ValueError for a row that does not fit the layout."""
    records, pieces, raws = [], [], []
    starts: dict[tuple, int] = {}            # (doc, device, author) or (kind, status, reason) -> piece
    piece_end, raw_end = 1, 1
    wide, narrow = 10 ** (_WIDE - 1), 10 ** (_NARROW - 1)

    def piece(key: tuple, data: bytes) -> int:
        nonlocal piece_end
        start = starts[key] = piece_end
        pieces.append(data)
        piece_end += len(data)
        return start

    for row in rows:
        if type(row) is SharedRows:
            doc, device, author, kind, status, reason, hashes, seq, ats, row_raws = row
            if not (0 <= seq and seq + len(hashes) - 1 <= MAX_NUMBER and 0 <= min(ats) and max(ats) <= MAX_NUMBER):
                raise ValueError(f"entry {hashes[0]} or after has a number too large to store")
        else:
            hash_, doc, device, seq, author, at, kind, raw, status, reason = row
            if not (0 <= seq <= MAX_NUMBER and 0 <= at <= MAX_NUMBER):
                raise ValueError(f"entry {hash_} has a number too large to store")
            hashes, ats, row_raws = (hash_,), (at,), (raw,)
        ids = narrow + (starts.get((doc, device, author)) or piece((doc, device, author), _ids_piece(doc, device, author)))
        label = narrow + (starts.get((kind, status, reason)) or piece((kind, status, reason), _label_piece(kind, status, reason)))
        seq += wide
        for hash_, at, raw in zip(hashes, ats, row_raws):
            # (numbers offset to a fixed width: formatting with a width costs more)
            records.append(_RECORD % (hash_, ids, seq, wide + at, label, wide + raw_end, wide + len(raw)))
            seq += 1
            raw_end += len(raw)
        raws += row_raws
    packed = "".join(records).encode()       # ASCII: unless a hash is not, and the check fails
    if len(packed) != RECORD * len(records):  # a hash of another length would shift every record
        raise ValueError("an entry's hash does not fit a packed row")
    return {"records": packed, "pieces": b"".join(pieces), "raw": b"".join(raws)}


def _ids_piece(doc: str, device: str, author: str) -> bytes:
    data = b"".join(text.encode().ljust(_ID) for text in (doc, device, author))
    if len(data) != 3 * _ID or " " in doc or " " in device or " " in author:
        raise ValueError("an id does not fit a packed row")
    return data


def _label_piece(kind: str, status: str, reason: str | None) -> bytes:
    texts = [kind.encode(), status.encode(), b"" if reason is None else reason.encode()]
    lengths = (len(texts[0]), len(texts[1]), -1 if reason is None else len(texts[2]))
    return b"".join(b"%d" % (10 ** (_NARROW - 1) + n + 1) for n in lengths) + b"".join(texts)
