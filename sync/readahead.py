"""The batches of one exchange, fetched and checked ahead of the node that takes them in.

Four things can happen at once for a long history: the peer prepares and sends batch k+3,
this side decodes batch k+2 and checks the signatures of batch k+1 (which needs no GIL), and
the node takes in batch k. A batch's header says where it ended (its cursor), so the next can
be asked for as soon as a batch has arrived, before it is checked.
"""
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from node.entries import check_batch, check_signatures, decode_batch

AHEAD = 1                  # batches waiting beside those being fetched, decoded and checked


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
    """As `serial_batches`, with fetching, decoding and signature checks on threads of their own,
    ahead of the caller. Use as a context manager: leaving it stops asking and waits for the
    call under way."""

    def __init__(self, fetch, first: dict, follow):
        self._queue: queue.Queue = queue.Queue(maxsize=AHEAD)
        self._stop = threading.Event()
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="crewnode-decode")
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="crewnode-check")
        self._fetcher = threading.Thread(target=self._fetch_all, args=(fetch, first, follow),
                                         name="crewnode-fetch", daemon=True)
        self._fetcher.start()

    def _fetch_all(self, fetch, first: dict, follow) -> None:
        request = first
        try:
            while request is not None and not self._stop.is_set():
                meta, raws = fetch(request)
                decoded = self._decoder.submit(decode_batch, raws)
                self._hand_over((meta, self._checker.submit(lambda d=decoded: check_signatures(d.result()))))
                request = follow(request, meta)
        except BaseException as exc:                    # raised to the caller, in order
            failed: Future = Future()
            failed.set_exception(exc)
            self._hand_over((None, failed))
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
            meta, checked = item
            batch = checked.result()                    # raises what fetching or checking raised
            yield meta, batch

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._fetcher.join()
        self._decoder.shutdown(wait=True, cancel_futures=True)
        self._checker.shutdown(wait=True, cancel_futures=True)
