"""``Pipeline``: images + prompt (+ history) -> one typed ``Response``. The one inference path.

One request or many: :meth:`Pipeline.batch` takes a list of :class:`Request` (or dicts, see
:meth:`Request.from_dict`) and answers them together; ``pipe(images, prompt, ...)`` is a batch of one
through the same code.

Continuous batching (LLMs with a cached step, ``LanguageModel.new_cache``: every transformers causal
LM with plain attention layers)
    Up to ``batch_size`` requests decode together in one running batch
    (:class:`omniplug.infer.engine.ContinuousBatcher`): a request leaves it as soon as its answer ends
    and the next request, in arrival order, takes its slot. Consecutive requests with the same shared
    options (``answer_prefix``, sampling) join as one group: their images are encoded together and
    rows that begin with the same image and text are prefilled once. Every option is per request;
    greedy answers are those of the request alone. :class:`omniplug.infer.worker.BatchWorker` runs
    the same loop for requests that arrive one by one (the server).

Chunks (LLMs without a cached step)
    ``OneModel.generate`` runs through the LLM's own ``generate``, ``batch_size`` requests at a time
    until the longest answer of the chunk ends. ``do_sample``, ``temperature``, ``top_p`` and
    ``answer_prefix`` are shared by every row of one call, so requests are grouped by them (in order
    of first appearance), then ordered by ``max_new_tokens``, number of images and text length
    before being cut into chunks: short answers do not wait for long ones. ``max_new_tokens`` and
    ``max_task_tokens`` stay per request (each answer is cut to its own limit before the decoders
    run). Responses come back in request order either way.

Limits
    ``max_new_tokens`` is 1..``max_new_tokens_cap`` (default 512) and ``max_task_tokens`` (how many
    trigger runs of one task an answer may execute, e.g. masks per answer) 1..``max_task_tokens_cap``
    (default 64); a request outside them is refused before anything runs. Text from the prompt and
    the history's user turns is encoded with special tokens split, so a typed ``<seg>`` or
    ``<image>`` is plain characters: it never triggers a decoder or stands for an image.
    ``answer_prefix`` is operator template text (task tokens allowed); never put end-user text there.

Timings (``Response.timings``, seconds)
    ``preprocess``: the request's own preparation (opening images, building the conversation) plus
    its group's (chunk's) collation; ``generate``: from the group's admission to its end (prefill, the
    decode steps it shared with the running batch, every decoder), the same for the requests of one
    group; ``postprocess``: building this response; ``total``: the sum of the three.

Images are encoded once per group (chunk): the shared encoder runs once on every image of it
(``OneModel.embed_inputs``), and a decoder with its own image encoder (SAM) runs it once per
request that triggers it, whatever the number of its trigger tokens in the answer.

Shown text: the raw answer keeps the decoders' trigger tokens (``"It is <seg>."``). ``Response.text``
replaces each occurrence with a numbered marker of what it produced — ``[mask 1]``, ``[image 1]``,
``[box 1]``, ``[action 1]`` (``[<task> 1]`` for other kinds) — numbered like the lists of the
``Response`` (``[mask 2]`` is ``response.masks[1]``), and drops other special tokens. Pass
``markers=False`` to keep the raw text.

Mask labels: an answer that names what it segments as ``"<phrase>: <seg>"`` (the multi-object form
the ``refcoco`` reader trains) gives that mask ``label=<phrase>``; otherwise the label is None.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from PIL import Image

from omniplug.data.collate import Collator
from omniplug.data.conversation import Turn
from omniplug.data.images import open_image
from omniplug.data.sample import Sample
from omniplug.types import Response

ImageLike = Union[Image.Image, str, Path]

#: default upper limits of a request's options (Pipeline arguments override them)
MAX_NEW_TOKENS_CAP = 512
MAX_TASK_TOKENS_CAP = 64

_MARKER_NAMES = {"masks": "mask", "images": "image", "boxes": "box", "actions": "action", "videos": "clip"}
_LABEL = re.compile(r"([^\s,.;:!?][^,.;:!?]*?)\s*:\s*$")


class RequestError(ValueError):
    """A request that cannot run; ``index`` is its position in the batch (None for a single call)."""

    def __init__(self, reason: str, *, index: int | None = None) -> None:
        super().__init__(reason if index is None else f"request {index}: {reason}")
        self.reason = reason
        self.index = index


@dataclass
class Options:
    """How one request is answered. See the module docstring for what a batch shares."""

    max_new_tokens: int = 64
    max_task_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    answer_prefix: str | None = None  # operator template text (task tokens allowed), never end-user text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Options":
        if not isinstance(data, Mapping):
            raise ValueError(f"options must be an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def check(self, *, max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP, max_task_tokens_cap: int = MAX_TASK_TOKENS_CAP) -> None:
        """Raise ValueError for a value of the wrong type or outside its limits."""
        for name, cap in (("max_new_tokens", max_new_tokens_cap), ("max_task_tokens", max_task_tokens_cap)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
                raise ValueError(f"{name} must be an integer from 1 to {cap}, got {value!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be true or false, got {self.do_sample!r}")
        for name, ok, what in (("temperature", lambda v: v > 0, "> 0"), ("top_p", lambda v: 0 < v <= 1, "in (0, 1]")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise ValueError(f"{name} must be a number {what}, got {value!r}")
        if self.answer_prefix is not None and not isinstance(self.answer_prefix, str):
            raise ValueError(f"answer_prefix must be text or null, got {type(self.answer_prefix).__name__}")

    def shared(self) -> tuple:
        """The settings one ``generate`` call shares: requests are grouped by this key."""
        sampling = (self.do_sample, float(self.temperature), float(self.top_p)) if self.do_sample else (False,)
        return (*sampling, self.answer_prefix)


@dataclass
class Request:
    """One question: ``images`` are all images of the conversation in order (those not placed by
    ``history`` turns go before the new ``prompt``); decoders (e.g. SAM) work on the first image."""

    prompt: str
    images: Sequence[ImageLike] = ()
    history: Sequence[Turn] = ()
    options: Options = field(default_factory=Options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path | None = None) -> "Request":
        """``{"prompt": str, "image": path | "images": [paths], "history": [{role, text, images}],
        "options": {max_new_tokens, ...}}``; relative image paths are taken from ``base_dir``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a request must be an object with a 'prompt', got {type(data).__name__}")
        known = {"prompt", "image", "images", "history", "options"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {unknown}; a request has {', '.join(sorted(known))}")
        if "prompt" not in data:
            raise ValueError("missing 'prompt'")
        if "image" in data and "images" in data:
            raise ValueError("give 'image' or 'images', not both")
        images = data.get("images", [data["image"]] if "image" in data else [])
        if not isinstance(images, list):
            raise ValueError(f"'images' must be a list of paths, got {type(images).__name__}")
        paths = []
        for im in images:
            if not isinstance(im, str) or not im:
                raise ValueError(f"an image must be a file path, got {im!r}")
            path = Path(im).expanduser()
            paths.append(path if path.is_absolute() or base_dir is None else Path(base_dir) / path)
        history = data.get("history", [])
        if not isinstance(history, list):
            raise ValueError(f"'history' must be a list of turns, got {type(history).__name__}")
        turns = []
        for turn in history:
            if not isinstance(turn, Mapping) or set(turn) - {"role", "text", "images"} or not {"role", "text"} <= set(turn):
                raise ValueError(f"a history turn has 'role' (user or assistant), 'text' and optionally 'images' "
                                 f"(a count), got {turn!r}")
            turns.append(Turn(role=turn["role"], text=turn["text"], images=turn.get("images", 0)))
        request = cls(prompt=data["prompt"], images=paths, history=turns, options=Options.from_dict(data.get("options", {})))
        request.check()
        return request

    def check(self, *, max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP, max_task_tokens_cap: int = MAX_TASK_TOKENS_CAP) -> None:
        """Raise ValueError for a malformed request (types, image counts, options); opens no file."""
        if not isinstance(self.prompt, str):
            raise ValueError(f"the prompt must be text, got {type(self.prompt).__name__}")
        for im in self.images:
            if not isinstance(im, (Image.Image, str, Path)):
                raise ValueError(f"an image must be a PIL image or a file path, got {type(im).__name__}")
        placed = 0
        for turn in self.history:
            if not isinstance(turn, Turn):
                raise ValueError(f"history turns must be Turn values, got {type(turn).__name__}")
            if turn.role not in ("user", "assistant") or not isinstance(turn.text, str):
                raise ValueError(f"a history turn needs role 'user' or 'assistant' and text, got {turn!r}")
            if isinstance(turn.images, bool) or not isinstance(turn.images, int) or turn.images < 0 or \
                    (turn.images and turn.role != "user"):
                raise ValueError(f"only user turns place images (a count >= 0), got {turn!r}")
            placed += turn.images
        if placed > len(self.images):
            raise ValueError(f"the history places {placed} image(s) but only {len(self.images)} were given")
        if not isinstance(self.options, Options):
            raise ValueError(f"options must be an Options value, got {type(self.options).__name__}")
        self.options.check(max_new_tokens_cap=max_new_tokens_cap, max_task_tokens_cap=max_task_tokens_cap)


class Pipeline:
    """Wraps a built ``OneModel`` for inference. Build with :meth:`from_config`."""

    def __init__(self, model, *, max_length: int = 2048, markers: bool = True, batch_size: int = 8,
                 max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP, max_task_tokens_cap: int = MAX_TASK_TOKENS_CAP,
                 prefix_cache_mb: float = 64.0) -> None:
        """``prefix_cache_mb``: keys and values of earlier prompts and answers kept for later requests that
        begin with them (a conversation's next turn, another question about the same image); 0 turns it off.
        Call ``pipe.prefix_cache.clear()`` after changing the model's weights."""
        from omniplug.infer.engine import PrefixCache

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {prefix_cache_mb}")
        self.prefix_cache = PrefixCache(max_mb=prefix_cache_mb) if prefix_cache_mb else None
        self.model = model
        self.model.eval()
        self.collator = Collator(model, max_length=max_length, for_generation=True)
        self.markers = markers
        self.batch_size = batch_size
        self.max_new_tokens_cap = max_new_tokens_cap
        self.max_task_tokens_cap = max_task_tokens_cap

    @classmethod
    def from_config(cls, config, overrides: Sequence[str] = (), *, device: str | torch.device | None = None,
                    max_length: int | None = None, markers: bool = True, batch_size: int = 8,
                    prefix_cache_mb: float = 64.0) -> "Pipeline":
        """Build the model of ``config`` (a YAML path or a loaded ``Config``) with its ``one_model.weights``."""
        from omniplug.build import build_model
        from omniplug.config import Config, load_config

        cfg = config if isinstance(config, Config) else load_config(config, list(overrides))
        model = build_model(cfg)
        if device is not None:
            model.to(device)
        return cls(model, max_length=max_length or max(cfg.data.max_length, 512), markers=markers,
                   batch_size=batch_size, prefix_cache_mb=prefix_cache_mb)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, images: ImageLike | Sequence[ImageLike] | None, prompt: str, *,
                 history: Sequence[Turn] | None = None, max_new_tokens: int = 64, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, max_task_tokens: int = 16,
                 answer_prefix: str | None = None) -> Response:
        """Answer ``prompt`` about ``images``: a batch of one (see :class:`Request` and :class:`Options`)."""
        options = Options(max_new_tokens=max_new_tokens, max_task_tokens=max_task_tokens, do_sample=do_sample,
                          temperature=temperature, top_p=top_p, answer_prefix=answer_prefix)
        request = Request(prompt=prompt, images=_as_list(images), history=list(history or []), options=options)
        try:
            response = self.batch([request])[0]
        except RequestError as exc:
            raise RequestError(exc.reason) from None
        self.check_answerable(request, response)
        return response

    def check_answerable(self, request: Request, response: Response) -> None:
        """Raise ValueError when the answer asks for an image-reading decoder but no image was given. In a
        batch such a request just gets no mask (boxes); asked alone, say why (the server answers 422)."""
        for decoder in self.model.decoders.values() if not request.images else ():
            if not getattr(decoder, "needs_image", False):
                continue
            name = _MARKER_NAMES.get(decoder.output_kind, decoder.output_kind)
            shown = f"[{name} " if self.markers else decoder.tokens[0]
            if shown in response.text and not getattr(response, decoder.output_kind, None):
                raise ValueError(f"it answered {response.text!r}, with a {name}, but no image was given: send the "
                                 f"image the question is about")

    def batch(self, requests: Sequence[Request | Mapping[str, Any]], *, batch_size: int | None = None,
              progress: Callable[[int], None] | None = None) -> list[Response]:
        """Answer every request; ``Response`` i belongs to ``requests[i]``. Every request is checked
        before anything runs (a bad one raises :class:`RequestError` naming its index). ``progress``
        is called with the number of requests each finished chunk answered."""
        size = batch_size or self.batch_size
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {size}")
        checked = [self._checked(i, r) for i, r in enumerate(requests)]
        responses: list[Response | None] = [None] * len(checked)
        if self.model.llm.new_cache() is not None:  # continuous batching: one running batch for every request
            for i, response in self._run_continuous(list(enumerate(checked)), size, progress):
                responses[i] = response
            return responses  # type: ignore[return-value]
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(checked):
            groups.setdefault(request.options.shared(), []).append(i)
        for indices in groups.values():
            indices = sorted(indices, key=lambda i: _size(checked[i]))  # stable: equal sizes keep their order
            for at in range(0, len(indices), size):
                chunk = indices[at:at + size]
                for i, response in zip(chunk, self._run_chunk([(i, checked[i]) for i in chunk])):
                    responses[i] = response
                if progress is not None:
                    progress(len(chunk))
        return responses  # type: ignore[return-value]

    def _checked(self, index: int, request: Request | Mapping[str, Any]) -> Request:
        try:
            if isinstance(request, Mapping):
                request = Request.from_dict(request)
            elif not isinstance(request, Request):
                raise ValueError(f"expected a Request or a dict, got {type(request).__name__}")
            request.check(max_new_tokens_cap=self.max_new_tokens_cap, max_task_tokens_cap=self.max_task_tokens_cap)
        except (ValueError, TypeError) as exc:
            raise RequestError(str(exc), index=index) from None
        return request

    def _sample(self, index: int, request: Request) -> Sample:
        try:
            pil = [open_image(im) if isinstance(im, (str, Path)) else im.convert("RGB") for im in request.images]
        except (ValueError, FileNotFoundError) as exc:
            raise RequestError(str(exc), index=index) from None
        placed = sum(t.images for t in request.history)
        turns = list(request.history) + [Turn(role="user", text=request.prompt, images=len(pil) - placed)]
        return Sample(turns=turns, images=pil, meta={"id": f"request {index}"})

    def _collate(self, chunk: list[tuple[int, Request]]):
        """Open and collate a chunk: (batch, each request's own preparation seconds, collation seconds)."""
        own_pre, samples = [], []
        for index, request in chunk:
            t = time.perf_counter()
            samples.append(self._sample(index, request))
            own_pre.append(time.perf_counter() - t)
        t0 = time.perf_counter()
        try:
            batch = self.collator(samples).to(self.device)
        except ValueError as exc:  # the collator names the sample by its meta id: "request <i>"
            index = next((i for i, _ in chunk if f"request {i}:" in str(exc)), None)
            raise RequestError(str(exc).replace(f"sample request {index}: ", ""), index=index) from None
        return batch, own_pre, time.perf_counter() - t0

    def _run_chunk(self, chunk: list[tuple[int, Request]]) -> list[Response]:
        """One ``OneModel.generate`` call for the chunk (an LLM without a cached step)."""
        batch, own_pre, collate = self._collate(chunk)
        options = [request.options for _, request in chunk]
        shared = options[0]
        t1 = time.perf_counter()
        gen = self.model.generate(batch, max_new_tokens=[o.max_new_tokens for o in options],
                                  max_task_tokens=[o.max_task_tokens for o in options], do_sample=shared.do_sample,
                                  temperature=shared.temperature, top_p=shared.top_p,
                                  answer_prefix=shared.answer_prefix)
        return self._responses(gen, own_pre, collate, time.perf_counter() - t1)

    def _run_continuous(self, items: list[tuple[int, Request]], slots: int,
                        progress: Callable[[int], None] | None = None):
        """Continuous batching (``omniplug.infer.engine``): requests join the running batch in arrival order
        as slots free up, consecutive requests with the same shared options as one group (prefilled
        together, one image asked several things prefilled once); yields ``(index, Response)`` as groups
        finish."""
        from collections import deque

        from omniplug.infer.engine import ContinuousBatcher

        batcher = ContinuousBatcher(self.model, slots=slots, prefix_cache=self.prefix_cache)
        queue = deque(items)
        while queue or batcher.busy:
            if batcher.admits(len(queue)):
                key = queue[0][1].options.shared()
                chunk = []
                while queue and len(chunk) < batcher.free_slots and queue[0][1].options.shared() == key:
                    chunk.append(queue.popleft())
                self._admit(batcher, chunk)
            with torch.no_grad():
                finished = batcher.step()
            for (indices, own_pre, collate, started), gen in finished:
                for i, response in zip(indices, self._responses(gen, own_pre, collate, time.perf_counter() - started)):
                    yield i, response
                if progress is not None:
                    progress(len(indices))

    def _admit(self, batcher, chunk: list[tuple[int, Request]], owner: Any = None) -> None:
        """Collate ``chunk`` (requests with the same shared options) and admit it as one group; the group's
        tag is ``(owner or the chunk's indices, each request's preparation seconds, collation seconds,
        admission time)``."""
        from omniplug.infer.engine import Sampling

        batch, own_pre, collate = self._collate(chunk)
        options = [request.options for _, request in chunk]
        first = options[0]
        with torch.no_grad():
            batcher.admit(batch, max_new_tokens=[o.max_new_tokens for o in options],
                          max_task_tokens=[o.max_task_tokens for o in options], answer_prefix=first.answer_prefix or "",
                          sampling=Sampling(first.do_sample, float(first.temperature), float(first.top_p)),
                          tag=([i for i, _ in chunk] if owner is None else owner, own_pre, collate, time.perf_counter()))

    def _responses(self, gen, own_pre: list[float], collate: float, generate: float) -> list[Response]:
        responses = []
        for row, pre in enumerate(own_pre):
            t = time.perf_counter()
            response = self._response(gen.texts[row], {task: outs[row] for task, outs in gen.decoder_outputs.items()})
            post = time.perf_counter() - t
            response.timings = {"preprocess": pre + collate, "generate": generate, "postprocess": post,
                                "total": pre + collate + generate + post}
            responses.append(response)
        return responses

    # --- building the Response --------------------------------------------------------------------
    def _response(self, raw: str, outputs: dict[str, list[Any]]) -> Response:
        response = Response(text=raw)
        for task, items in outputs.items():
            kind = getattr(self.model.decoders[task], "output_kind", "extra")
            if kind == "masks":
                labels = trigger_labels(raw, self.model.decoders[task].tokens[0])
                for i, mask in enumerate(items):
                    if mask.label is None and i < len(labels):
                        mask.label = labels[i]
                response.masks.extend(items)
            elif kind == "boxes":  # each <det> gives a list of boxes (possibly none)
                response.boxes.extend(box for boxes in items for box in boxes)
            elif kind in ("images", "actions", "videos"):
                getattr(response, kind).extend(items)
            else:
                response.extra.setdefault(task, []).extend(items)
        if self.markers:
            response.text = self.display_text(raw)
        return response

    def display_text(self, raw: str) -> str:
        """Raw answer -> shown answer: trigger runs become numbered markers, other special tokens go."""
        text = raw
        counters: dict[str, int] = {}
        for task, decoder in self.model.decoders.items():
            kind = getattr(decoder, "output_kind", "extra")
            name = _MARKER_NAMES.get(kind, task)
            run = r"\s*".join(re.escape(t) for t in decoder.tokens)

            def marker(_: re.Match, name: str = name) -> str:
                counters[name] = counters.get(name, 0) + 1
                return f"[{name} {counters[name]}]"

            text = re.sub(run, marker, text)
            for tok in decoder.tokens:  # stray pieces of an incomplete run
                text = text.replace(tok, "")
        if counters:  # "It is[mask 1].[mask 2]" -> "It is [mask 1]. [mask 2]"
            names = "|".join(re.escape(n) for n in counters)
            text = re.sub(rf"(?<=[^\s(\[])(\[(?:{names}) \d+\])", r" \1", text)
        tok = self.model.tokenizer
        for special in {self.model.image_token, *_token_strings(tok, (tok.eos_id, tok.pad_id, tok.bos_id))}:
            if special:
                text = text.replace(special, "")
        return " ".join(text.split())


def _size(request: Request) -> tuple[int, int, int]:
    """How long a request is expected to run: answer budget, images, text length."""
    text = len(request.prompt) + sum(len(t.text) for t in request.history)
    return request.options.max_new_tokens, len(request.images), text


def trigger_labels(raw: str, token: str) -> list[str | None]:
    """For each ``token`` in ``raw``, the phrase right before it when written as ``"<phrase>: <token>"``."""
    pieces = raw.split(token)[:-1]
    labels: list[str | None] = []
    for piece in pieces:
        match = _LABEL.search(piece)
        labels.append(match.group(1).strip() if match else None)
    return labels


def _token_strings(tokenizer, ids) -> list[str]:
    out = []
    for i in ids:
        if i is not None:
            out.append(tokenizer.decode([int(i)], skip_special=False))
    return out


def _as_list(images) -> list:
    if images is None:
        return []
    if isinstance(images, (Image.Image, str, Path)):
        return [images]
    return list(images)
