"""Turning Samples into a Batch for a given OneModel (tokenize, pad, preprocess images/targets)."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch
from PIL import Image

from omniplug.data.conversation import Turn, encode_chat
from omniplug.data.sample import Sample
from omniplug.heads.dense import collate_label_maps
from omniplug.types import Batch


class Collator:
    """Callable collate_fn. ``for_generation`` drops the final assistant turn, appends the
    assistant prefix and pads on the left, as batched generation needs."""

    def __init__(self, model, *, max_length: int = 512, padding_side: Literal["left", "right"] = "right",
                 for_generation: bool = False) -> None:
        self.tokenizer = model.tokenizer
        self.encoder = model.encoder
        self.decoders = dict(model.decoders.items())
        self.conv_type = model.conv_type
        self.image_position = model.image_position
        self.image_token = model.image_token
        self.tokens_per_image = model.num_image_tokens
        self.max_length = max_length
        self.padding_side = "left" if for_generation else padding_side
        self.for_generation = for_generation
        self.dense = len(getattr(model, "dense_heads", ())) > 0  # label maps are collated only for dense heads

    def __call__(self, samples: list[Sample]) -> Batch:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        encoded = []
        for s in samples:
            turns = s.turns[:-1] if self.for_generation and s.turns and s.turns[-1].role == "assistant" else s.turns
            turns = self._write_answer_text(turns, s)
            enc = encode_chat(self.tokenizer, turns, conv_type=self.conv_type, image_token=self.image_token,
                              image_tokens_per_image=self.tokens_per_image, add_generation_prompt=self.for_generation,
                              image_position=self.image_position)
            if enc.num_images != len(s.images):
                raise ValueError(f"sample {s.meta.get('id', '?')}: the conversation places {enc.num_images} image(s) "
                                 f"but {len(s.images)} were given")
            if len(enc.input_ids) > self.max_length:
                raise ValueError(f"sample {s.meta.get('id', '?')}: {len(enc.input_ids)} tokens exceed max_length="
                                 f"{self.max_length}; shorten the text or raise data.max_length")
            encoded.append(enc)
        width = max(len(e.input_ids) for e in encoded)
        pad = self.tokenizer.pad_id
        ids = torch.full((len(samples), width), pad, dtype=torch.long)
        labels = torch.full((len(samples), width), -100, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e.input_ids)
            sl = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            ids[i, sl] = torch.tensor(e.input_ids)
            labels[i, sl] = torch.tensor(e.labels)
            mask[i, sl] = 1
        images = [im for s in samples for im in s.images]
        pixel_values = self.encoder.preprocess(images) if images and self.encoder is not None else None
        first_images = [s.images[0] if s.images else None for s in samples]
        sizes = [(im.height, im.width) if im is not None else (0, 0) for im in first_images]
        decoder_pixels = {}
        targets: dict[str, list] = {}
        for task, dec in self.decoders.items():
            if any(im is not None for im in first_images):
                # samples without an image (e.g. "Draw ...") get a black stand-in so that pixels stay aligned
                # with batch rows; a decoder only reads the rows whose answers hold its trigger tokens
                ref = next(im for im in first_images if im is not None)
                stand_in = Image.new("RGB", ref.size)
                if dec.reads_every_image:  # e.g. one mask per frame of a clip: every image of every sample
                    decoder_pixels[task] = dec.prepare_image_groups([list(s.images) or [stand_in] for s in samples])
                else:
                    decoder_pixels[task] = dec.prepare_images([im if im is not None else stand_in for im in first_images])
            targets[task] = [dec.prepare_target(t, first_images[i])
                             for i, s in enumerate(samples) for t in s.targets.get(task, [])]
        label_maps = first_rows = None
        if self.dense and not self.for_generation:
            label_maps = collate_label_maps([s.label_map if s.images else None for s in samples])
            counts = torch.tensor([len(s.images) for s in samples])
            first_rows = torch.where(counts > 0, torch.cumsum(counts, 0) - counts, torch.full_like(counts, -1))
        return Batch(input_ids=ids, attention_mask=mask, labels=None if self.for_generation else labels,
                     pixel_values=pixel_values, image_sizes=sizes, decoder_pixels=decoder_pixels, targets=targets,
                     label_maps=label_maps, first_image_rows=first_rows if label_maps is not None else None)

    def _write_answer_text(self, turns: list[Turn], sample: Sample) -> list[Turn]:
        """Text decoders (``answer_length > 0``, e.g. action tokens) write what follows each of their
        triggers in an assistant turn: occurrence i gets ``decoder.answer_text(targets[task][i])``."""
        for task, dec in self.decoders.items():
            trigger = "".join(dec.tokens)
            if not dec.answer_length or not any(t.role == "assistant" and trigger in t.text for t in turns):
                continue
            targets = list(sample.targets.get(task, []))
            used = 0
            out = []
            for turn in turns:
                if turn.role != "assistant" or trigger not in turn.text:
                    out.append(turn)
                    continue
                pieces = turn.text.split(trigger)
                if used + len(pieces) - 1 > len(targets):
                    raise ValueError(f"sample {sample.meta.get('id', '?')}: more {trigger!r} in the answers than "
                                     f"{len(targets)} target(s) for task {task!r}")
                text = pieces[0]
                for piece in pieces[1:]:
                    text += trigger + dec.answer_text(targets[used]) + piece
                    used += 1
                out.append(replace(turn, text=text))
            turns = out
        return turns
