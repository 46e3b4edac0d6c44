"""``BatchWorker``: continuous batching for requests that arrive one by one (the HTTP server, the UI).

Callers in any thread :meth:`~BatchWorker.submit` a request (or a group of requests, e.g. several
questions about one upload) and get ``concurrent.futures.Future`` values. One worker thread owns a
``ContinuousBatcher`` over the Pipeline's model: it admits waiting requests, in arrival order, as
soon as the running batch has free slots, steps the batch, and resolves each future with the
``Response`` that ``Pipeline.batch([request])`` gives (continuous batching does not change greedy
answers). A group is admitted together, so questions about the same image are prefilled once.

A request that cannot run (an image that does not open, a prompt longer than ``max_length``) fails
its own future with ``RequestError`` and nothing else; an error inside the model fails the futures of
the requests running at that moment and the worker goes on with the next ones.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence

import torch

from omniplug.infer.engine import ContinuousBatcher
from omniplug.infer.pipeline import Pipeline, Request, RequestError

log = logging.getLogger("omniplug.infer")


@dataclass(eq=False)
class _Job:
    requests: list[Request]
    futures: list[Future]
    arrived: float


class BatchWorker:
    """``slots`` requests decode together; see the module docstring. ``close()`` stops the thread."""

    def __init__(self, pipeline: Pipeline, *, slots: int = 8) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.pipeline = pipeline
        self.slots = slots
        self._inbox: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self.batcher = self._new_batcher()  # owned by the worker thread
        self._thread = threading.Thread(target=self._run, name="omniplug-batch-worker", daemon=True)
        self._thread.start()

    def _new_batcher(self) -> ContinuousBatcher:
        return ContinuousBatcher(self.pipeline.model, slots=self.slots, prefix_cache=self.pipeline.prefix_cache)

    def submit(self, request: Request) -> Future:
        """Queue one request; the future gives its ``Response`` (or raises ``RequestError``)."""
        return self.submit_group([request])[0]

    def submit_group(self, requests: Sequence[Request]) -> list[Future]:
        """Queue requests that join the running batch together (at most ``slots``; same shared options)."""
        if self._closed:
            raise RuntimeError("the batch worker is closed")
        if not 1 <= len(requests) <= self.slots:
            raise ValueError(f"a group has 1 to {self.slots} requests (the worker's slots), got {len(requests)}")
        if len({r.options.shared() for r in requests}) > 1:
            raise ValueError("requests of one group share answer_prefix and sampling options")
        for i, request in enumerate(requests):
            self.pipeline._checked(i, request)
        job = _Job(requests=list(requests), futures=[Future() for _ in requests], arrived=time.perf_counter())
        self._inbox.put(job)
        return job.futures

    def close(self, timeout: float | None = 10.0) -> None:
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout)

    # --- the worker thread ----------------------------------------------------------------------
    def _run(self) -> None:
        waiting: deque[_Job] = deque()
        batcher = self.batcher
        while True:
            try:  # block only when there is nothing to do
                job = self._inbox.get(block=not (waiting or batcher.busy))
                if job is None:
                    break
                waiting.append(job)
                while True:
                    more = self._inbox.get_nowait()
                    if more is None:
                        self._closed = True
                        break
                    waiting.append(more)
            except queue.Empty:
                pass
            while waiting and len(waiting[0].requests) <= batcher.free_slots and \
                    batcher.admits(sum(len(job.requests) for job in waiting)):
                self._admit(batcher, waiting.popleft())
            try:
                with torch.no_grad():
                    finished = batcher.step()
            except Exception as exc:  # noqa: BLE001 - the running requests fail, the worker goes on
                log.exception("decoding failed")
                for job in batcher.tags():
                    for future in job[0].futures:
                        future.set_exception(exc)
                batcher = self.batcher = self._new_batcher()
                continue
            for (job, own_pre, collate, admitted), gen in finished:
                responses = self.pipeline._responses(gen, own_pre, collate, time.perf_counter() - admitted)
                for future, response in zip(job.futures, responses):
                    response.timings = {"queue": admitted - job.arrived, **response.timings}
                    future.set_result(response)
            if self._closed and not waiting and not batcher.busy and self._inbox.empty():
                break
        for job in waiting:
            for future in job.futures:
                future.set_exception(RuntimeError("the batch worker was closed before this request ran"))

    def _admit(self, batcher: ContinuousBatcher, job: _Job) -> None:
        try:
            self.pipeline._admit(batcher, list(enumerate(job.requests)), owner=job)
        except RequestError as exc:  # a request that cannot run: its group fails, the running batch is untouched
            for i, future in enumerate(job.futures):
                future.set_exception(RequestError(exc.reason) if exc.index in (i, None) else
                                     RequestError(f"another request of its group failed: {exc.reason}"))
        except Exception as exc:  # noqa: BLE001
            log.exception("prefill failed")
            for future in job.futures:
                future.set_exception(exc)
