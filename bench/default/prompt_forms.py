"""Does the model draw for every way people ask? Generation scored per form of drawing request.

The eval table asks in one form ("Draw {caption}.", the world's full caption with its background). People
write shorter requests ("Draw a small red circle.", the demo's own example), and a model can answer
those with nothing at all. For the first ``--n`` generation records of a world split this measures,
per request form, the share answered with a picture and the analyser's object / colour F1
(``omniplug.eval.world.eval_generation``); then it asks the fixed requests below and records each answer.

    python bench/default/prompt_forms.py [--config configs/default/omni_tiny.yaml] [--data data/world/val]
        [--n 48] [--out FILE] [overrides ...]

Forms: ``full/*`` the world's caption ("a small red circle on grass under the sky"), ``brief/*`` its
objects alone ("a small red circle"), each in the three phrasings every recipe trains; ``brief/paint`` a
verb v13 never trained (v14 does), ``brief/sketch`` one no recipe trains. Prints one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from omniplug.build import build_model  # noqa: E402
from omniplug.config import load_config  # noqa: E402
from omniplug.data.conversation import Turn  # noqa: E402
from omniplug.data.sample import Sample  # noqa: E402
from omniplug.data.world.language import caption  # noqa: E402
from omniplug.data.world.scene import Scene  # noqa: E402
from omniplug.eval.world import _answer, _gen_task, eval_generation  # noqa: E402

PHRASINGS = {"draw": "Draw {}.", "generate": "Generate an image of {}.", "picture": "Make a picture showing {}."}
REQUESTS = ("Draw a small red circle.", "Draw a red star.", "Draw a house.", "Draw a tree.",
            "Generate an image of a large blue square.", "Make a picture showing a car and a small green triangle.",
            "Paint a small yellow hexagon.")


def brief(rec: dict) -> str:
    return caption(Scene.from_json(rec["scene"]), bare=True, stuff=False)


def forms() -> dict[str, object]:
    out = {}
    for kind, text in (("full", lambda rec: rec["caption"]), ("brief", brief)):
        for name, template in PHRASINGS.items():
            out[f"{kind}/{name}"] = (lambda t, f: lambda rec: t.format(f(rec)))(template, text)
    out["brief/paint"] = lambda rec: f"Paint {brief(rec)}."
    out["brief/sketch"] = lambda rec: f"Sketch {brief(rec)}."
    return out


@torch.no_grad()
def measure(config_path: str, overrides: list[str], *, data: str, n: int, batch_size: int = 16) -> dict:
    config = load_config(config_path, overrides)
    model = build_model(config).eval()
    task = _gen_task(model)
    if task is None:
        raise SystemExit(f"{config_path}: no image decoder in one_model.decoders")
    report: dict = {"config": config_path, "overrides": overrides, "data": data, "n": n, "forms": {}}
    for name, prompt in forms().items():
        torch.manual_seed(0)
        figures = eval_generation(model, Path(data), n=n, batch_size=batch_size, prompt=prompt)
        report["forms"][name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}
        print(name, report["forms"][name], flush=True)
    torch.manual_seed(0)
    out = _answer(model, [Sample(turns=[Turn("user", r)]) for r in REQUESTS], max_new_tokens=16)
    images = out.decoder_outputs.get(task, [[] for _ in REQUESTS])
    report["requests"] = [{"prompt": r, "answer": t, "pictures": len(p)} for r, t, p in zip(REQUESTS, out.texts, images)]
    report["requests_answered"] = sum(bool(p) for p in images) / len(REQUESTS)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default/omni_tiny.yaml")
    parser.add_argument("--data", default="data/world/val", help="a split written by `omniplug world generate`")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    report = measure(args.config, overrides, data=args.data, n=args.n, batch_size=args.batch_size)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
