"""The batches of one exchange, fetched ahead of the node that takes them in.

While this side checks batch k and the node takes it in, the peer prepares and sends batch
k+1: a batch's header says where it ended (its cursor), so the next can be asked for as soon
as a batch has arrived.

Checking is not done beside the node: decoding needs the GIL as much as the node does, and the
signature checks, which release it, must take it back after each signature, behind the node.
Checks on threads of their own were measured slower than checking and taking in by turns.
"""
import queue
import threading

from node.batches import check_batch

AHEAD = 1                  # batches fetched and waiting, beside the one being fetched


def serial_batches(fetch, first: dict, follow):
    """(meta, CheckedBatch) for each batch, each fetched when the one before was taken in.

    `fetch(request) -> (meta, raw entries)` asks the peer; `follow(request, meta)` gives the
    request for the next batch, or None when this one was the last.
    """
    request = first
    while request is not None:
        meta, raws = fetch(request)
        yield meta, check_batch(raws)
        request = follow(request, meta)


class ReadAhead:
    """As `serial_batches`, with fetching on a thread of its own, ahead of the caller. Use as
    a context manager: leaving it stops asking and waits for the call under way."""

    def __init__(self, fetch, first: dict, follow):
        self._queue: queue.Queue = queue.Queue(maxsize=AHEAD)
        self._stop = threading.Event()
        self._fetcher = threading.Thread(target=self._fetch_all, args=(fetch, first, follow),
                                         name="crewnode-fetch", daemon=True)
        self._fetcher.start()

    def _fetch_all(self, fetch, first: dict, follow) -> None:
        request = first
        try:
            while request is not None and not self._stop.is_set():
                fetched = fetch(request)
                self._hand_over(fetched)
                request = follow(request, fetched[0])
        except BaseException as exc:                    # raised to the caller, after what came before
            self._hand_over(exc)
            return
        self._hand_over(None)

    def _hand_over(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            meta, raws = item
            yield meta, check_batch(raws)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._fetcher.join()
