"""OneModel: splices image tokens into the LLM input, routes task-token hidden states to decoders
through their output projectors, sums the losses, and generates.

Which hidden state a decoder gets
---------------------------------
For every occurrence of a decoder's trigger token(s) in the sequence, the decoder receives the
LLM's last-layer hidden state **at the trigger token's own position** (the state computed with
the trigger token as input), not the state of the position that predicted it. Reasons: the
trigger's own embedding (a trained row) is part of that state; several trigger tokens of
different decoders, or the K tokens ``<gen_0>..<gen_{K-1}>`` of one decoder, each get a distinct
state even when their left context is identical; and at inference it is the state the LLM computes
anyway while generating (when the trigger token is fed back), the same as in training (teacher
forcing) up to float rounding. ``generate`` keeps those states (``LanguageModel.generate(
return_hidden=True)``) and runs one step more than any answer keeps, so that every kept token has
been fed back; an LLM that does not return them gets one teacher-forced pass over prompt + answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from omniplug.base import Decoder, Encoder, LanguageModel, Tokenizer
from omniplug.heads.dense import DenseHead
from omniplug.types import Batch, DecoderInput, DecoderOutput, GenerateOutput, ImageFeatures, ModelOutput


class ShapeError(ValueError):
    """Inputs whose shapes or counts do not fit together."""


@dataclass
class Generation:
    """What ``OneModel.generate`` returns for a batch."""

    texts: list[str]
    token_ids: list[list[int]]
    decoder_outputs: dict[str, list[list[Any]]] = field(default_factory=dict)  # task -> per sample -> items


class OneModel(nn.Module):
    def __init__(self, *, tokenizer: Tokenizer, llm: LanguageModel, encoder: Encoder | None,
                 in_projector: nn.Module | None, decoders: dict[str, Decoder], out_projectors: dict[str, nn.Module],
                 conv_type: str, image_token: str, ce_loss_weight: float = 1.0,
                 decoder_loss_weights: dict[str, float] | None = None,
                 image_position: Literal["before_text", "after_text"] = "before_text",
                 dense_classes: int | list[int] | None = None, dense_loss_weights: dict[str, float] | None = None) -> None:
        super().__init__()
        if (encoder is None) != (in_projector is None):
            raise ValueError("encoder and in_projector go together")
        self.tokenizer = tokenizer
        self.llm = llm
        # set by the training loop under DeepSpeed / FSDP: every trainable weight outside the LLM gets a gradient
        # (zero when its module did not run), so every rank reduces the same gradients in every step
        self.touch_all_trainable = False
        self.encoder = encoder
        self.in_projector = in_projector
        self.decoders = nn.ModuleDict(decoders)
        self.out_projectors = nn.ModuleDict(out_projectors)
        self.conv_type = conv_type
        self.image_token = image_token
        if image_position not in ("before_text", "after_text"):
            raise ValueError(f"image_position must be 'before_text' or 'after_text', got {image_position!r}")
        self.image_position = image_position
        self.image_token_id = tokenizer.token_id(image_token)
        self.ce_loss_weight = ce_loss_weight
        self.decoder_loss_weights = dict(decoder_loss_weights or {})
        self.trigger_ids: dict[str, list[int]] = {t: [tokenizer.token_id(s) for s in d.tokens] for t, d in decoders.items()}
        unknown = set(self.decoder_loss_weights) - set(decoders)
        if unknown:
            raise ValueError(f"decoder_loss_weights names unknown task(s) {sorted(unknown)}; tasks: {sorted(decoders)}")
        self.dense_loss_weights = dict(dense_loss_weights or {})
        self.dense_heads = nn.ModuleDict({name: DenseHead(width, dense_classes) for name, width in
                                          self._dense_widths(dense_classes).items()})

    def _dense_widths(self, classes: int | list[int] | None) -> dict[str, int]:
        """Feature width of every module named in dense_loss_weights, checked."""
        if not self.dense_loss_weights:
            return {}
        if classes is None:
            raise ValueError("one_model.dense_loss_weights is set but dense_classes is not; set dense_classes to the "
                             "number of classes in the datasets' label maps")
        widths = {}
        for name in self.dense_loss_weights:
            if name == "encoder":
                if self.encoder is None:
                    raise ValueError("dense_loss_weights names 'encoder' but the model has no encoder")
                widths[name] = int(self.encoder.out_dim)
            elif name in self.decoders:
                width = self.decoders[name].dense_width
                if width is None:
                    raise ValueError(f"dense_loss_weights names decoder {name!r}, which has no feature map for a dense "
                                     f"head (decoders with one: {[t for t, d in self.decoders.items() if d.dense_width]})")
                widths[name] = int(width)
            else:
                raise ValueError(f"dense_loss_weights names {name!r}; use 'encoder' or a decoder task: {sorted(self.decoders)}")
        return widths

    def _dense_loss(self, name: str, features: Tensor | None, labels: Tensor) -> Tensor | None:
        if features is None or features.numel() == 0:
            raise ShapeError(f"dense supervision of {name!r}: it produced no feature map (an encoder whose tokens do "
                             f"not form a square grid has none); drop {name!r} from one_model.dense_loss_weights")
        loss = self.dense_heads[name].loss(features, labels)
        return None if loss is None else self.dense_loss_weights[name] * loss

    # --- images ---------------------------------------------------------------------------------
    @property
    def num_image_tokens(self) -> int:
        return self.encoder.num_tokens if self.encoder is not None else 0

    def encode_images(self, pixel_values: Tensor) -> ImageFeatures:
        if self.encoder is None:
            raise ShapeError("this model has no image encoder (one_model.encoder is not set) but images were given")
        return self.encoder(pixel_values)

    def embed_inputs(self, input_ids: Tensor, pixel_values: Tensor | None) -> tuple[Tensor, ImageFeatures | None]:
        """Text embeddings with projected image tokens spliced in at the placeholder positions."""
        embeds = self.llm.embed(input_ids)
        slots = input_ids == self.image_token_id
        n_slots = int(slots.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_slots:
                raise ShapeError(f"the text has {n_slots} image placeholder token(s) but no image was given")
            return embeds, None
        features = self.encode_images(pixel_values)
        projected = self.in_projector(features.tokens)  # (n_img, N, D)
        if projected.shape[-1] != embeds.shape[-1]:
            raise ShapeError(f"in_projector produces width {projected.shape[-1]}, the LLM expects {embeds.shape[-1]}")
        expected = projected.shape[0] * projected.shape[1]
        if n_slots != expected:
            raise ShapeError(
                f"image placeholder count mismatch: the text has {n_slots} image token positions but "
                f"{projected.shape[0]} image(s) x {projected.shape[1]} tokens = {expected} were given; "
                f"each '{self.image_token}' in a prompt stands for one image"
            )
        mask = slots.unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, projected.to(embeds.dtype).reshape(-1))
        return embeds, features

    # --- routing ----------------------------------------------------------------------------------
    def trigger_occurrences(self, input_ids: Tensor, task: str, *, start: Tensor | None = None,
                            end: Tensor | None = None, strict: bool = True) -> tuple[Tensor, Tensor]:
        """(batch_index (M,), positions (M, K)) of every complete run of ``task``'s trigger tokens,
        ordered by sample then position. ``start``/``end`` (B,) restrict the search window."""
        ids = self.trigger_ids[task]
        k = len(ids)
        b_idx, pos = (input_ids == ids[0]).nonzero(as_tuple=True)
        keep = torch.ones_like(b_idx, dtype=torch.bool)
        if start is not None:
            keep &= pos >= start[b_idx]
        if end is not None:
            keep &= pos + k <= end[b_idx]
        t = input_ids.shape[1]
        offsets = torch.arange(k, device=input_ids.device)
        positions = pos.unsqueeze(1) + offsets
        complete = (positions < t).all(dim=1)
        safe = positions.clamp(max=t - 1)
        match = (input_ids[b_idx.unsqueeze(1), safe] == torch.tensor(ids, device=input_ids.device)).all(dim=1)
        ok = complete & match
        if strict and bool((keep & ~ok).any()):
            raise ShapeError(f"task {task!r}: a trigger run is incomplete; expected the {k} tokens {self.decoders[task].tokens} in a row")
        keep &= ok
        return b_idx[keep], positions[keep]

    def decoder_input(self, task: str, hidden: Tensor, batch_index: Tensor, positions: Tensor, *,
                      features: ImageFeatures | None, pixels: Any, image_sizes: list[tuple[int, int]] | None,
                      batch_size: int, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                      logits: Tensor | None = None, logits_offset: int = 0) -> DecoderInput:
        gathered = hidden[batch_index.unsqueeze(1), positions]  # (M, K, H)
        prompts = self.out_projectors[task](gathered) if task in self.out_projectors else gathered
        inp = DecoderInput(prompts=prompts, batch_index=batch_index, batch_size=batch_size, image_features=features,
                           pixels=pixels, image_sizes=image_sizes)
        span = self.decoders[task].answer_length
        if span and input_ids is not None and logits is not None:
            inp.answer_ids, inp.answer_logits = _answer_span(input_ids, attention_mask, logits, batch_index,
                                                             positions[:, -1], span, offset=logits_offset)
        return inp

    # --- training ---------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> ModelOutput:
        embeds, features = self.embed_inputs(batch.input_ids, batch.pixel_values)
        out = self.llm(embeds, batch.attention_mask, labels=batch.labels)
        total = embeds.new_zeros((), dtype=torch.float32)
        if out.loss is not None:
            total = total + self.ce_loss_weight * out.loss
        decoder_losses: dict[str, Tensor] = {}
        decoder_outputs: dict[str, DecoderOutput] = {}
        for task, decoder in self.decoders.items():
            b_idx, pos = self.trigger_occurrences(batch.input_ids, task)
            targets = batch.targets.get(task, [])
            if len(targets) != len(b_idx):
                raise ShapeError(f"task {task!r}: {len(b_idx)} trigger occurrence(s) in the batch but {len(targets)} target(s)")
            if len(b_idx) == 0:
                continue
            inp = self.decoder_input(task, out.hidden_states, b_idx, pos, features=features,
                                     pixels=batch.decoder_pixels.get(task), image_sizes=batch.image_sizes,
                                     batch_size=batch.input_ids.shape[0], input_ids=batch.input_ids,
                                     attention_mask=batch.attention_mask, logits=out.logits)
            dec_out = decoder(inp)
            decoder_outputs[task] = dec_out
            weight = self.decoder_loss_weights.get(task, 1.0)
            for name, value in decoder.loss(dec_out, targets).items():
                decoder_losses[f"{task}/{name}"] = weight * value
                total = total + weight * value
            if task in self.dense_heads and batch.label_maps is not None:
                rows, inverse = torch.unique(dec_out.batch_index, return_inverse=True)
                feats = decoder.dense_features(dec_out)
                if feats is not None:  # one feature map per image: the first occurrence of each sample
                    first = torch.full((len(rows),), len(inverse), dtype=torch.long, device=inverse.device)
                    feats = feats[first.scatter_reduce(0, inverse, torch.arange(len(inverse), device=inverse.device), "amin")]
                value = self._dense_loss(task, feats, batch.label_maps[rows.to(batch.label_maps.device)])
                if value is not None:
                    decoder_losses[f"dense/{task}"] = value
                    total = total + value
        if "encoder" in self.dense_heads and batch.label_maps is not None and features is not None:
            rows = batch.first_image_rows
            keep = rows >= 0
            if bool(keep.any()):
                value = self._dense_loss("encoder", features.dense[rows[keep]] if features.dense is not None else None,
                                         batch.label_maps[keep])
                if value is not None:
                    decoder_losses["dense/encoder"] = value
                    total = total + value
        if self.touch_all_trainable and torch.is_grad_enabled():
            total = total + 0.0 * sum(p.sum() for name, p in self.named_parameters()
                                      if p.requires_grad and not name.startswith("llm."))
        return ModelOutput(loss=total, lm_loss=out.loss, decoder_losses=decoder_losses, logits=out.logits,
                           decoder_outputs=decoder_outputs)

    # --- inference --------------------------------------------------------------------------------
    @property
    def wants_hidden(self) -> bool:
        """Decoders read hidden states at trigger tokens: generation keeps those it computes."""
        return bool(self.decoders)

    @property
    def wants_logits(self) -> bool:
        """A decoder that reads the logits of the tokens after its trigger (e.g. action bins)."""
        return any(getattr(d, "answer_length", 0) for d in self.decoders.values())

    @torch.no_grad()
    def generate(self, batch: Batch, *, max_new_tokens: int | Sequence[int] = 64, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, max_task_tokens: int | Sequence[int] = 16,
                 answer_prefix: str | None = None, generator: torch.Generator | None = None) -> Generation:
        """Answer a left-padded batch of prompts; run every decoder whose trigger tokens appear in
        the answer (at most ``max_task_tokens`` occurrences per task and sample). ``answer_prefix``
        (template text, special tokens allowed, e.g. ``"<act>"``) starts every answer.

        ``max_new_tokens`` and ``max_task_tokens`` may be one value per row: each row stops at its own
        limit (or its end-of-answer token) and gets the answer it would get alone (greedy decoding is
        causal). The sampling settings and ``answer_prefix`` are shared by every row.

        Decoding runs in :class:`omniplug.infer.engine.ContinuousBatcher` (rows leave the batch as they
        end) when the LLM has a cached step (``LanguageModel.new_cache``), else through the LLM's own
        ``generate`` up to the largest limit."""
        prepared = self.prepare_generation(batch, max_new_tokens=max_new_tokens, max_task_tokens=max_task_tokens,
                                           answer_prefix=answer_prefix)
        if self.llm.new_cache() is not None:
            from omniplug.infer.engine import ContinuousBatcher

            batcher = ContinuousBatcher(self, slots=max(1, prepared.batch.input_ids.shape[0]), do_sample=do_sample,
                                        temperature=temperature, top_p=top_p, generator=generator)
            batcher.admit_prepared(prepared, tag=None)
            finished = []
            while batcher.busy:
                finished.extend(batcher.step())
            return finished[0][1]
        gen = self.llm.generate(prepared.embeds, prepared.batch.attention_mask,
                                max_new_tokens=max(prepared.token_limits) + int(self.wants_hidden),
                                do_sample=do_sample, temperature=temperature, top_p=top_p,
                                eos_token_id=self.tokenizer.eos_id, pad_token_id=self.tokenizer.pad_id,
                                **({"return_hidden": True} if self.wants_hidden else {}))
        return self.finish_generation(prepared, gen)

    def prepare_generation(self, batch: Batch, *, max_new_tokens: int | Sequence[int] = 64,
                           max_task_tokens: int | Sequence[int] = 16, answer_prefix: str | None = None) -> "Prepared":
        """Checks, the answer prefix appended to every row, and the prompt embeddings (images encoded once)."""
        if batch.input_ids.shape[1] and bool((batch.attention_mask[:, -1] == 0).any()):
            raise ShapeError("generate() needs left-padded prompts (collate with padding_side='left')")
        bsz = batch.input_ids.shape[0]
        token_limits = _per_row(max_new_tokens, bsz, "max_new_tokens")
        task_caps = _per_row(max_task_tokens, bsz, "max_task_tokens")
        prefix_ids = self.tokenizer.encode(answer_prefix, special=True) if answer_prefix else []
        if prefix_ids:  # left padding: every row ends at the last column, so the prefix is appended to all
            prefix = torch.tensor(prefix_ids, dtype=batch.input_ids.dtype, device=batch.input_ids.device)
            batch = replace(batch, input_ids=torch.cat([batch.input_ids, prefix.expand(batch.input_ids.shape[0], -1)], 1),
                            attention_mask=torch.cat([batch.attention_mask, batch.attention_mask.new_ones(
                                batch.attention_mask.shape[0], len(prefix_ids))], 1))
        embeds, features = self.embed_inputs(batch.input_ids, batch.pixel_values)
        return Prepared(batch=batch, embeds=embeds, features=features, prefix_ids=prefix_ids,
                        token_limits=token_limits, task_caps=task_caps)

    def finish_generation(self, prepared: "Prepared", gen: GenerateOutput) -> Generation:
        """Generated ids -> texts, and every decoder run on the hidden states at its trigger tokens."""
        batch, prefix_ids, token_limits, task_caps = prepared.batch, prepared.prefix_ids, prepared.token_limits, prepared.task_caps
        bsz = batch.input_ids.shape[0]
        new_ids = gen.sequences
        lengths = torch.minimum(gen.lengths, torch.tensor(token_limits, dtype=gen.lengths.dtype, device=gen.lengths.device))
        prompt_len = batch.input_ids.shape[1]
        texts, id_lists = [], []
        for i in range(bsz):
            ids = new_ids[i, : int(lengths[i])].tolist()
            if ids and ids[-1] == self.tokenizer.eos_id:
                ids = ids[:-1]
            ids = prefix_ids + ids
            id_lists.append(ids)
            texts.append(self.tokenizer.decode(ids, skip_special=False).strip())
        result = Generation(texts=texts, token_ids=id_lists)
        if not self.decoders or new_ids.shape[1] == 0:
            return result
        new_ids = new_ids[:, : int(lengths.max())]  # columns past every (cut) answer carry nothing
        full_ids = torch.cat([batch.input_ids, new_ids], dim=1)
        start = torch.full((bsz,), prompt_len - len(prefix_ids), device=full_ids.device)
        end = prompt_len + lengths
        found = {}
        imageless = torch.tensor([tuple(s) == (0, 0) for s in batch.image_sizes] if batch.image_sizes else [False] * bsz,
                                 device=full_ids.device)
        for task, decoder in self.decoders.items():
            b_idx, pos = self.trigger_occurrences(full_ids, task, start=start, end=end, strict=False)
            if getattr(decoder, "needs_image", False) and len(b_idx):  # e.g. <seg> in answer to "Draw ...": no mask
                keep = ~imageless[b_idx]
                b_idx, pos = b_idx[keep], pos[keep]
            found[task] = _cap_per_sample(b_idx, pos, task_caps)
        if not any(len(b_idx) for b_idx, _ in found.values()):  # no decoder to run: skip the hidden-state pass
            result.decoder_outputs = {task: [[] for _ in range(bsz)] for task in self.decoders}
            return result
        arange = torch.arange(new_ids.shape[1], device=new_ids.device)
        new_mask = (arange.unsqueeze(0) < lengths.unsqueeze(1)).to(batch.attention_mask.dtype)
        full_mask = torch.cat([batch.attention_mask, new_mask], dim=1)
        last = max(int(pos[:, -1].max()) for b_idx, pos in found.values() if len(b_idx))
        has_logits = gen.logits is not None or not self.wants_logits
        if gen.hidden_states is not None and has_logits and last < gen.hidden_states.shape[1]:
            hidden = gen.hidden_states
            # gen.logits[:, j] was computed at position prompt_len - 1 + j: the slot _answer_span reads for token j
            logits, logits_offset = gen.logits, prompt_len - 1
        else:  # an LLM that does not return them: one more pass over prompt + answers (teacher forcing)
            full_out = self.llm(torch.cat([prepared.embeds, self.llm.embed(new_ids)], dim=1), full_mask)
            hidden, logits, logits_offset = full_out.hidden_states, full_out.logits, 0
        for task, decoder in self.decoders.items():
            b_idx, pos = found[task]
            per_sample: list[list[Any]] = [[] for _ in range(bsz)]
            if len(b_idx):
                inp = self.decoder_input(task, hidden, b_idx, pos, features=prepared.features,
                                         pixels=batch.decoder_pixels.get(task), image_sizes=batch.image_sizes,
                                         batch_size=bsz, input_ids=full_ids, attention_mask=full_mask,
                                         logits=logits, logits_offset=logits_offset)
                inp.context = dict(result.decoder_outputs)
                items = decoder.postprocess(decoder(inp), inp)
                for b, item in zip(b_idx.tolist(), items):
                    per_sample[b].append(item)
            result.decoder_outputs[task] = per_sample
        return result


@dataclass
class Prepared:
    """A batch ready to decode (``OneModel.prepare_generation``): prompts with the answer prefix, their
    embeddings, the shared encoder's features and each row's limits."""

    batch: Batch
    embeds: Tensor
    features: ImageFeatures | None
    prefix_ids: list[int]
    token_limits: list[int]
    task_caps: list[int]


def _answer_span(input_ids: Tensor, attention_mask: Tensor | None, logits: Tensor, batch_index: Tensor,
                 last: Tensor, span: int, *, offset: int = 0) -> tuple[Tensor, Tensor]:
    """The ``span`` tokens after each trigger run (ending at ``last``) and the logits that predicted
    them: (M, S) ids (-1 past the text or on padding) and (M, S, vocab) logits. ``logits[:, k]`` are
    those computed at position ``offset + k`` (0: the whole sequence's)."""
    t = input_ids.shape[1]
    tok_pos = last.unsqueeze(1) + 1 + torch.arange(span, device=input_ids.device)  # (M, S)
    safe = tok_pos.clamp(max=t - 1)
    rows = batch_index.unsqueeze(1)
    valid = tok_pos < t
    if attention_mask is not None:
        valid &= attention_mask[rows, safe].bool()
    ids = torch.where(valid, input_ids[rows, safe], torch.full_like(safe, -1))
    return ids, logits[rows, (safe - 1 - offset).clamp(0, logits.shape[1] - 1)]


def _per_row(value: int | Sequence[int], rows: int, name: str) -> list[int]:
    """One int per row from an int or a sequence of ``rows`` ints, each >= 1."""
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * rows
    if len(values) != rows:
        raise ShapeError(f"{name}: {len(values)} value(s) for a batch of {rows} prompt(s)")
    if values and min(values) < 1:
        raise ValueError(f"{name} must be >= 1, got {min(values)}")
    return values


def _cap_per_sample(b_idx: Tensor, pos: Tensor, caps: list[int]) -> tuple[Tensor, Tensor]:
    """Keep the first ``caps[b]`` occurrences of each sample ``b`` (occurrences are in reading order)."""
    if len(b_idx) == 0:
        return b_idx, pos
    keep = torch.zeros_like(b_idx, dtype=torch.bool)
    counts: dict[int, int] = {}
    for i, b in enumerate(b_idx.tolist()):
        counts[b] = counts.get(b, 0) + 1
        keep[i] = counts[b] <= caps[b]
    return b_idx[keep], pos[keep]
