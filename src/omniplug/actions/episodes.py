"""The on-disk format of demonstrations (``omniplug demos collect`` writes it, dataset ``demos`` reads it).

::

    DIR/
      meta.json          {"format": "omniplug-demos", "version": 1, "env": "babyai-gotolocal",
                          "options": {"view": "agent"},        (the environment's options, as collected)
                          "action_space": {"kind": "discrete", "names": [...]}            (or)
                                          {"kind": "continuous", "dim": 2, "low": [...], "high": [...]},
                          "stats": {"min", "max", "q01", "q99", "mean", "std": [per dim]},   (continuous)
                          "episodes": N, "steps": total steps}
      episodes.jsonl     one line per episode, in order:
                          {"file": "episodes/000000.npz", "seed": 0, "instruction": "go to the red ball",
                           "length": T, "return": 0.93, "success": true}
      episodes/000000.npz
                         frames  uint8 (T+1, H, W, 3): the observation before each action, then the last one
                         actions int64 (T,) for discrete, float32 (T, D) for continuous (environment units)
                         rewards float32 (T,)
                         grids   uint8 (T+1, ...), optional: the environment's symbolic view of each frame
                                 (BabyAI's agent view: minigrid's (7, 7, 3) encoding), for grounding data
                         states  float32 (T+1, K), optional: the environment's low-dimensional state shown by
                                 each frame (Reacher: cos/sin of both joints, target x, y), for the `state` reader
                         narrations  unicode (T,), optional: why the expert took each action, in words
                                 ("the car ahead is slower and the left lane is free: change lane left")

No pickle anywhere: ``.npz`` files are read with ``allow_pickle=False``; everything else is JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omniplug.actions.space import ActionSpace

FORMAT = "omniplug-demos"
VERSION = 1
META_NAME = "meta.json"
INDEX_NAME = "episodes.jsonl"


@dataclass
class Episode:
    frames: np.ndarray  # (T+1, H, W, 3) uint8
    actions: np.ndarray  # (T,) int64 | (T, D) float32
    rewards: np.ndarray  # (T,) float32
    instruction: str
    seed: int
    success: bool
    grids: np.ndarray | None = None  # (T+1, ...) uint8: the symbolic view of each frame, when the env has one
    states: np.ndarray | None = None  # (T+1, K) float32: the state each frame shows, when the env gives one
    narrations: np.ndarray | None = None  # (T,) str: the expert's reason for each action, when the env gives one

    def __post_init__(self) -> None:
        t = len(self.actions)
        if len(self.rewards) != t or len(self.frames) != t + 1:
            raise ValueError(f"an episode of {t} actions needs {t} rewards and {t + 1} frames, got "
                             f"{len(self.rewards)} and {len(self.frames)}")
        if self.grids is not None and len(self.grids) != t + 1:
            raise ValueError(f"an episode of {t} actions needs {t + 1} grids, got {len(self.grids)}")
        if self.states is not None and (self.states.ndim != 2 or len(self.states) != t + 1):
            raise ValueError(f"an episode of {t} actions needs ({t + 1}, K) states, got {self.states.shape}")
        if self.narrations is not None and len(self.narrations) != t:
            raise ValueError(f"an episode of {t} actions needs {t} narrations, got {len(self.narrations)}")

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def total_return(self) -> float:
        return float(np.sum(self.rewards))


@dataclass(frozen=True)
class EpisodeRecord:
    """One line of ``episodes.jsonl``."""

    file: str
    seed: int
    instruction: str
    length: int
    total_return: float
    success: bool

    def to_json(self) -> str:
        return json.dumps({"file": self.file, "seed": self.seed, "instruction": self.instruction, "length": self.length,
                           "return": self.total_return, "success": self.success})

    @classmethod
    def from_json(cls, line: str) -> "EpisodeRecord":
        d = json.loads(line)
        return cls(file=d["file"], seed=int(d["seed"]), instruction=d["instruction"], length=int(d["length"]),
                   total_return=float(d["return"]), success=bool(d["success"]))


class EpisodeWriter:
    """Writes episodes one by one, then ``close()`` writes ``meta.json`` with the action statistics."""

    def __init__(self, out: str | Path, *, env: str, action_space: ActionSpace,
                 options: dict[str, Any] | None = None) -> None:
        self.out = Path(out)
        if (self.out / META_NAME).exists() or (self.out / INDEX_NAME).exists():
            raise FileExistsError(f"{self.out} already holds demonstrations; choose an empty --out directory")
        (self.out / "episodes").mkdir(parents=True, exist_ok=True)
        self.env, self.space = env, action_space
        self.options = dict(options or {})  # the environment's options the episodes were played under
        self.records: list[EpisodeRecord] = []
        self._actions: list[np.ndarray] = []

    def add(self, ep: Episode) -> EpisodeRecord:
        rel = f"episodes/{len(self.records):06d}.npz"
        actions = ep.actions.astype(np.int64 if self.space.is_discrete else np.float32)
        tmp = self.out / (rel + ".tmp.npz")
        arrays = {"frames": ep.frames.astype(np.uint8), "actions": actions, "rewards": ep.rewards.astype(np.float32)}
        if ep.grids is not None:
            arrays["grids"] = ep.grids.astype(np.uint8)
        if ep.states is not None:
            arrays["states"] = ep.states.astype(np.float32)
        if ep.narrations is not None:
            arrays["narrations"] = np.asarray(ep.narrations, dtype=str)  # fixed-width unicode: no pickle
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, self.out / rel)
        rec = EpisodeRecord(file=rel, seed=ep.seed, instruction=ep.instruction, length=ep.length,
                            total_return=ep.total_return, success=ep.success)
        self.records.append(rec)
        self._actions.append(actions)
        with open(self.out / INDEX_NAME, "a") as f:
            f.write(rec.to_json() + "\n")
        return rec

    def close(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "env": self.env, "options": self.options,
                                "action_space": self.space.to_json(), "episodes": len(self.records),
                                "steps": int(sum(r.length for r in self.records))}
        if not self.space.is_discrete and self._actions:
            meta["stats"] = action_stats(np.concatenate(self._actions, axis=0))
        (self.out / META_NAME).write_text(json.dumps(meta, indent=2))
        return meta


def action_stats(actions: np.ndarray) -> dict[str, list[float]]:
    a = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
    return {"min": a.min(0).tolist(), "max": a.max(0).tolist(), "q01": np.quantile(a, 0.01, axis=0).tolist(),
            "q99": np.quantile(a, 0.99, axis=0).tolist(), "mean": a.mean(0).tolist(), "std": a.std(0).tolist()}


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory).expanduser() / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {META_NAME} in {path.parent}: not a demonstrations directory "
                                f"(write one with `omniplug demos collect --env ... --out DIR`)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: format {meta.get('format')!r} version {meta.get('version')} is not "
                         f"{FORMAT!r} <= {VERSION}")
    return meta


def read_index(directory: str | Path) -> list[EpisodeRecord]:
    path = Path(directory).expanduser() / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {INDEX_NAME} in {path.parent}")
    return [EpisodeRecord.from_json(line) for line in path.read_text().splitlines() if line.strip()]


def split_records(records: list[EpisodeRecord], split: str, val_episodes: int) -> list[EpisodeRecord]:
    """The readers' split: the last ``val_episodes`` episodes are ``val``, the rest ``train``; ``all`` keeps all."""
    if split == "train":
        return records[: len(records) - val_episodes]
    if split == "val":
        return records[len(records) - val_episodes:] if val_episodes else []
    return records


def read_episode(directory: str | Path, record: EpisodeRecord) -> Episode:
    with np.load(Path(directory).expanduser() / record.file, allow_pickle=False) as z:
        return Episode(frames=z["frames"], actions=z["actions"], rewards=z["rewards"], instruction=record.instruction,
                       seed=record.seed, success=record.success, grids=z["grids"] if "grids" in z.files else None,
                       states=z["states"] if "states" in z.files else None,
                       narrations=z["narrations"] if "narrations" in z.files else None)


def read_actions(directory: str | Path) -> list[np.ndarray]:
    """Every episode's actions (no frames), for fitting normalisation or an action tokenizer."""
    out = []
    for rec in read_index(directory):
        with np.load(Path(directory).expanduser() / rec.file, allow_pickle=False) as z:
            out.append(z["actions"])
    return out
