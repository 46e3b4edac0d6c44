"""Does the generation path use the prompt? Two measurements on world generation pairs:

1. spread — how much the ``<gen>`` hidden states and the projected conditioning vary across prompts:
   mean L2 distance of each sample's vector to the batch mean, against the mean norm. A projector that
   ignores its input has a conditioning spread near 0 while the hiddens still vary.
2. use — the UNet's x0 / noise error at fixed timesteps with each sample's own conditioning, with another
   sample's (rolled by one) and with the unconditional embedding. Equal errors: the UNet ignores the prompt.

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
    embeds, _ = model.embed_inputs(batch.input_ids, batch.pixel_values)
    out = model.llm(embeds, batch.attention_mask, labels=None)
    b_idx, pos = model.trigger_occurrences(batch.input_ids, task)
    hidden = out.hidden_states[b_idx.unsqueeze(1), pos]
    cond = model.out_projectors[task](hidden) if task in model.out_projectors else hidden
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default/omni_tiny.yaml")
    ap.add_argument("--dataset", default="generation", help="a generation dataset of the config")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    result = measure(args.config, args.overrides, n=args.n, dataset=args.dataset)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
