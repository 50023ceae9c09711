"""Runs a Service on one thread of its own, so the SQLite connection and the pycrdt documents
never cross threads (pycrdt's Rust objects are unsendable), while Flask and the sync listener
call in from many threads."""
import logging
import queue
import threading
import time
from concurrent.futures import Future

log = logging.getLogger(__name__)
IDLE_S = 1.0            # a node is quiet when no call came for this long: then it does idle work
IDLE_AT_MOST_S = 30.0   # ... which waits no longer than this for a quiet moment (a page polling, say)


class NodeThread:
    """A Service living on its own thread; `call` runs a function on it and waits."""

    def __init__(self, factory):
        self._jobs: queue.Queue = queue.Queue()
        self._changed = threading.Condition()
        self.revision = 0
        self._thread = threading.Thread(target=self._run, name="crewnode-node", daemon=True)
        started: Future = Future()
        self._thread.start()
        self._jobs.put((lambda _: factory(), started))
        self.service = started.result()
        self.call(lambda s: s.listeners.append(self._on_change))

    def _run(self) -> None:
        service = None
        due = None                                # since when idle work waits (None: done since the last job)
        while True:
            try:
                job = self._jobs.get(timeout=None if due is None else IDLE_S)
            except queue.Empty:
                due = None
                if service is not None:
                    self._idle(service)
                continue
            if job is None:
                return
            if due is None:
                due = time.monotonic()
            elif service is not None and time.monotonic() - due > IDLE_AT_MOST_S:
                due = time.monotonic()
                self._idle(service)
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(service)
                if service is None:
                    service = result
                future.set_result(result)
            except Exception as exc:              # noqa: BLE001 - handed to the caller
                future.set_exception(exc)
            except BaseException as exc:          # noqa: BLE001 - e.g. a Rust panic from pycrdt
                # A panic is a BaseException; as such it would escape the request's error
                # handling and leave the caller with no answer at all.
                future.set_exception(RuntimeError(f"internal error: {exc!r}"))

    @staticmethod
    def _idle(service) -> None:
        try:
            service.idle()
        except Exception:                         # noqa: BLE001 - idle work must never stop the node
            log.exception("idle work failed")

    def call(self, fn, *args, **kwargs):
        """Run `fn(service, *args, **kwargs)` on the node thread and return its result."""
        if threading.current_thread() is self._thread:
            return fn(self.service, *args, **kwargs)
        future: Future = Future()
        self._jobs.put((lambda s: fn(s, *args, **kwargs), future))
        return future.result()

    def _on_change(self, entries) -> None:
        with self._changed:
            self.revision += 1
            self._changed.notify_all()

    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until the revision passes `since` or `timeout` runs out; returns the revision."""
        with self._changed:
            self._changed.wait_for(lambda: self.revision > since, timeout)
            return self.revision

    def stop(self) -> None:
        """Close the service (snapshots written) and end the thread."""
        try:
            self.call(lambda s: s.close())
        finally:
            self._jobs.put(None)
            self._thread.join(timeout=10)
