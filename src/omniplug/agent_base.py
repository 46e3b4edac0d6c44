"""The architecture of the shipped agent configs (``configs/babyai/``), written as config-only
checkpoint folders like :mod:`omniplug.default_base`: CLIP vision towers with one 8 px patch per
grid cell (``clip``: 64 px, BabyAI's 8x8 top view and Reacher; ``clip_ego``: 56 px, BabyAI's 7x7
egocentric view), a Llama LLM and a BPE tokenizer trained offline on
the environments' instructions and action words. No weights: the configs say ``from_scratch: true``.

Regenerate with ``python -m omniplug.agent_base configs/babyai/base``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IMAGE = 64  # BabyAI's 8x8 top view and Reacher's render
EGO = 56  # BabyAI's 7x7 egocentric view (view: agent)
ENVS_FOR_TEXT = ("babyai-gotolocal", "babyai-pickuploc", "babyai-putnextlocal")


def instruction_texts(episodes: int = 300) -> list[str]:
    """Missions of the BabyAI levels (seeds 0..episodes-1), action words and the Reacher instruction."""
    from omniplug.envs.babyai import ACTION_NAMES
    from omniplug.envs.base import make_env

    texts = [" ".join(ACTION_NAMES), "move the fingertip to the red target"]
    for name in ENVS_FOR_TEXT:
        env = make_env(name)
        try:
            texts.extend(env.reset(seed).instruction for seed in range(episodes))
        finally:
            env.close()
    return texts


def write_base(out: str | Path, *, hidden: int = 128, layers: int = 4, clip_layers: int = 3) -> Path:
    from transformers import CLIPImageProcessorPil

    from omniplug.tiny import clip_config, llama_config, train_tokenizer

    out = Path(out)
    tok = train_tokenizer(instruction_texts(), vocab_size=384)
    (out / "llama").mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out / "llama"))
    llama_config(vocab=len(tok), hidden=hidden, layers=layers, pad_id=tok.pad_token_id).save_pretrained(str(out / "llama"))
    for name, size in (("clip", IMAGE), ("clip_ego", EGO)):
        clip_config(hidden=hidden, image_size=size, patch=8, layers=clip_layers).save_pretrained(str(out / name))
        CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              do_resize=False, do_center_crop=False).save_pretrained(str(out / name))
    (out / "README.md").write_text("Config-only checkpoints of the agent configs' architecture (no weights); "
                                   "written by `python -m omniplug.agent_base`.\n")
    return out


if __name__ == "__main__":
    print(json.dumps(str(write_base(sys.argv[1] if len(sys.argv) > 1 else "configs/babyai/base"))))
