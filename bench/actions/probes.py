"""Probes outside omniplug on the BabyAI GoToLocal demos: is the task learnable from these frames, and
which inductive bias learns it? (bench/actions/README.md)

    python bench/actions/probes.py film [--no-mission] [--data data/babyai/gotolocal_4k]
    python bench/actions/probes.py transformer [--text-first] [--data ...]

``film``: BabyAI's own agent design, a per-cell convolution whose channels the mission modulates (FiLM),
a 3x3 convolution and an MLP over the 7x7 grid; trained 3,000 steps x 64, then 100 closed-loop episodes
(seeds 100000+). ``transformer``: one token per grid cell + the mission's colour and type + a query token,
a causal 4-layer transformer (d 128); 3,000 steps x 32. Both report held-out step accuracy every 500 steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

COLOURS = ["red", "green", "blue", "purple", "yellow", "grey"]
KINDS = ["ball", "box", "key"]  # minigrid object ids 6, 7, 5
CELL = 8  # pixels per grid cell in the 56x56 egocentric view


def mission_ids(mission: str) -> tuple[int, int]:
    *_, colour, kind = mission.split()
    return COLOURS.index(colour), KINDS.index(kind)


def where_class(grid: np.ndarray, mission: tuple[int, int]) -> int:
    """The nearest mission object in the egocentric (x, y) grid as one of 50 classes: 7 x 7 cells + not in view."""
    colour, kind = mission
    xs, ys = np.nonzero((grid[..., 0] == [6, 7, 5][kind]) & (grid[..., 1] == colour))
    if len(xs) == 0:
        return 49
    best = int(np.argmin(np.abs(6 - ys) + np.abs(xs - 3)))
    return int(ys[best]) * 7 + int(xs[best])


def load(data: Path, val_from: int, grids: bool = False, episodes_max: int = 4000):
    frames, missions, actions, episodes, wheres, cells = [], [], [], [], [], []
    for i, line in enumerate((data / "episodes.jsonl").read_text().splitlines()[:episodes_max]):
        rec = json.loads(line)
        with np.load(data / rec["file"], allow_pickle=False) as z:
            for t, a in enumerate(z["actions"]):
                frames.append(z["grids"][t].transpose(1, 0, 2) if grids else z["frames"][t])
                missions.append(mission_ids(rec["instruction"]))
                if "grids" in z.files:
                    wheres.append(where_class(z["grids"][t], missions[-1]))
                    cells.append(z["grids"][t].transpose(1, 0, 2))
                actions.append(int(a))
                episodes.append(i)
    x = torch.tensor(np.stack(frames)).permute(0, 3, 1, 2)
    x = x.long() if grids else x.float() / 255
    val = torch.tensor(episodes) >= val_from
    g = torch.tensor(np.stack(cells)).permute(0, 3, 1, 2).long() if cells else None
    return x, torch.tensor(missions), torch.tensor(actions), val, torch.tensor(wheres), g


class FiLMPolicy(nn.Module):
    def __init__(self, d: int = 64, use_mission: bool = True) -> None:
        super().__init__()
        self.use_mission = use_mission
        self.cells = nn.Conv2d(3, d, CELL, CELL)
        self.pos = nn.Parameter(torch.zeros(1, d, 7, 7))
        self.colour, self.kind = nn.Embedding(len(COLOURS), d), nn.Embedding(len(KINDS), d)
        self.film = nn.Linear(d, 2 * d)
        self.conv = nn.Sequential(nn.ReLU(), nn.Conv2d(d, d, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(d * 49, 128), nn.ReLU(), nn.Linear(128, 7))

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        h = self.cells(x) + self.pos
        e = self.colour(m[:, 0]) + self.kind(m[:, 1])
        gain, bias = self.film(e * self.use_mission).chunk(2, -1)
        return self.head(self.conv(h * gain[..., None, None] + bias[..., None, None]))


class GridCells(nn.Module):
    """Minigrid's symbolic cell (object, colour, state) -> one embedding per cell, laid out like the patches."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.obj, self.col, self.state = nn.Embedding(11, d), nn.Embedding(6, d), nn.Embedding(3, d)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return (self.obj(g[:, 0]) + self.col(g[:, 1]) + self.state(g[:, 2])).permute(0, 3, 1, 2)


class ParsedCells(nn.Module):
    """RGB -> per-cell (object, colour, state) class probabilities (a parser trained on the stored grids) ->
    the probability-weighted sum of one learned embedding per class: the symbolic grid, read from pixels."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.parser = nn.Sequential(nn.Conv2d(3, 2 * d, CELL, CELL), nn.GELU(), nn.Conv2d(2 * d, d, 1), nn.GELU())
        self.heads = nn.ModuleList([nn.Conv2d(d, n, 1) for n in (11, 6, 3)])
        self.tables = nn.ModuleList([nn.Embedding(n, d) for n in (11, 6, 3)])

    def logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.parser(x)
        return [head(h) for head in self.heads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(torch.einsum("bnhw,nd->bdhw", lo.softmax(1), t.weight) for lo, t in zip(self.logits(x), self.tables))


def cell_encoder(kind: str, d: int) -> nn.Module:
    if kind == "parsed":
        return ParsedCells(d)
    if kind == "grid":
        return GridCells(d)
    if kind == "mlp":  # a nonlinear per-cell encoder: patch -> hidden -> d
        return nn.Sequential(nn.Conv2d(3, 2 * d, CELL, CELL), nn.GELU(), nn.Conv2d(2 * d, d, 1))
    return nn.Conv2d(3, d, CELL, CELL)


class TransformerPolicy(nn.Module):
    def __init__(self, d: int = 128, text_first: bool = False, cells: str = "linear") -> None:
        super().__init__()
        self.text_first = text_first
        self.cells = cell_encoder(cells, d)
        self.pos = nn.Parameter(torch.randn(1, 49, d) * 0.02)
        self.colour, self.kind = nn.Embedding(len(COLOURS), d), nn.Embedding(len(KINDS), d)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(1, 3, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 7)
        self.where_emb, self.where_head = nn.Embedding(50, d), nn.Linear(d, 50)
        self.cot_pos = nn.Parameter(torch.randn(1, 1, d) * 0.02)

    def forward(self, x: torch.Tensor, m: torch.Tensor, where: torch.Tensor | None = None):
        """Action logits; with ``where`` (chain of thought, teacher-forced) also the where logits at the query
        token, the where answer then appended as a token before the action is read."""
        image = self.cells(x).flatten(2).transpose(1, 2) + self.pos
        words = torch.stack([self.colour(m[:, 0]), self.kind(m[:, 1])], 1)
        text = torch.cat([words, self.query.expand(len(x), -1, -1)], 1) + self.text_pos
        seq = torch.cat([text[:, :2], image, text[:, 2:]], 1) if self.text_first else torch.cat([image, text], 1)
        if where is not None:
            seq = torch.cat([seq, self.where_emb(where)[:, None] + self.cot_pos], 1)
        mask = nn.Transformer.generate_square_subsequent_mask(seq.shape[1])
        h = self.norm(self.blocks(seq, mask=mask, is_causal=True))
        if where is None:
            return self.head(h[:, -1])
        return self.head(h[:, -1]), self.where_head(h[:, -2])

    def act_cot(self, x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy chain of thought: predict where, feed it back, read the action."""
        _, where_logits = self(x, m, torch.zeros(len(x), dtype=torch.long))
        where = where_logits.argmax(-1)
        return self(x, m, where)[0], where


def pretrain_cells(cells: nn.Module, x: torch.Tensor, g: torch.Tensor, steps: int, val) -> None:
    if isinstance(cells, ParsedCells):
        heads, encode = nn.ModuleList(), None
    else:
        d = cells(x[:1]).shape[1]
        heads = nn.ModuleList([nn.Conv2d(d, n, 1) for n in (11, 6, 3)])
        encode = cells
    opt = torch.optim.AdamW([*cells.parameters(), *heads.parameters()], 1e-3, weight_decay=0.01)

    def loss_acc(xb, gb):
        logits = cells.logits(xb) if encode is None else [head(encode(xb)) for head in heads]
        loss = sum(nn.functional.cross_entropy(lo, gb[:, i]) for i, lo in enumerate(logits))
        acc = torch.stack([lo.argmax(1) == gb[:, i] for i, lo in enumerate(logits)]).all(0).float().mean()
        return loss, acc

    for step in range(1, steps + 1):
        idx = torch.randint(len(x), (64,))
        loss, _ = loss_acc(x[idx], g[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        print(f"cell pretraining: {steps} steps, held-out cell accuracy {loss_acc(*val)[1].item():.4f}", flush=True)


def closed_loop(policy: nn.Module, episodes: int = 100) -> float:
    from omniplug.envs import make_env

    env, successes = make_env("babyai-gotolocal", view="agent"), 0
    for e in range(episodes):
        obs = env.reset(100_000 + e)
        m = torch.tensor([mission_ids(obs.instruction)])
        for _ in range(env.max_steps):
            with torch.no_grad():
                a = policy(torch.tensor(obs.image).permute(2, 0, 1)[None].float() / 255, m).argmax(-1).item()
            step = env.step(a)
            obs = step.observation
            if step.done:
                successes += step.success
                break
    return successes / episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=["film", "transformer"])
    parser.add_argument("--data", type=Path, default=Path("data/babyai/gotolocal_4k"))
    parser.add_argument("--val-from", type=int, default=3900, help="episodes from this index on are held out")
    parser.add_argument("--no-mission", action="store_true", help="film: zero the mission (an image-only policy)")
    parser.add_argument("--text-first", action="store_true", help="transformer: mission tokens before the image")
    parser.add_argument("--cells", choices=["linear", "mlp", "grid", "parsed"], default="linear",
                        help="transformer: per-cell encoder (linear patch, nonlinear patch, or the symbolic grid)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pretrain-cells", type=int, default=0, metavar="STEPS",
                        help="transformer: first train the cell encoder to name each cell's object, colour and "
                             "state (dense labels from the stored grids), then the policy")
    parser.add_argument("--freeze-cells", action="store_true", help="keep the pretrained cell encoder fixed")
    parser.add_argument("--cot", action="store_true",
                        help="transformer: say where the mission object is first (50 classes), then act")
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, m, a, val, w, g = load(args.data, args.val_from, grids=args.cells == "grid")
    majority = (a[val] == a[~val].mode().values).float().mean().item()
    print(f"{len(x)} steps, majority-action accuracy {majority:.3f}", flush=True)
    policy = FiLMPolicy(use_mission=not args.no_mission) if args.probe == "film" else TransformerPolicy(text_first=args.text_first, cells=args.cells)
    batch = 64 if args.probe == "film" else 32
    if args.pretrain_cells:
        pretrain_cells(policy.cells, x[~val], g[~val], args.pretrain_cells, (x[val][:2000], g[val][:2000]))
    if args.freeze_cells and args.cells == "parsed":
        for module in (policy.cells.parser, policy.cells.heads):
            module.requires_grad_(False)
    elif args.freeze_cells:
        policy.cells.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], args.lr, weight_decay=0.01)
    xt, mt, at = x[~val], m[~val], a[~val]
    wt = w[~val] if args.cot else None
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(xt), (batch,))
        if args.cot:
            act_logits, where_logits = policy(xt[idx], mt[idx], wt[idx])
            loss = nn.functional.cross_entropy(act_logits, at[idx]) + nn.functional.cross_entropy(where_logits, wt[idx])
        else:
            loss = nn.functional.cross_entropy(policy(xt[idx], mt[idx]), at[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            extra = ""
            with torch.no_grad():
                if args.cot:
                    logits, where = policy.act_cot(x[val], m[val])
                    oracle = policy(x[val], m[val], w[val])[0].argmax(-1)
                    extra = (f", where accuracy {(where == w[val]).float().mean().item():.3f}, step accuracy with "
                             f"the true where {(oracle == a[val]).float().mean().item():.3f}")
                else:
                    logits = policy(x[val], m[val])
                acc = (logits.argmax(-1) == a[val]).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}, held-out step accuracy {acc:.3f}{extra}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    if args.probe == "film" and not args.no_mission:
        print(f"closed-loop success (100 episodes): {closed_loop(policy):.2f}")


if __name__ == "__main__":
    main()
