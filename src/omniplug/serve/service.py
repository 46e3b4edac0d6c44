"""``Service``: the loaded model and the one handler the UI and the API both call.

The Pipeline is built in a background thread (so ``/health`` answers at once) and then answers a
warm-up question; only after that does the service report ready. :meth:`Service.answer` takes
decoded images, a prompt and options and waits its turn in the admission controller; then the
request joins the running batch of a ``BatchWorker`` (continuous batching: up to ``concurrency``
requests decode together, each leaving as its answer ends). An LLM without a cached step answers
one ``Pipeline.batch`` call at a time instead.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Literal, Sequence

from PIL import Image

from omniplug.data.conversation import Turn
from omniplug.types import Response

from .admission import Admission
from .errors import RequestError
from .rollouts import Rollouts
from .settings import ServeSettings
from .uploads import InferOptions, check_prompt

log = logging.getLogger("omniplug.serve")

State = Literal["loading", "ready", "failed"]


@dataclass(frozen=True)
class Readiness:
    state: State
    message: str
    load_seconds: float | None = None


class Service:
    """Owns the Pipeline of ``config`` (+ ``overrides``) and the admission controller."""

    def __init__(self, *, config: str, overrides: Sequence[str] = (), settings: ServeSettings,
                 device: str | None = None, admission: Admission | None = None) -> None:
        self.config = str(config)
        self.overrides = list(overrides)
        self.settings = settings
        self.device = device
        self.admission = admission or Admission(concurrency=settings.concurrency, queue_size=settings.queue_size)
        self.pipeline = None
        self.worker = None  # continuous batching (omniplug.infer.worker), for LLMs with a cached step
        self._one_at_a_time = threading.Lock()  # otherwise: one Pipeline call at a time
        self._state: State = "loading"
        self._message = "loading the model"
        self._load_seconds: float | None = None
        self._thread: threading.Thread | None = None
        self.rollouts = Rollouts(self)  # missions played in settings.env (when the server has one)

    # --- loading --------------------------------------------------------------------------------
    def start(self) -> "Service":
        """Load the model in a background thread; :attr:`readiness` tells how it went."""
        self._thread = threading.Thread(target=self._load, name="omniplug-serve-load", daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> Readiness:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.readiness

    @property
    def readiness(self) -> Readiness:
        return Readiness(state=self._state, message=self._message, load_seconds=self._load_seconds)

    def _load(self) -> None:
        from omniplug.infer.pipeline import Pipeline

        start = time.perf_counter()
        try:
            pipeline = Pipeline.from_config(self.config, self.overrides, device=self.device,
                                            prefix_cache_mb=self.settings.prefix_cache_mb)
            if self.settings.env is not None and "act" not in pipeline.model.decoders:
                raise ValueError(f"--env {self.settings.env} rolls out the model's action decoder, and this config "
                                 f"has none (its decoders: {sorted(pipeline.model.decoders) or 'none'}); serve an "
                                 "agent's config (e.g. configs/driving/highway.yaml) or leave --env out")
            self._warm_up(pipeline)
        except Exception as exc:  # the server stays up and says why it is not ready
            log.error("model failed to load: %s", traceback.format_exc())
            self._message = f"the model failed to load: {exc.__class__.__name__}: {exc}"
            self._state = "failed"
            return
        if pipeline.model.llm.new_cache() is not None:
            from omniplug.infer.worker import BatchWorker

            self.worker = BatchWorker(pipeline, slots=self.settings.concurrency)
        self.pipeline = pipeline
        self._load_seconds = time.perf_counter() - start
        self._message = f"ready ({self._load_seconds:.1f} s to load and warm up)"
        self._state = "ready"

    @staticmethod
    def _warm_up(pipeline) -> None:
        """One short answer, with an image (a model that cannot take one answers without)."""
        blank = Image.new("RGB", (64, 64), (128, 128, 128))
        try:
            pipeline([blank], "Hello.", max_new_tokens=2)
        except ValueError:
            pipeline([], "Hello.", max_new_tokens=2)

    # --- the one handler ------------------------------------------------------------------------
    def answer(self, images: Sequence[Image.Image], prompt: str, options: InferOptions, *,
               history: Sequence[Turn] = ()) -> Response:
        """Answer ``prompt`` about ``images`` (all images of the conversation, see ``Pipeline``).

        Raises ``RequestError``: 503 before the model is ready, 400 for a bad prompt or option, 429
        when the queue is full, 422 when the model cannot answer this request (e.g. it answers with a
        mask but no image was given).
        """
        return self.answer_many(images, [prompt], options, history=history)[0]

    def answer_many(self, images: Sequence[Image.Image], prompts: Sequence[str], options: InferOptions, *,
                    history: Sequence[Turn] = ()) -> list[Response]:
        """Several questions about the same images, answered together: with continuous batching they join
        the running batch as one group, so the images are encoded once and the shared prompt prefix (image
        tokens included) is prefilled once. Errors as :meth:`answer`; a group holds at most
        ``settings.concurrency`` prompts and takes as many admission places."""
        if self._state != "ready":
            raise RequestError(503, "not_ready" if self._state == "loading" else "model_failed", self._message)
        if not 1 <= len(prompts) <= self.settings.concurrency:
            raise RequestError(400, "too_many_prompts", f"{len(prompts)} prompts; one request asks 1 to "
                                                        f"{self.settings.concurrency} (the server's --concurrency)")
        for prompt in prompts:
            check_prompt(prompt, self.settings)
        options.check(self.settings)
        if len(images) > self.settings.max_images:
            raise RequestError(400, "too_many_images", f"{len(images)} images; at most {self.settings.max_images}")
        from omniplug.infer.pipeline import Options, Request
        from omniplug.infer.pipeline import RequestError as PipelineRequestError

        requests = [Request(prompt=prompt, images=list(images), history=list(history),
                            options=Options(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                                            temperature=options.temperature, top_p=options.top_p))
                    for prompt in prompts]
        with self.admission.slot(len(requests)) as waited:
            try:
                if self.worker is not None:
                    responses = [f.result() for f in self.worker.submit_group(requests)]
                else:
                    with self._one_at_a_time:
                        responses = self.pipeline.batch(requests)
                for request, response in zip(requests, responses):
                    self.pipeline.check_answerable(request, response)
            except PipelineRequestError as exc:
                raise RequestError(400, "invalid_request", exc.reason) from None
            except ValueError as exc:
                raise RequestError(422, "cannot_answer", f"the model cannot answer this request: {exc}") from None
        for response in responses:
            response.timings = {**response.timings, "queue": waited + response.timings.get("queue", 0.0)}
        return responses

    def close(self) -> None:
        """Stop the batch worker (pending requests fail)."""
        if self.worker is not None:
            self.worker.close()
