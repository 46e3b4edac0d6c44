"""Probes outside omniplug on the BabyAI GoToLocal demos: is the task learnable from these frames, and
which inductive bias learns it? (bench/actions/README.md, third session)

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
KINDS = ["ball", "box", "key"]
CELL = 8  # pixels per grid cell in the 56x56 egocentric view


def mission_ids(mission: str) -> tuple[int, int]:
    *_, colour, kind = mission.split()
    return COLOURS.index(colour), KINDS.index(kind)


def load(data: Path, val_from: int):
    frames, missions, actions, episodes = [], [], [], []
    for i, line in enumerate((data / "episodes.jsonl").read_text().splitlines()):
        rec = json.loads(line)
        with np.load(data / rec["file"], allow_pickle=False) as z:
            for t, a in enumerate(z["actions"]):
                frames.append(z["frames"][t])
                missions.append(mission_ids(rec["instruction"]))
                actions.append(int(a))
                episodes.append(i)
    x = torch.tensor(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    val = torch.tensor(episodes) >= val_from
    return x, torch.tensor(missions), torch.tensor(actions), val


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


class TransformerPolicy(nn.Module):
    def __init__(self, d: int = 128, text_first: bool = False) -> None:
        super().__init__()
        self.text_first = text_first
        self.cells = nn.Conv2d(3, d, CELL, CELL)
        self.pos = nn.Parameter(torch.randn(1, 49, d) * 0.02)
        self.colour, self.kind = nn.Embedding(len(COLOURS), d), nn.Embedding(len(KINDS), d)
        self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.text_pos = nn.Parameter(torch.randn(1, 3, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 7)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        image = self.cells(x).flatten(2).transpose(1, 2) + self.pos
        words = torch.stack([self.colour(m[:, 0]), self.kind(m[:, 1])], 1)
        text = torch.cat([words, self.query.expand(len(x), -1, -1)], 1) + self.text_pos
        seq = torch.cat([text[:, :2], image, text[:, 2:]], 1) if self.text_first else torch.cat([image, text], 1)
        mask = nn.Transformer.generate_square_subsequent_mask(seq.shape[1])
        return self.head(self.norm(self.blocks(seq, mask=mask, is_causal=True)[:, -1]))


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
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, m, a, val = load(args.data, args.val_from)
    majority = (a[val] == a[~val].mode().values).float().mean().item()
    print(f"{len(x)} steps, majority-action accuracy {majority:.3f}", flush=True)
    policy = FiLMPolicy(use_mission=not args.no_mission) if args.probe == "film" else TransformerPolicy(text_first=args.text_first)
    batch = 64 if args.probe == "film" else 32
    opt = torch.optim.AdamW(policy.parameters(), 1e-3, weight_decay=0.01)
    xt, mt, at = x[~val], m[~val], a[~val]
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(len(xt), (batch,))
        loss = nn.functional.cross_entropy(policy(xt[idx], mt[idx]), at[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            with torch.no_grad():
                acc = (policy(x[val], m[val]).argmax(-1) == a[val]).float().mean().item()
            print(f"step {step}: loss {loss.item():.3f}, held-out step accuracy {acc:.3f}, "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    if args.probe == "film" and not args.no_mission:
        print(f"closed-loop success (100 episodes): {closed_loop(policy):.2f}")


if __name__ == "__main__":
    main()
