"""Dataset mixing (``data.train: {entry: ratio}``): one seeded, endless stream of draws.

Draw number ``p`` (0, 1, 2, ...) is a pure function of ``(seed, p)``:

1. the dataset is chosen with probability ``ratio / sum(ratios)`` (LISA trains sem_seg :
   refer_seg : vqa : reason_seg at 9:3:3:1);
2. the item is the next one of a seeded permutation of that dataset (a new permutation each
   pass), so every item is seen once per pass over its dataset.

A curriculum (``data.schedule``) gives earlier draw positions other ratios: ``phases`` is a list of
``(end_position, ratios)``; draws before the first ``end_position`` use the first ratios, and so on,
and ``ratios`` apply after the last phase. The choice stays a pure function of ``(seed, position)``.

Because the stream depends only on the seed and the position, the trainer's data state is one
integer, ``position`` (draws consumed); a resumed run continues the stream exactly, whatever the
number of processes. Ranks share the stream: global micro-batch ``k`` is the ``world * batch``
draws starting at ``k * world * batch``, and rank ``r`` takes the ``r``-th ``batch`` of them, so
ranks see different data and the union is the same stream a single process would read.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Dataset, Sampler

_BLOCK = 1 << 14  # dataset choices are generated in blocks of this many draws


class MixtureStream:
    def __init__(self, *, sizes: list[int], ratios: list[float], seed: int,
                 phases: list[tuple[int, list[float]]] = ()) -> None:
        if not sizes or len(sizes) != len(ratios):
            raise ValueError("MixtureStream needs one ratio per dataset and at least one dataset")
        for _, phase_ratios in phases:
            if len(phase_ratios) != len(sizes):
                raise ValueError("every curriculum phase needs one ratio per dataset")
        ends = [end for end, _ in phases]
        if any(b <= a for a, b in zip([0, *ends], ends)):
            raise ValueError(f"curriculum phase ends must increase from > 0; got {ends}")
        if any(n < 1 for n in sizes):
            raise ValueError(f"every training dataset needs at least one item; sizes: {sizes}")
        self.sizes = list(sizes)
        self.seed = int(seed)
        # (end position, cumulative distribution) per phase; the last one never ends
        self._cdfs = [(end, _cdf(r)) for end, r in phases] + [(None, _cdf(ratios))]
        self._blocks: dict[int, np.ndarray] = {}
        self._perms: dict[int, tuple[int, np.ndarray]] = {}

    def choices(self, block: int) -> np.ndarray:
        """Dataset index of each draw in ``[block * _BLOCK, (block + 1) * _BLOCK)``."""
        if block not in self._blocks:
            if len(self._blocks) > 4:
                self._blocks.clear()
            uniform = np.random.default_rng([self.seed, 0, block]).random(_BLOCK)
            positions = block * _BLOCK + np.arange(_BLOCK)
            out = np.empty(_BLOCK, dtype=np.int32)
            begin = 0
            for end, cdf in self._cdfs:  # each draw's dataset: inverse CDF of its phase's mixture
                sel = positions >= begin if end is None else (positions >= begin) & (positions < end)
                out[sel] = cdf.searchsorted(uniform[sel], side="right")
                begin = end if end is not None else begin
            self._blocks[block] = out
        return self._blocks[block]

    def counts_before(self, position: int) -> np.ndarray:
        """How many of the draws ``[0, position)`` went to each dataset."""
        counts = np.zeros(len(self.sizes), dtype=np.int64)
        full, rest = divmod(position, _BLOCK)
        for b in range(full):
            counts += np.bincount(self.choices(b), minlength=len(self.sizes))
        if rest:
            counts += np.bincount(self.choices(full)[:rest], minlength=len(self.sizes))
        return counts

    def item(self, dataset: int, count: int) -> int:
        """The item of ``dataset`` for its ``count``-th draw (0-based)."""
        n = self.sizes[dataset]
        epoch, offset = divmod(count, n)
        cached = self._perms.get(dataset)
        if cached is None or cached[0] != epoch:
            perm = np.random.default_rng([self.seed, 1, dataset, epoch]).permutation(n)
            cached = (epoch, perm)
            self._perms[dataset] = cached
        return int(cached[1][offset])

    def iterate(self, start: int) -> Iterator[tuple[int, int]]:
        """Endless ``(dataset, item)`` draws from position ``start`` on."""
        counts = self.counts_before(start)
        position = start
        while True:
            block, offset = divmod(position, _BLOCK)
            d = int(self.choices(block)[offset])
            yield d, self.item(d, int(counts[d]))
            counts[d] += 1
            position += 1


def _cdf(ratios: list[float]) -> np.ndarray:
    if any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"data.train ratios must be >= 0 with a positive sum; got {ratios}")
    cdf = np.cumsum(np.asarray(ratios, dtype=np.float64))
    return cdf / cdf[-1]


class RankBatches(Sampler):
    """Batch sampler for one rank: lists of ``(dataset, item)`` keys, starting at draw ``start``.

    ``group_window`` > 0 groups by length (LLaVA's ``group_by_modality_length``, made resumable): the draws of
    each window of ``group_window`` global batches are sorted by their dataset's typical token length
    (``lengths``, one per dataset), cut into global batches, and those batches come in a seeded order. A batch
    then pads its sequences to similar lengths and mostly holds one kind of task. Which draws a window holds,
    and so the data of a whole run, is unchanged; a window is a pure function of ``(seed, window)``, so a run
    resumed at any batch boundary continues exactly."""

    def __init__(self, stream: MixtureStream, *, start: int, batch_size: int, rank: int, world_size: int,
                 group_window: int = 0, lengths: list[float] | None = None) -> None:
        if group_window < 0:
            raise ValueError(f"group_window must be >= 0 (0 = no length grouping), got {group_window}")
        if group_window and (lengths is None or len(lengths) != len(stream.sizes)):
            raise ValueError(f"length grouping needs one typical length per dataset ({len(stream.sizes)}), "
                             f"got {None if lengths is None else len(lengths)}")
        self.stream, self.start, self.batch_size, self.rank, self.world_size = stream, start, batch_size, rank, world_size
        self.group_window, self.lengths = group_window, lengths

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        global_batches = self._grouped() if self.group_window else self._in_order()
        for group in global_batches:
            yield group[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def _in_order(self) -> Iterator[list[tuple[int, int]]]:
        draws = self.stream.iterate(self.start)
        while True:
            yield [next(draws) for _ in range(self.batch_size * self.world_size)]

    def _grouped(self) -> Iterator[list[tuple[int, int]]]:
        per = self.batch_size * self.world_size
        span = per * self.group_window
        if self.start % per:
            raise ValueError(f"a length-grouped stream resumes at a batch boundary; draw {self.start} is not a "
                             f"multiple of {per} (batch_size x world_size)")
        window, skip = divmod(self.start, span)
        draws = self.stream.iterate(window * span)
        skip //= per
        while True:
            keys = [next(draws) for _ in range(span)]
            order = sorted(range(span), key=lambda i: (self.lengths[keys[i][0]], i))
            batches = [[keys[i] for i in order[b * per:(b + 1) * per]] for b in range(self.group_window)]
            for b in np.random.default_rng([self.stream.seed, 2, window]).permutation(self.group_window)[skip:]:
                yield batches[b]
            window, skip = window + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs this for len(loader)
        raise TypeError("RankBatches is endless")


class MixedDataset(Dataset):
    """Indexes several datasets with ``(dataset, item)`` keys."""

    def __init__(self, datasets: list[Dataset]) -> None:
        self.datasets = datasets

    def __getitem__(self, key: tuple[int, int]):
        d, i = key
        return self.datasets[d][i]

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)  # type: ignore[arg-type]
