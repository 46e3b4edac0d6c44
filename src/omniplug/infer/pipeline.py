"""``Pipeline``: images + prompt (+ history) -> one typed ``Response``. The one inference path.

Shown text: the raw answer keeps the decoders' trigger tokens (``"It is <seg>."``). ``Response.text``
replaces each occurrence with a numbered marker of what it produced — ``[mask 1]``, ``[image 1]``,
``[box 1]``, ``[action 1]`` (``[<task> 1]`` for other kinds) — numbered like the lists of the
``Response`` (``[mask 2]`` is ``response.masks[1]``), and drops other special tokens. Pass
``markers=False`` to keep the raw text.

Mask labels: an answer that names what it segments as ``"<phrase>: <seg>"`` (the multi-object form
the ``refcoco`` reader trains) gives that mask ``label=<phrase>``; otherwise the label is None.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from PIL import Image

from omniplug.data.collate import Collator
from omniplug.data.conversation import Turn
from omniplug.data.images import open_image
from omniplug.data.sample import Sample
from omniplug.types import Response

ImageLike = Union[Image.Image, str, Path]

_MARKER_NAMES = {"masks": "mask", "images": "image", "boxes": "box", "actions": "action"}
_LABEL = re.compile(r"([^\s,.;:!?][^,.;:!?]*?)\s*:\s*$")


class Pipeline:
    """Wraps a built ``OneModel`` for inference. Build with :meth:`from_config`."""

    def __init__(self, model, *, max_length: int = 2048, markers: bool = True) -> None:
        self.model = model
        self.model.eval()
        self.collator = Collator(model, max_length=max_length, for_generation=True)
        self.markers = markers

    @classmethod
    def from_config(cls, config, overrides: Sequence[str] = (), *, device: str | torch.device | None = None,
                    max_length: int | None = None, markers: bool = True) -> "Pipeline":
        """Build the model of ``config`` (a YAML path or a loaded ``Config``) with its ``one_model.weights``."""
        from omniplug.build import build_model
        from omniplug.config import Config, load_config

        cfg = config if isinstance(config, Config) else load_config(config, list(overrides))
        model = build_model(cfg)
        if device is not None:
            model.to(device)
        return cls(model, max_length=max_length or max(cfg.data.max_length, 512), markers=markers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, images: ImageLike | Sequence[ImageLike] | None, prompt: str, *,
                 history: Sequence[Turn] | None = None, max_new_tokens: int = 64, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, answer_prefix: str | None = None) -> Response:
        """Answer ``prompt`` about ``images``.

        ``images`` are all images of the conversation in order; those not already placed by
        ``history`` turns go before the new prompt. Decoders (e.g. SAM) work on the first image.
        ``answer_prefix`` (operator-supplied template text: task tokens allowed, e.g. the ``<gen_*>``
        tokens) starts the answer; never pass end-user text here.
        """
        t0 = time.perf_counter()
        pil = [open_image(im) if isinstance(im, (str, Path)) else im.convert("RGB") for im in _as_list(images)]
        history = list(history or [])
        placed = sum(t.images for t in history)
        if placed > len(pil):
            raise ValueError(f"the history places {placed} image(s) but only {len(pil)} were given")
        turns = history + [Turn(role="user", text=prompt, images=len(pil) - placed)]
        batch = self.collator([Sample(turns=turns, images=pil)]).to(self.device)
        t1 = time.perf_counter()
        gen = self.model.generate(batch, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                  top_p=top_p, answer_prefix=answer_prefix)
        t2 = time.perf_counter()
        response = self._response(gen.texts[0], {task: outs[0] for task, outs in gen.decoder_outputs.items()})
        t3 = time.perf_counter()
        response.timings = {"preprocess": t1 - t0, "generate": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}
        return response

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
            elif kind in ("images", "boxes", "actions"):
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
