"""Example requests for the UI's gallery: for a model trained on the procedural world (the default
model), a few scenes of that world rendered to PNG at startup, each with a question it was trained on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Example:
    prompt: str
    image: str | None = None  # a PNG the server wrote; None for a request without an image


def world_examples(out_dir: str | Path, *, n: int = 4, seed: int = 2024, detection: bool = False) -> list[Example]:
    """``n`` scenes of the world's val split (``seed``), written as ``world_<i>.png`` into ``out_dir``:
    a referring-segmentation question per scene, a caption request, a drawing request and, with
    ``detection``, a request for every box of a shape the second scene holds."""
    from omniplug.data.world import WorldConfig, referrals, render_scene, sample_scene
    from omniplug.data.world.language import CAPTION_PROMPTS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = []
    for i in range(n):
        scene = sample_scene(config=WorldConfig(), seed=seed, split="val", index=i)
        path = out / f"world_{i}.png"
        Image.fromarray(render_scene(scene).image).save(path)
        refs = referrals(scene, np.random.default_rng(seed + i))
        if refs:  # the second refcoco question template reads naturally with "the ..." sentences
            prompt = f"What is {refs[0].sentences[0]} in this image? Please output segmentation mask."
        else:
            prompt = CAPTION_PROMPTS[0]
        examples.append(Example(prompt=prompt, image=str(path)))
    examples.append(Example(prompt=CAPTION_PROMPTS[0], image=examples[0].image))
    if detection:
        scene = sample_scene(config=WorldConfig(), seed=seed, split="val", index=min(1, n - 1))
        shape = next((o.category for o in scene.objects), "circle")
        examples.append(Example(prompt=f"Detect every {shape}.", image=examples[min(1, n - 1)].image))
    examples.append(Example(prompt="Draw a small red circle."))
    return examples


def output_kinds(config: str, overrides: list[str]) -> set[str]:
    """What the config's decoders return (``masks``, ``boxes``, ``images``, ...), read from their registered classes."""
    from omniplug.config import load_config
    from omniplug.registry import REGISTRIES, load_builtin_plugins

    load_builtin_plugins()
    cfg = load_config(config, overrides)
    return {REGISTRIES["decoder"].get(entry.type).output_kind for entry in cfg.decoder_entries().values()}


def trained_on_world(config: str, overrides: list[str]) -> bool:
    """Whether the config's datasets include the procedural world (its ``world`` dataset type)."""
    from omniplug.config import load_config

    cfg = load_config(config, overrides)
    return any(entry.type == "world" for entry in cfg.catalogues.get("dataset", {}).values())
