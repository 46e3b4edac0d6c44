"""Does the generation path use the prompt? Two measurements on world generation pairs:

1. spread — how much the ``<gen>`` hidden states and the projected conditioning vary across prompts:
   mean L2 distance of each sample's vector to the batch mean, against the mean norm. A projector that
   ignores its input has a conditioning spread near 0 while the hiddens still vary.
2. use — the UNet's x0 / noise error at fixed timesteps with each sample's own conditioning, with another
   sample's (rolled by one) and with the unconditional embedding. Equal errors: the UNet ignores the prompt.
3. content (``--content N``) — does the conditioning say what the picture holds? A ridge read-out from the
   ``<gen>`` hidden states, and from the projected conditioning, to the described colours and categories
   (multi-hot, from the caption), fitted on 3/4 of N prompts and scored on the rest: balanced accuracy per
   attribute, averaged (0.5: nothing; 1: everything). A varied conditioning can still say nothing usable.

    python bench/default/gen_conditioning.py [--config configs/default/omni_tiny.yaml] [--n 32] [overrides ...]

Prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from omniplug.build import build_dataset, build_model  # noqa: E402
from omniplug.config import load_config  # noqa: E402
from omniplug.data.collate import Collator  # noqa: E402

TIMESTEPS = (100, 300, 500, 700, 900)


def spread(x: torch.Tensor) -> dict[str, float]:
    flat = x.flatten(1)
    return {"spread": round((flat - flat.mean(0)).norm(dim=1).mean().item(), 4),
            "norm": round(flat.norm(dim=1).mean().item(), 4)}


def _conditioning(model, task: str, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``<gen>`` hidden states (M, K, H) of a collated batch and the projected conditioning (M, S, D)."""
    embeds, _ = model.embed_inputs(batch.input_ids, batch.pixel_values)
    out = model.llm(embeds, batch.attention_mask, labels=None)
    b_idx, pos = model.trigger_occurrences(batch.input_ids, task)
    hidden = out.hidden_states[b_idx.unsqueeze(1), pos]
    return hidden, model.out_projectors[task](hidden) if task in model.out_projectors else hidden


@torch.no_grad()
def measure(config_path: str, overrides: list[str], *, n: int, dataset: str, seed: int = 0) -> dict:
    config = load_config(config_path, overrides)
    model = build_model(config).eval()
    task = next((t for t, d in model.decoders.items() if d.output_kind == "images"), None)
    if task is None:
        raise SystemExit(f"{config_path}: no image decoder in one_model.decoders")
    decoder = model.decoders[task]
    data = build_dataset(config, dataset)
    batch = Collator(model, max_length=config.data.max_length)([data[i] for i in range(n)])
    hidden, cond = _conditioning(model, task, batch)
    result = {"config": config_path, "overrides": overrides, "samples": n,
              "hidden": spread(hidden), "conditioning": spread(cond), "use": {}}
    targets = batch.targets[task]
    clean = decoder.encode(torch.stack([t.pixels for t in targets]), sample=False)
    scheduler = decoder._train_scheduler
    kind = scheduler.config.prediction_type
    generator = torch.Generator().manual_seed(seed)
    for t in TIMESTEPS:
        steps = torch.full((len(clean),), t)
        noise = torch.randn(clean.shape, generator=generator)
        noisy = scheduler.add_noise(clean, noise, steps)
        goal = {"epsilon": noise, "sample": clean}.get(kind)
        if goal is None:
            goal = scheduler.get_velocity(clean, noise, steps)
        errors = {}
        for name, c in (("own", cond), ("other", cond.roll(1, 0)), ("uncond", decoder.uncond.expand_as(cond))):
            errors[name] = round(F.mse_loss(decoder.predict(noisy, steps, c), goal).item(), 5)
        errors["prompt_share"] = round(1 - errors["own"] / errors["other"], 4) if errors["other"] else 0.0
        result["use"][str(t)] = errors
    return result


def _labels(captions: list[str]) -> torch.Tensor:
    from omniplug.data.world import expected_from_caption
    from omniplug.data.world.vocab import COLOURS, COMPOSITES, SHAPES

    names = [*COLOURS, *SHAPES, *COMPOSITES]
    rows = []
    for caption in captions:
        present = {o.colour for o in expected_from_caption(caption)} | {o.category for o in expected_from_caption(caption)}
        rows.append([float(n in present) for n in names])
    return torch.tensor(rows)


def _readout(x: torch.Tensor, y: torch.Tensor, fit: int, ridge: float = 100.0) -> float:
    """Mean balanced accuracy of a ridge read-out x -> y, fitted on the first ``fit`` rows."""
    mean, std = x[:fit].mean(0), x[:fit].std(0) + 1e-6
    x = torch.cat([(x - mean) / std, torch.ones(len(x), 1)], dim=1).double()
    a, b = x[:fit], y[:fit].double()
    w = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype), a.T @ b)
    pred, gold = (x[fit:] @ w) > 0.5, y[fit:] > 0.5
    scores = []
    for j in range(y.shape[1]):
        pos, neg = gold[:, j], ~gold[:, j]
        if pos.any() and neg.any():
            scores.append(0.5 * ((pred[pos, j]).double().mean() + (~pred[neg, j]).double().mean()).item())
    return round(sum(scores) / len(scores), 4) if scores else 0.0


@torch.no_grad()
def content(config_path: str, overrides: list[str], *, n: int, dataset: str, batch_size: int = 32) -> dict:
    config = load_config(config_path, overrides)
    model = build_model(config).eval()
    task = next(t for t, d in model.decoders.items() if d.output_kind == "images")
    data = build_dataset(config, dataset)
    collate = Collator(model, max_length=config.data.max_length)
    hiddens, conds, captions = [], [], []
    for start in range(0, n, batch_size):
        batch = collate([data[i] for i in range(start, min(n, start + batch_size))])
        hidden, cond = _conditioning(model, task, batch)
        hiddens.append(hidden.flatten(1))
        conds.append(cond.flatten(1))
        captions += [t.caption for t in batch.targets[task]]
    y = _labels(captions)
    fit = 3 * len(captions) // 4
    return {"prompts": len(captions), "hidden": _readout(torch.cat(hiddens), y, fit),
            "conditioning": _readout(torch.cat(conds), y, fit)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default/omni_tiny.yaml")
    ap.add_argument("--dataset", default="generation", help="a generation dataset of the config")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--content", type=int, default=0, metavar="N",
                    help="also the content read-out on N prompts (e.g. 512)")
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    result = measure(args.config, args.overrides, n=args.n, dataset=args.dataset)
    if args.content:
        result["content"] = content(args.config, args.overrides, n=args.content, dataset=args.dataset)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
