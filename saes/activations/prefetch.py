"""Run an iterator ahead in a background thread, so producing the next item (a model forward)
overlaps with consuming the current one (SAE steps).

Items come out in the producer's order, so a consumer sees exactly what it would see without
the thread. An exception in the producer is raised in the consumer, at the item where it happened.
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    """The producer's exception, carried to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Generic[T]):
    """Iterates ``source`` up to ``depth`` items ahead of its consumer (``depth`` >= 1).

    ``close()`` stops the producer after the item it is making; the items made but not consumed
    are dropped (callers that checkpoint count only consumed items).
    """

    def __init__(self, source: Iterator[T], depth: int):
        if depth < 1:
            raise ValueError(f"depth={depth} must be at least 1")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(source,), name="saes-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, source: Iterator[T]) -> None:
        try:
            while not self._stop.is_set():  # checked before making each item
                item = next(source, _DONE)
                if not self._put(item) or item is _DONE:
                    return
        except BaseException as err:  # re-raised in the consumer
            self._put(_Failure(err))

    def _put(self, item: object) -> bool:
        """Blocks while the queue is full; False once closed."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Prefetcher[T]":
        return self

    def __next__(self) -> T:
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._stop.set()
            raise StopIteration
        if isinstance(item, _Failure):
            self._stop.set()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the producer and wait for it (at most the item it is making)."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()  # unblock a producer waiting on a full queue
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
