"""Continuous batching: the rows of a running batch decode together, one token per step; a row whose
answer has ended leaves at once and a waiting request takes its slot.

``ContinuousBatcher`` drives an ``OneModel`` whose LLM has a cached step (``LanguageModel.new_cache``
and ``forward_cached``). Requests join as *groups* (a collated batch, ``admit``): the group's images go
through the shared encoder together, its prompts are prefilled, and its rows join the running batch.
Each ``step`` feeds every running row its last token; a row stops at its end-of-answer token or its own
``max_new_tokens`` (one step later when that last token is a decoder's trigger, whose hidden state the
decoder reads). When
every row of a group has stopped, the group's decoders run (``OneModel.finish_generation``) and
``step`` returns its ``Generation``.

The running batch
    One KV cache holds every running row, aligned on columns: a joining group is left-padded to the
    running length (or the running rows to the group's), a leaving row is dropped, and columns that
    are padding for every remaining row are cut. Each row keeps its own positions (``position_ids``)
    and attention mask, so padding never changes a row's positions: greedy answers equal those of the
    row decoded alone (tested; float rounding of differently shaped kernels aside).

One image, many questions
    Rows of a group whose prompts begin with the same embeddings (the same image and the same text
    before the question: at least ``share_min`` positions and half of the prompt) are prefilled as
    one prefix, then each row's own rest on top of a copy of that cache; the other rows of the group
    are prefilled together in one call. Three questions about one image encode it once
    and run its image tokens through the LLM once.

Earlier requests' prefixes (``PrefixCache``)
    With a ``prefix_cache``, every admitted prompt's keys and values (and, when a row leaves, those
    of its prompt and answer) are kept, up to a byte budget, least recently used first out. A new
    row that begins with a kept prefix (at least ``share_min`` positions) starts from a copy of it
    and prefills only the rest: a conversation's next turn does not run the image tokens and the
    earlier turns through the LLM again, nor does a later question about an image already asked about.

Sampling is per group: ``admit`` may override the batcher's ``do_sample``, ``temperature``, nucleus
``top_p`` and ``answer_prefix``, so requests with different settings share one running batch. Sampled
rows draw from ``generator``; greedy rows take the argmax; no other logits processor runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from omniplug.types import Batch, GenerateOutput


@dataclass(eq=False)  # identity: groups and rows are removed from lists by who they are
class _Group:
    tag: Any
    prepared: Any  # omniplug.model.Prepared
    rows: list["_Row"] = field(default_factory=list)
    prompt_hidden: Tensor | None = None  # (n, T_prompt, H) in the group's left-padded layout
    admitted: float = 0.0


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(eq=False)
class _Row:
    group: _Group
    keep: int  # max_new_tokens
    sampling: Sampling = Sampling()
    tokens: list[int] = field(default_factory=list)
    hidden: list[Tensor] = field(default_factory=list)  # (H,) per fed-back generated token
    logits: list[Tensor] = field(default_factory=list)  # (V,) that chose each generated token
    prompt_embeds: Tensor | None = None  # (L, H) real prompt positions (for the prefix cache)
    prompt_hidden: Tensor | None = None
    ended: bool = False  # the answer is complete
    done: bool = False  # ... and nothing more is needed from the LLM


@dataclass(eq=False)
class _Prefix:
    embeds: Tensor  # (L, H) the positions' input embeddings: what a new prompt is matched against
    keys: list[Tensor]  # per layer (heads, L, dim)
    values: list[Tensor]
    hidden: Tensor | None  # (L, H) last-layer states (None when nobody reads them)

    @property
    def nbytes(self) -> int:
        tensors = [self.embeds, *self.keys, *self.values] + ([self.hidden] if self.hidden is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class PrefixCache:
    """Keys and values of earlier prompts (and answers), matched by their input embeddings; least recently
    used entries go first when ``max_mb`` is exceeded. Clear it when the model's weights change."""

    def __init__(self, *, max_mb: float = 64.0) -> None:
        if max_mb <= 0:
            raise ValueError(f"max_mb must be > 0, got {max_mb}")
        self.max_bytes = int(max_mb * 2**20)
        self.entries: list[_Prefix] = []  # least recently used first
        self.hits = 0
        self.reused_positions = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def clear(self) -> None:
        self.entries.clear()

    def match(self, seq: Tensor) -> tuple[_Prefix | None, int]:
        """The entry sharing the longest leading run with ``seq`` (L, H), and that run's length."""
        best, length = None, 0
        for entry in self.entries:
            span = min(len(entry.embeds), len(seq))
            common = int((entry.embeds[:span] == seq[:span]).all(-1).long().cumprod(0).sum()) if span else 0
            if common > length:
                best, length = entry, common
        return best, length

    def use(self, entry: _Prefix, length: int) -> None:
        self.entries.remove(entry)
        self.entries.append(entry)
        self.hits += 1
        self.reused_positions += length

    def put(self, entry: _Prefix) -> None:
        """Keep ``entry``; entries it extends (their whole length is its prefix) are dropped."""
        if entry.nbytes > self.max_bytes:
            return
        keep = []
        for old in self.entries:
            span = len(old.embeds)
            if span <= len(entry.embeds) and bool((old.embeds == entry.embeds[:span]).all()):
                continue
            keep.append(old)
        self.entries = keep + [entry]
        while self.nbytes > self.max_bytes:
            self.entries.pop(0)


class ContinuousBatcher:
    """``admit`` groups while ``free_slots`` allow, call ``step`` while ``busy``; see the module docstring."""

    def __init__(self, model, *, slots: int = 8, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float = 1.0, answer_prefix: str | None = None, generator: torch.Generator | None = None,
                 share_min: int = 16, admit_min: int | None = None, prefix_cache: PrefixCache | None = None) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if model.llm.new_cache() is None:
            raise ValueError(f"{type(model.llm).__name__} has no cached step (LanguageModel.new_cache): it cannot "
                             f"decode in a running batch; use OneModel.generate")
        self.model = model
        self.llm = model.llm
        self.slots = slots
        self.sampling = Sampling(bool(do_sample), float(temperature), float(top_p))
        self.answer_prefix = answer_prefix
        self.generator = generator
        self.share_min = share_min
        self.prefix_cache = prefix_cache
        self.admit_min = max(1, slots // 4) if admit_min is None else admit_min
        self.eos = model.tokenizer.eos_id
        self.pad = model.tokenizer.pad_id if model.tokenizer.pad_id is not None else 0
        self.want_hidden = model.wants_hidden
        self.want_logits = model.wants_logits
        self.trigger_tokens = {i for ids in model.trigger_ids.values() for i in ids}
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Tensor | None = None  # (B, T) 1 = a real position
        self.positions: Tensor | None = None  # (B,) each row's next position id
        self._waiting: list[_Group] = []  # groups with rows still running
        self.steps = 0
        self.prefill_positions = 0  # positions run through the LLM in prefills (prefix sharing lowers it)
        self.peak_rows = 0  # the most rows that decoded together

    @property
    def free_slots(self) -> int:
        return self.slots - len(self.rows)

    @property
    def busy(self) -> bool:
        return bool(self._waiting)

    def admits(self, waiting: int) -> bool:
        """Whether to admit now, with ``waiting`` requests queued: when the batch is empty, or when at least
        ``admit_min`` slots are free (fewer if fewer wait). Prefilling two or more rows at once costs less per
        row than one at a time, so a single freed slot waits for a second one while others decode."""
        free = self.free_slots
        return waiting > 0 and free > 0 and (not self.rows or free >= min(waiting, self.admit_min))

    def tags(self) -> list[Any]:
        """The tags of the groups admitted and not yet returned by ``step``."""
        return [group.tag for group in self._waiting]

    # --- joining ------------------------------------------------------------------------------------
    def admit(self, batch: Batch, *, max_new_tokens: int | list[int] = 64, max_task_tokens: int | list[int] = 16,
              tag: Any = None, answer_prefix: str | None = None, sampling: Sampling | None = None) -> None:
        """Prefill a collated (left-padded) batch and add its rows to the running batch. ``answer_prefix``
        and ``sampling`` default to the batcher's own."""
        prepared = self.model.prepare_generation(batch, max_new_tokens=max_new_tokens, max_task_tokens=max_task_tokens,
                                                 answer_prefix=self.answer_prefix if answer_prefix is None else answer_prefix)
        self.admit_prepared(prepared, tag=tag, sampling=sampling)

    def admit_prepared(self, prepared, *, tag: Any = None, sampling: Sampling | None = None) -> None:
        n = prepared.batch.input_ids.shape[0]
        if n > self.free_slots:
            raise ValueError(f"a group of {n} row(s) does not fit: {self.free_slots} of {self.slots} slot(s) free")
        group = _Group(tag=tag, prepared=prepared, admitted=time.perf_counter())
        embeds, mask = prepared.embeds, prepared.batch.attention_mask.long()
        lengths = mask.sum(1)
        t = embeds.shape[1]
        last_logits = embeds.new_empty(n, 0)
        hidden = embeds.new_zeros(n, t, embeds.shape[2])
        parts = []
        hits = self._hits(embeds, lengths)
        for row, (entry, reuse) in hits.items():
            logits_c, real_hidden, cache, mask_c = self._prefill_from(entry, reuse, embeds[row:row + 1],
                                                                      lengths[row:row + 1])
            parts.append(([row], logits_c, cache, mask_c))
            hidden[row, t - real_hidden[0].shape[0]:] = real_hidden[0]
        rest = [i for i in range(n) if i not in hits]
        for members, shared in self._clusters(embeds[rest], lengths[rest]) if rest else []:
            members = [rest[m] for m in members]
            logits_c, real_hidden, cache, mask_c = self._prefill(embeds[members], lengths[members], shared)
            parts.append((members, logits_c, cache, mask_c))
            for row, h in zip(members, real_hidden):
                hidden[row, t - h.shape[0]:] = h
        group.prompt_hidden = hidden
        order = [row for members, *_ in parts for row in members]
        last_logits = torch.cat([p[1] for p in parts])
        group.rows = [_Row(group=group, keep=prepared.token_limits[i], sampling=sampling or self.sampling)
                      for i in range(n)]
        new_rows = [group.rows[i] for i in order]
        for i, row in enumerate(group.rows):
            row.prompt_embeds = embeds[i, t - int(lengths[i]):]
            row.prompt_hidden = hidden[i, t - int(lengths[i]):] if self.want_hidden else None
        for members, _, cache, mask_c in parts:
            if self.prefix_cache is not None:
                for j, row in enumerate(members):
                    self._keep(group.rows[row], cache, mask_c, j, fed=0)
            self._join(cache, mask_c, lengths[members])
        self.rows.extend(new_rows)
        self.peak_rows = max(self.peak_rows, len(self.rows))
        for row, token, logits in zip(new_rows, self._choose(last_logits, new_rows).tolist(), last_logits):
            self._take(row, token, logits)
        self._waiting.append(group)
        self._drop_done()

    def _clusters(self, embeds: Tensor, lengths: Tensor) -> list[tuple[list[int], int]]:
        """Rows grouped by a shared leading run of equal positions, (rows, shared), when the run is at least
        ``share_min`` positions and half of the shorter row (an extra LLM call pays only then); rows that
        share nothing worth it are prefilled together as one cluster with ``shared == 0``."""
        t = embeds.shape[1]
        real = [embeds[i, t - int(lengths[i]):] for i in range(embeds.shape[0])]
        clusters: list[tuple[list[int], int]] = []
        for i, seq in enumerate(real):
            for c, (members, shared) in enumerate(clusters):
                lead = real[members[0]]
                span = min(len(lead), len(seq), shared)
                common = int((lead[:span] == seq[:span]).all(-1).long().cumprod(0).sum())
                if common >= max(self.share_min, min(len(lead), len(seq)) // 2):
                    clusters[c] = (members + [i], common)
                    break
            else:
                clusters.append(([i], len(seq)))
        alone = [members[0] for members, _ in clusters if len(members) == 1]
        shared = [(members, common) for members, common in clusters if len(members) > 1]
        return shared + ([(alone, 0)] if alone else [])

    def _hits(self, embeds: Tensor, lengths: Tensor) -> dict[int, tuple[_Prefix, int]]:
        """Rows that begin with a kept prefix of at least ``share_min`` positions: row -> (entry, positions to
        reuse); at least the row's last position is run again (its logits choose the first answer token)."""
        if self.prefix_cache is None:
            return {}
        t = embeds.shape[1]
        hits = {}
        for i in range(embeds.shape[0]):
            length = int(lengths[i])
            entry, common = self.prefix_cache.match(embeds[i, t - length:])
            reuse = min(common, length - 1)
            if entry is not None and reuse >= self.share_min and (entry.hidden is not None or not self.want_hidden):
                self.prefix_cache.use(entry, reuse)
                hits[i] = (entry, reuse)
        return hits

    def _prefill_from(self, entry: _Prefix, reuse: int, embeds: Tensor, lengths: Tensor):
        """Prefill one row on top of the first ``reuse`` positions of a kept prefix (as ``_prefill``)."""
        t, length = embeds.shape[1], int(lengths[0])
        cache = self.llm.new_cache()
        for layer, keys, values in zip(cache.layers, entry.keys, entry.values):
            keys, values = keys[None, :, :reuse].clone(), values[None, :, :reuse].clone()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        ones = torch.ones(1, length, dtype=torch.long, device=embeds.device)
        positions = torch.arange(reuse, length, device=embeds.device)[None]
        logits, hidden = self.llm.forward_cached(embeds[:, t - length + reuse:], ones, positions, cache)
        self.prefill_positions += length - reuse
        real = hidden[0]
        if entry.hidden is not None:
            real = torch.cat([entry.hidden[:reuse], real])
        return logits, [real], cache, ones

    def _keep(self, row: _Row, cache: Any, mask: Tensor, index: int, *, fed: int) -> None:
        """Put row ``index`` of ``cache`` (its real columns: prompt + ``fed`` answer tokens) in the prefix cache."""
        columns = mask[index].bool()
        embeds = row.prompt_embeds
        hidden = row.prompt_hidden
        if fed:
            tokens = torch.tensor(row.tokens[:fed], device=embeds.device)
            embeds = torch.cat([embeds, self.llm.embed(tokens[None])[0]])
            if hidden is not None:
                hidden = torch.cat([hidden, torch.stack(row.hidden[:fed])]) if len(row.hidden) >= fed else None
        if self.want_hidden and hidden is None:
            return
        keys = [layer.keys[index][:, columns].clone() for layer in cache.layers]
        values = [layer.values[index][:, columns].clone() for layer in cache.layers]
        if keys[0].shape[1] != len(embeds):
            return
        self.prefix_cache.put(_Prefix(embeds=embeds.detach(), keys=keys, values=values,
                                      hidden=None if hidden is None else hidden.detach()))

    def _prefill(self, embeds: Tensor, lengths: Tensor, shared: int) -> tuple[Tensor, list[Tensor], Any, Tensor]:
        """Prefill rows (left-padded), the first ``shared`` real positions once for all: returns each row's
        last logits (n, V), its hidden states at its real positions, the cache and its column mask."""
        n, t, _ = embeds.shape
        cache = self.llm.new_cache()
        if shared == 0:
            mask = (torch.arange(t, device=embeds.device).unsqueeze(0) >= (t - lengths).unsqueeze(1)).long()
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            logits, hidden = self.llm.forward_cached(embeds, mask, positions, cache)
            self.prefill_positions += int(lengths.sum())
            return logits, [hidden[i, t - int(lengths[i]):] for i in range(n)], cache, mask
        start = t - int(lengths[0])
        prefix = embeds[:1, start:start + shared]
        ones = torch.ones(1, shared, dtype=torch.long, device=embeds.device)
        logits_p, hidden_p = self.llm.forward_cached(prefix, ones, torch.arange(shared, device=embeds.device)[None], cache)
        self.prefill_positions += shared
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.repeat(n, 1, 1, 1), layer.values.repeat(n, 1, 1, 1)
        rest = lengths - shared
        width = int(rest.max())
        if width == 0:
            return logits_p.expand(n, -1).clone(), [hidden_p[0]] * n, cache, ones.repeat(n, 1)
        suffix = embeds.new_zeros(n, width, embeds.shape[2])
        for i in range(n):
            r = int(rest[i])
            if r:
                suffix[i, width - r:] = embeds[i, t - r:]
        mask_s = (torch.arange(width, device=embeds.device).unsqueeze(0) >= (width - rest).unsqueeze(1)).long()
        mask = torch.cat([ones.repeat(n, 1), mask_s], 1)
        positions = shared + (mask_s.cumsum(1) - 1).clamp(min=0)
        logits_s, hidden_s = self.llm.forward_cached(suffix, mask, positions, cache)
        self.prefill_positions += int(rest.sum())
        logits = torch.where((rest > 0).unsqueeze(1), logits_s, logits_p.expand(n, -1))
        hidden = [torch.cat([hidden_p[0], hidden_s[i, width - int(rest[i]):]]) for i in range(n)]
        return logits, hidden, cache, mask

    def _join(self, cache: Any, mask: Tensor, lengths: Tensor) -> None:
        """Append prefilled rows to the running batch, left-padding whichever side is shorter."""
        if self.cache is None:
            self.cache, self.mask, self.positions = cache, mask, lengths.clone()
            return
        t_run, t_new = self.mask.shape[1], mask.shape[1]
        width = max(t_run, t_new)
        for run, new in zip(self.cache.layers, cache.layers):
            run.keys = torch.cat([_left_pad(run.keys, width), _left_pad(new.keys, width)])
            run.values = torch.cat([_left_pad(run.values, width), _left_pad(new.values, width)])
        self.mask = torch.cat([_left_pad(self.mask, width, dim=1), _left_pad(mask, width, dim=1)])
        self.positions = torch.cat([self.positions, lengths])

    # --- decoding -----------------------------------------------------------------------------------
    def step(self) -> list[tuple[Any, Any]]:
        """One decode step of every running row; returns ``(tag, Generation)`` of each group that ended."""
        if self.rows:
            last = torch.tensor([row.tokens[-1] for row in self.rows], device=self.mask.device)
            embeds = self.llm.embed(last.unsqueeze(1))
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)
            logits, hidden = self.llm.forward_cached(embeds, self.mask, self.positions.unsqueeze(1), self.cache)
            self.positions = self.positions + 1
            self.steps += 1
            going = []
            for i, row in enumerate(self.rows):
                if self.want_hidden:
                    row.hidden.append(hidden[i, 0])
                if row.ended:
                    row.done = True
                else:
                    going.append(i)
            if going:
                chosen = self._choose(logits[going], [self.rows[i] for i in going]).tolist()
                for i, token in zip(going, chosen):
                    self._take(self.rows[i], token, logits[i])
            self._drop_done()
        finished = []
        for group in list(self._waiting):
            if all(row.done for row in group.rows):
                self._waiting.remove(group)
                finished.append((group.tag, self.model.finish_generation(group.prepared, self._output(group))))
        return finished

    def _choose(self, logits: Tensor, rows: list[_Row]) -> Tensor:
        """The next token of each row: the argmax, or a draw with the row's sampling settings."""
        chosen = logits.argmax(-1)
        for i, row in enumerate(rows):
            if row.sampling.do_sample:
                chosen[i] = self._draw(logits[i], row.sampling)
        return chosen

    def _draw(self, logits: Tensor, sampling: Sampling) -> Tensor:
        probs = torch.softmax(logits.float() / sampling.temperature, -1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p  # keep the smallest set reaching top_p
            sorted_probs = sorted_probs.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self.generator)[0]

    def _take(self, row: _Row, token: int, logits: Tensor) -> None:
        row.tokens.append(token)
        if self.want_logits:
            row.logits.append(logits)
        eos = self.eos is not None and token == self.eos
        row.ended = eos or len(row.tokens) >= row.keep
        # a decoder reads the hidden states of its trigger tokens: when the last kept token is one, one more step
        # feeds it back; any other last token is never read
        row.done = row.ended and (eos or not self.want_hidden or token not in self.trigger_tokens)

    def _drop_done(self) -> None:
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask, self.positions = [], None, None, None
            return
        if self.prefix_cache is not None:  # a conversation's next turn starts with this prompt and answer
            for i, row in enumerate(self.rows):
                if row.done:
                    self._keep(row, self.cache, self.mask, i, fed=int(self.mask[i].sum()) - len(row.prompt_embeds))
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        first = int(mask.any(0).long().argmax())  # columns before it are padding for every remaining row
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]
        self.mask, self.positions = mask[:, first:], self.positions[index]
        self.rows = [self.rows[i] for i in keep]

    def _output(self, group: _Group) -> GenerateOutput:
        """The group's rows as ``generate(return_hidden=True)`` returns them (padded to the longest)."""
        rows = group.rows
        width = max(len(r.tokens) for r in rows)
        device = group.prompt_hidden.device
        sequences = torch.full((len(rows), width), self.pad, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            sequences[i, : len(r.tokens)] = torch.tensor(r.tokens, dtype=torch.long, device=device)
        lengths = torch.tensor([len(r.tokens) for r in rows], dtype=torch.long, device=device)
        prompt = group.prompt_hidden
        hidden = prompt.new_zeros(len(rows), prompt.shape[1] + width, prompt.shape[2])
        hidden[:, : prompt.shape[1]] = prompt
        for i, r in enumerate(rows):
            if r.hidden:
                hidden[i, prompt.shape[1]: prompt.shape[1] + len(r.hidden)] = torch.stack(r.hidden)
        logits = None
        if self.want_logits:
            vocab = rows[0].logits[0].shape[-1]
            logits = prompt.new_zeros(len(rows), width, vocab)
            for i, r in enumerate(rows):
                logits[i, : len(r.logits)] = torch.stack(r.logits)
        return GenerateOutput(sequences=sequences, lengths=lengths, hidden_states=hidden if self.want_hidden else None,
                              logits=logits)


def _left_pad(x: Tensor, width: int, dim: int = 2) -> Tensor:
    short = width - x.shape[dim]
    if short == 0:
        return x
    shape = list(x.shape)
    shape[dim] = short
    return torch.cat([x.new_zeros(shape), x], dim)
