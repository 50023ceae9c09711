"""Received batches of entries: decoded, their signatures checked one per hash-chained run, and
runs of content-only entries gathered for the ledger to take in whole.

Needs nothing but the bytes, so it may run on any thread (the sync client's, the listener's).
"""
import hashlib
import re
import struct
from operator import itemgetter

from .entries import MAX_BODY, MAX_ENTRY, MAX_NUMBER, Entry, EntryError, decode_entry, signature_holds
from .ids import is_key_id

# The header of a content-only entry (an update of the shared content, nothing else), exactly as
# build_entry writes it: most entries of a long history. One match reads it where parsing made a
# dict and its strings for each entry; any other header, or this one written otherwise, is read by
# decode_entry (a match is one of the headers decode_entry takes, no more).
_CONTENT_HEADER = re.compile(rb'\{"at":(0|[1-9][0-9]{0,18}),"dev":"([a-z2-7]{1,64})","doc":"([0-9a-f]{64})",'
                             rb'"op":\{"t":"meta"\},"prev":"([0-9a-f]{64})","seq":([1-9][0-9]{0,18}),"v":1\}')
_U32 = struct.Struct(">I").unpack_from
_SEQ = itemgetter(2)
_UNSIGNED = "signature does not hold"


class ContentRun:
    """Content-only entries that follow one another in one device's log of one document,
    checked as a run (`check_batch`), which the ledger takes in whole (Ledger._take_run)
    without an Entry object for each.

    Where the ledger orders and sorts what it takes in, a run stands as its first entry
    (doc, device, seq, prev, at, hash).
    """

    __slots__ = ("doc", "device", "seq", "prev", "hashes", "ats", "bodies", "raws")
    cert = None
    is_genesis = False

    def __init__(self, doc: str, device: str, seq: int, prev: str):
        self.doc, self.device, self.seq, self.prev = doc, device, seq, prev
        self.hashes: list[str] = []
        self.ats: list[int] = []
        self.bodies: list[bytes] = []                   # each a pycrdt update (may be empty)
        self.raws: list[bytes] = []

    def __len__(self) -> int:
        return len(self.hashes)

    def __repr__(self) -> str:
        return f"ContentRun({self.hashes[0][:12]}, seq {self.seq}..{self.last_seq})"

    @property
    def at(self) -> int:
        """The time of the run's first entry."""
        return self.ats[0]

    @property
    def hash(self) -> str:
        """The hash of the run's first entry."""
        return self.hashes[0]

    @property
    def last_seq(self) -> int:
        """The seq of the run's last entry."""
        return self.seq + len(self.hashes) - 1

    def entries(self) -> list[Entry]:
        """The run's entries, decoded one by one (their signatures were checked with the run)."""
        return [decode_entry(raw) for raw in self.raws]

    def cut(self, keep: int) -> list[Entry]:
        """Keep the first `keep` entries in the run; return the others, decoded."""
        rest = [decode_entry(raw) for raw in self.raws[keep:]]
        for part in (self.hashes, self.ats, self.bodies, self.raws):
            del part[keep:]
        return rest


class CheckedBatch:
    """Received entries decoded and signature-checked (`check_batch`), ready for Ledger.ingest."""

    def __init__(self, entries: list[Entry], refused: list[tuple], unsigned: list[Entry] = (),
                 runs: list[ContentRun] = ()):
        self.entries = entries
        self.runs = list(runs)
        self.refused = refused            # (hash or None, reason)
        # Refused as their signature does not hold: a later entry of their log may still vouch
        # for them (Ledger.ingest looks among the entries waiting for them).
        self.unsigned = list(unsigned)

    def _take_chain(self, chain: list[tuple]) -> None:
        """Keep a hash-chained run of links whose last signature holds (so every one's does)."""
        run = None
        for doc, device, seq, prev, entry_hash, item in chain:
            if type(item) is Entry:
                self.entries.append(item)
                run = None
                continue
            if run is None:
                run = ContentRun(doc, device, seq, prev)
                self.runs.append(run)
            at, body, raw = item
            run.hashes.append(entry_hash)
            run.ats.append(at)
            run.bodies.append(body)
            run.raws.append(raw)

    def _sort_out(self, chain: list[tuple]) -> None:
        """A chain whose last signature does not hold: check each entry's own."""
        for link in chain:
            entry = link[5] if type(link[5]) is Entry else decode_entry(link[5][2])
            if _holds(link):
                self.entries.append(entry)
            else:
                self.unsigned.append(entry)
                self.refused.append((entry.hash, _UNSIGNED))


def check_batch(raws: list[bytes]) -> CheckedBatch:
    """Decode and check the signatures of a batch of received entries."""
    links, refused = [], []
    for raw in raws:
        link = _content_link(raw)
        if link is None:
            try:
                link = _link(decode_entry(raw))
            except EntryError as exc:
                refused.append((None, str(exc)))
                continue
        links.append(link)
    batch = CheckedBatch([], refused)
    for chain in _chains(links):
        if _holds(chain[-1]):
            batch._take_chain(chain)
        else:
            batch._sort_out(chain)
    return batch


def unsigned_among(entries: list[Entry]) -> set[str]:
    """Hashes of the entries whose signature does not hold, verifying one signature per
    hash-chained run.

    Each entry's hash covers its `prev`, so the signature of a run's last entry vouches for
    every entry before it in the run; only a run whose last signature fails is checked one by
    one, to find which entries are bad.
    """
    bad: set[str] = set()
    for chain in _chains([_link(entry) for entry in entries]):
        if not _holds(chain[-1]):
            bad.update(link[4] for link in chain if not _holds(link))
    return bad


# A link: (doc, device, seq, prev, hash, what to keep), where what to keep is the Entry, or for
# a content-only entry read by `_content_link` the tuple (at, body, raw).

def _link(entry: Entry) -> tuple:
    return entry.doc, entry.device, entry.seq, entry.prev, entry.hash, entry


def _content_link(raw) -> tuple | None:
    """The link of a content-only entry with its header as build_entry writes it; None for
    anything else (decode_entry then reads it, or says what is wrong with it)."""
    if type(raw) is not bytes or not 72 <= len(raw) <= MAX_ENTRY:
        return None
    end = 4 + _U32(raw)[0]                               # (lengths are 4 bytes: entries.py)
    if end + 4 + 64 > len(raw):
        return None
    match = _CONTENT_HEADER.fullmatch(raw, 4, end)
    if match is None:
        return None
    body_end = end + 4 + _U32(raw, end)[0]
    if body_end + 64 != len(raw) or body_end - end - 4 > MAX_BODY:
        return None
    at, device, doc, prev, seq = match.groups()
    at, seq, device = int(at), int(seq), device.decode()
    # (decode_entry's other checks: a first entry carries a certificate, and ids and numbers fit)
    if seq == 1 or seq > MAX_NUMBER or at > MAX_NUMBER or not is_key_id(device):
        return None
    entry_hash = hashlib.sha256(memoryview(raw)[:-64]).hexdigest()
    return doc.decode(), device, seq, prev.decode(), entry_hash, (at, raw[end + 4:body_end], raw)


def _chains(links: list[tuple]):
    """The hash-chained runs among `links`: per device log, in seq order."""
    by_log: dict[tuple, list] = {}
    for link in links:
        log = by_log.get(link[:2])
        if log is None:
            by_log[link[:2]] = [link]
        else:
            log.append(link)
    for log in by_log.values():
        log.sort(key=_SEQ)
        start = 0
        for i in range(1, len(log)):
            if log[i][2] != log[i - 1][2] + 1 or log[i][3] != log[i - 1][4]:
                yield log[start:i]
                start = i
        yield log[start:]


def _holds(link: tuple) -> bool:
    item = link[5]
    if type(item) is Entry:
        return item.signature_holds()
    return signature_holds(link[1], link[4], item[2][-64:])
