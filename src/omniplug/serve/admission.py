"""``Admission``: a small admission controller shared by the UI and the API.

At most ``concurrency`` requests run at once (the rows of the running batch, under continuous
batching) and at most ``queue_size`` more wait for a turn; a request beyond that is refused at once
(``RequestError`` 429, ``queue_full``) instead of piling up. A group of several questions about one
upload takes as many places as it has questions, all at once. Waiting happens in the caller's
(worker) thread.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import RequestError


@dataclass(frozen=True)
class AdmissionStats:
    running: int
    waiting: int
    refused: int  # since start


class Admission:
    """``with admission.slot() as waited:`` runs the block in one of the ``concurrency`` slots.

    ``before_run`` (tests) is called inside the slot before the block: a test holds a slot with it.
    """

    def __init__(self, *, concurrency: int = 1, queue_size: int = 8,
                 before_run: Callable[[], None] | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self.concurrency = concurrency
        self.queue_size = queue_size
        self.before_run = before_run
        self._turn = threading.Condition()
        self._admitted = 0  # running + waiting
        self._running = 0
        self._refused = 0

    @property
    def stats(self) -> AdmissionStats:
        with self._turn:
            return AdmissionStats(running=self._running, waiting=self._admitted - self._running, refused=self._refused)

    @contextmanager
    def slot(self, places: int = 1) -> Iterator[float]:
        """Admit the caller (``places`` requests at once) or raise 429; yields the seconds it waited."""
        if not 1 <= places <= self.concurrency:
            raise RequestError(400, "too_many_prompts", f"{places} requests at once; at most {self.concurrency}")
        with self._turn:
            if self._admitted + places > self.concurrency + self.queue_size:
                self._refused += 1
                raise RequestError(429, "queue_full",
                                   f"the server is busy ({self.concurrency} running, {self.queue_size} waiting); "
                                   "retry in a few seconds")
            self._admitted += places
        start = time.perf_counter()
        with self._turn:
            while self._running + places > self.concurrency:
                self._turn.wait()
            self._running += places
        waited = time.perf_counter() - start
        try:
            if self.before_run is not None:
                self.before_run()
            yield waited
        finally:
            with self._turn:
                self._running -= places
                self._admitted -= places
                self._turn.notify_all()
