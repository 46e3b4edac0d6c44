"""Does the driving reader read the frames a learner drives into as well as the expert's? (issue 26)

The ``state`` encoder's reader regresses highway-env's kinematics (the ego car and its 4 nearest neighbours) from
the frame. Per demonstration folder (the last ``--episodes`` episodes of each, held out from a reader trained with
``--val-episodes`` as large), the x error on every neighbour and on the car in the ego lane within 25 m ahead (the one
an agent crashes into), and how far the nearest same-lane car the reader puts ahead sits from the true one
(median, metres) — or that it puts none there.

    python bench/actions/reader_shift.py --reader configs/driving/reader --reader /root/runs/driving/reader2 \\
        --data data/driving/demos_a --data data/driving/demos_b --data data/driving/dagger1 \\
        --data data/driving/dagger_ot2 --data data/driving/dagger4 --out bench/actions/reader_shift.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from omniplug.actions.episodes import read_episode, read_index
from omniplug.encoders._perception import to_pixels
from omniplug.encoders.state import StateReader

METRES = 100.0  # highway-env's normalised kinematics: x / 100 m
SAME_LANE = 0.1  # |normalised y| below this: the ego lane (the next lane sits at 0.33)
AHEAD = 0.25  # within 25 m ahead


def measure(reader: StateReader, folder: str, episodes: int) -> dict:
    frames, states = [], []
    for record in read_index(folder)[-episodes:]:
        episode = read_episode(folder, record)
        frames += [Image.fromarray(f) for f in episode.frames]
        states.append(episode.states)
    truth = np.concatenate(states)
    mean, std = np.array(reader.config.mean), np.array(reader.config.std)
    with torch.no_grad():
        pixels = to_pixels(frames, reader.config.image_size)
        estimate = torch.cat([reader(pixels[i: i + 512]) for i in range(0, len(pixels), 512)]).numpy() * std + mean
    true, est = truth[:, :25].reshape(-1, 5, 5)[:, 1:], estimate[:, :25].reshape(-1, 5, 5)[:, 1:]  # the 4 others
    present = true[..., 0] > 0.5
    close = present & (np.abs(true[..., 2]) < SAME_LANE) & (true[..., 1] > 0) & (true[..., 1] < AHEAD)
    err = np.abs(est[..., 1] - true[..., 1]) * METRES
    offsets = []
    for i in np.flatnonzero(close.any(1)):
        nearest = true[i, close[i], 1].min()
        seen = [est[i, k, 1] for k in range(4) if abs(est[i, k, 2]) < SAME_LANE and est[i, k, 1] > 0]
        offsets.append((min(seen) - nearest) * METRES if seen else np.nan)
    offsets = np.array(offsets)
    return {"frames": int(len(truth)), "x_mae_m": round(float(err[present].mean()), 2),
            "same_lane_ahead_share": round(float(close.any(1).mean()), 3),
            "same_lane_ahead_x_mae_m": round(float(err[close].mean()), 2),
            "nearest_ahead_offset_median_m": round(float(np.nanmedian(offsets)), 2),
            "nearest_ahead_missed": round(float(np.isnan(offsets).mean()), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reader", action="append", required=True, help="a reader folder (repeatable)")
    p.add_argument("--data", action="append", required=True, help="a demonstrations folder with states (repeatable)")
    p.add_argument("--episodes", type=int, default=40, help="the last episodes of each folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).with_name("reader_shift.json")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    table = {}
    for path in args.reader:
        reader = StateReader.load(path).eval()
        table[path] = {Path(d).name: measure(reader, d, args.episodes) for d in args.data}
        for name, row in table[path].items():
            print(path, name, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"episodes": args.episodes, "readers": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
