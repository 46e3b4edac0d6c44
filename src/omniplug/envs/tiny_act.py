"""Tiny writer (``omniplug tiny``): a few synthetic demonstrations and ``act.yaml``.

No simulator is needed: episodes are small coloured frames whose colour tells the action, in the
real on-disk format, one discrete (BabyAI's seven actions) and one continuous (2-d). ``act.yaml``
puts every action adapter in the catalogue on the tiny CLIP + Llama; pick one with
``one_model.decoder=act_bins_tiny data.train={act_continuous:1}`` and so on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from omniplug.actions.episodes import Episode, EpisodeWriter
from omniplug.actions.space import ActionSpace
from omniplug.envs.babyai import ACTION_NAMES
from omniplug.tiny import register_writer

ACT_YAML = """\
# Action adapters on the tiny CLIP + Llama (see docs/actions.md). Discrete adapters read
# act_demos/discrete, continuous ones act_demos/continuous; switch with e.g.
#   one_model.decoder=act_bins_tiny 'data.train={act_continuous: 1}'
includes: [catalogue.yaml]
decoder:
  act_words_tiny: {type: act_words, demos: "${base_dir}/act_demos/discrete"}
  act_tokens_tiny: {type: act_tokens, demos: "${base_dir}/act_demos/discrete"}
  act_bins_tiny: {type: act_bins, demos: "${base_dir}/act_demos/continuous", num_bins: 32}
  act_rvq_tiny: {type: act_rvq, demos: "${base_dir}/act_demos/continuous", levels: 2, codebook_size: 8}
  act_regress_tiny: {type: act_regress, demos: "${base_dir}/act_demos/continuous", prompt_dim: 32, hidden_dim: 32}
dataset:
  act_discrete: {type: demos, data_dir: "${base_dir}/act_demos/discrete"}
  act_continuous: {type: demos, data_dir: "${base_dir}/act_demos/continuous"}
one_model:
  encoder: tiny_clip
  in_projector: image_proj
  tokenizer: tiny_tok
  llm: tiny_llama
  out_projector: out_mlp
  decoder: act_tokens_tiny
  conv_type: plain
  train_mode: 1
data:
  train: {act_discrete: 1}
  max_length: 128
trainer: {lr_sched: constant, init_lr: 1.0e-3, max_epoch: 1, iters_per_epoch: 20, batch_size_train: 4,
          output_dir: output/tiny_act}
"""


def synthetic_episodes(space: ActionSpace, *, episodes: int, steps: int, size: int = 32, seed: int = 0) -> list[Episode]:
    """Frames whose colour encodes the action taken (a task a tiny model can overfit)."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(episodes):
        if space.is_discrete:
            actions = rng.integers(0, len(space.names), size=steps)
            levels = actions / max(len(space.names) - 1, 1)
        else:
            actions = rng.uniform(space.low, space.high, size=(steps, space.dim)).astype(np.float32)
            levels = (actions[:, 0] - space.low[0]) / (space.high[0] - space.low[0])
        frames = np.zeros((steps + 1, size, size, 3), dtype=np.uint8)
        frames[:steps, :, :, 0] = (255 * levels).astype(np.uint8)[:, None, None]
        frames[:, : size // 4, :, 2] = (40 * e) % 256
        rewards = np.zeros(steps, dtype=np.float32)
        rewards[-1] = 1.0
        out.append(Episode(frames=frames, actions=actions, rewards=rewards, instruction=f"task number {e}", seed=seed + e,
                           success=True))
    return out


def write_synthetic_demos(out: Path, space: ActionSpace, *, env: str, episodes: int = 3, steps: int = 4) -> Path:
    writer = EpisodeWriter(out, env=env, action_space=space)
    for ep in synthetic_episodes(space, episodes=episodes, steps=steps):
        writer.add(ep)
    writer.close()
    return out


@register_writer
def write_tiny_act(out: Path) -> dict[str, Path]:
    discrete = write_synthetic_demos(out / "act_demos" / "discrete",
                                     ActionSpace(kind="discrete", names=ACTION_NAMES), env="synthetic-discrete")
    continuous = write_synthetic_demos(out / "act_demos" / "continuous",
                                       ActionSpace(kind="continuous", dim=2, low=(-1.0, -2.0), high=(1.0, 2.0)),
                                       env="synthetic-continuous")
    (out / "act.yaml").write_text(ACT_YAML)
    return {"act_demos_discrete": discrete, "act_demos_continuous": continuous, "act_config": out / "act.yaml"}
