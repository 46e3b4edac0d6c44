"""A residual vector quantizer for (chunks of) normalised continuous actions.

Level 0 quantizes the action vector to its nearest codeword; each next level quantizes what the
levels before it left over. An action is then ``levels`` code indices, each of which becomes one
new LLM token (Szot et al. 2024, "Grounding Multimodal LLMs in Actions": learned residual-VQ
tokens worked best for continuous control).

The codebooks are fitted on demonstration actions with k-means, level after level (Lloyd
iterations, deterministic given the seed), and are persistent buffers: they are saved with the
trained weights and restored with them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ResidualVQ(nn.Module):
    def __init__(self, *, dim: int, levels: int, codebook_size: int) -> None:
        super().__init__()
        if levels < 1 or codebook_size < 2:
            raise ValueError(f"residual VQ needs levels >= 1 and codebook_size >= 2, got {levels} and {codebook_size}")
        self.dim, self.levels, self.codebook_size = dim, levels, codebook_size
        self.register_buffer("codebooks", torch.zeros(levels, codebook_size, dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # --- fitting --------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, data: Tensor, *, iters: int = 20, seed: int = 0) -> list[float]:
        """Fit every level's codebook on ``data`` (N, dim); returns the mean squared reconstruction
        error after each Lloyd iteration of each level (it falls as fitting proceeds)."""
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise ValueError(f"RVQ fit expects (N, {self.dim}) data, got {list(data.shape)}")
        if len(data) == 0:
            raise ValueError("RVQ fit needs at least one action")
        gen = torch.Generator().manual_seed(seed)
        data = data.float().cpu()
        residual = data.clone()
        history: list[float] = []
        recon = torch.zeros_like(data)
        for level in range(self.levels):
            book = _init_codebook(residual, self.codebook_size, gen)
            for _ in range(iters):
                assign = torch.cdist(residual, book).argmin(dim=1)
                book = _update(residual, assign, book, gen)
                quant = book[torch.cdist(residual, book).argmin(dim=1)]
                history.append(float(((recon + quant - data) ** 2).sum(dim=1).mean()))
            quant = book[torch.cdist(residual, book).argmin(dim=1)]
            recon = recon + quant
            residual = residual - quant
            self.codebooks[level].copy_(book.to(self.codebooks))
        self.fitted.fill_(True)
        return history

    # --- use ------------------------------------------------------------------------------------
    def _check(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("the residual VQ codebooks are not fitted: give the decoder 'demos' (a directory of "
                               "demonstrations to fit on) or load trained weights that contain them")

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """(N, dim) -> (N, levels) code indices."""
        self._check()
        residual = x.to(self.codebooks)
        codes = []
        for level in range(self.levels):
            book = self.codebooks[level]
            idx = torch.cdist(residual, book).argmin(dim=1)
            codes.append(idx)
            residual = residual - book[idx]
        return torch.stack(codes, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """(N, levels) code indices -> (N, dim) reconstruction (the sum of the chosen codewords)."""
        self._check()
        out = self.codebooks.new_zeros(codes.shape[0], self.dim)
        for level in range(codes.shape[1]):
            out = out + self.codebooks[level][codes[:, level]]
        return out


def _init_codebook(x: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Random distinct data points (with small jitter when there are fewer points than codes)."""
    perm = torch.randperm(len(x), generator=gen)
    if len(x) >= size:
        return x[perm[:size]].clone()
    reps = x[perm[torch.arange(size) % len(x)]]
    return reps + 1e-3 * torch.randn(reps.shape, generator=gen)


def _update(x: Tensor, assign: Tensor, book: Tensor, gen: torch.Generator) -> Tensor:
    """One Lloyd step; an empty code moves to a random data point."""
    sums = torch.zeros_like(book).index_add_(0, assign, x)
    counts = torch.bincount(assign, minlength=len(book)).to(x.dtype)
    new = book.clone()
    used = counts > 0
    new[used] = sums[used] / counts[used].unsqueeze(1)
    empty = (~used).nonzero(as_tuple=True)[0]
    if len(empty):
        new[empty] = x[torch.randint(len(x), (len(empty),), generator=gen)]
    return new
