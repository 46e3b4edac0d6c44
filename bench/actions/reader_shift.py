"""Does the driving reader read the frames a learner drives into as well as the expert's? (issue 26)

The ``state`` encoder's reader regresses highway-env's kinematics (the ego car and its 4 nearest neighbours) from
the frame. Per demonstration folder (the last ``--episodes`` episodes of each, held out from a reader trained with
``--val-episodes`` as large), the x error on every neighbour and on the car in the ego lane within 25 m ahead (the one
an agent crashes into), how far the nearest same-lane car the reader puts ahead sits from the true one (median,
metres) — or that it puts none there; per gap, the share of frames where it misses that car, reading none or one
more than 10 m off — and how fast that car closes in (m/s): the reader's own estimate of its
speed from one frame, and the best an agent given two frames could do, the change of the estimated gap between
consecutive frames. Units from ``omniplug.envs.highway`` (x: 200 m, vx: 80 m/s per unit; checked by the tests).

    D=data/driving   # reader_shift.json: the square view's reader (git show cd93cb9:configs/driving/reader/...) and reader3
    python bench/actions/reader_shift.py --reader configs/driving/reader --reader $D/reader3 --data $D/expert_b \\
        --data $D/agent_b --data $D/const_idle --data $D/const_faster --data $D/r3round_a --data $D/r3round_b \\
        --episodes 40 --out bench/actions/reader_shift.json

A reader of the wide view's ``state: lanes`` is measured on its gap to the car ahead in the ego lane, per gap
(``measure_lanes``; reader_shift_wide.json).
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
from omniplug.envs.highway import LANE_STATE, VX_METRES_PER_S, X_METRES

SAME_LANE = 2.0 / 12.0  # |normalised y| below half a lane (2 m; y: 12 m per unit on 3 lanes): the ego lane
AHEAD = 25.0 / X_METRES  # within 25 m ahead
GAP_BINS = ((0.0, 10.0), (10.0, 25.0))  # metres to the nearest car ahead in the ego lane
MISS_M = 10.0  # a reading further than this from that car (or none in the lane ahead) misses it


def _nearest_ahead(rows: np.ndarray) -> tuple[float, float] | None:
    """(x, vx) of the nearest car ahead in the ego lane among 4 neighbour rows, within AHEAD; None if none."""
    ahead = [r for r in rows if r[0] > 0.5 and abs(r[2]) < SAME_LANE and 0 < r[1] < AHEAD]
    return min(((float(r[1]), float(r[3])) for r in ahead), default=None)


def _read(reader: StateReader, folder: str, episodes: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """The stored states of the last ``episodes`` episodes, the reader's estimates of them (state units) and where
    each episode starts."""
    frames, states, starts = [], [], []
    for record in read_index(folder)[-episodes:]:
        episode = read_episode(folder, record)
        starts.append(len(frames))
        frames += [Image.fromarray(f) for f in episode.frames]
        states.append(episode.states)
    mean, std = np.array(reader.config.mean), np.array(reader.config.std)
    with torch.no_grad():
        pixels = to_pixels(frames, reader.config.image_size, width=reader.config.image_width)
        estimate = torch.cat([reader(pixels[i: i + 512]) for i in range(0, len(pixels), 512)]).numpy() * std + mean
    return np.concatenate(states), estimate, starts


def measure(reader: StateReader, folder: str, episodes: int, *, dt: float) -> dict:
    truth, estimate, starts = _read(reader, folder, episodes)
    true, est = truth[:, :25].reshape(-1, 5, 5)[:, 1:], estimate[:, :25].reshape(-1, 5, 5)[:, 1:]  # the 4 others
    present = true[..., 0] > 0.5
    close = present & (np.abs(true[..., 2]) < SAME_LANE) & (true[..., 1] > 0) & (true[..., 1] < AHEAD)
    err = np.abs(est[..., 1] - true[..., 1]) * X_METRES
    first = set(starts)
    offsets, speed_err, diff_err, closing = [], [], [], []
    for i in np.flatnonzero(close.any(1)):
        car = _nearest_ahead(true[i])
        seen = [est[i, k, 1] for k in range(4) if abs(est[i, k, 2]) < SAME_LANE and est[i, k, 1] > 0]
        offsets.append((min(seen) - car[0]) * X_METRES if seen else np.nan)
        guess = _nearest_ahead(est[i])
        if guess is None:
            continue
        closing.append(car[1] * VX_METRES_PER_S)
        speed_err.append(abs(guess[1] - car[1]) * VX_METRES_PER_S)
        before = None if i in first else _nearest_ahead(est[i - 1])
        if before is not None:  # the gap's change over one decision: what two frames tell (same car or not)
            diff_err.append(abs((guess[0] - before[0]) * X_METRES / dt - car[1] * VX_METRES_PER_S))
    offsets = np.array(offsets)
    gaps = np.array([_nearest_ahead(true[i])[0] * X_METRES for i in np.flatnonzero(close.any(1))])
    lost = np.isnan(offsets) | (np.abs(np.nan_to_num(offsets)) > MISS_M)
    by_gap = {f"{lo:g}-{hi:g} m": {"frames": int(((gaps >= lo) & (gaps < hi)).sum()),
                                   "missed": round(float(lost[(gaps >= lo) & (gaps < hi)].mean()), 3)
                                   if ((gaps >= lo) & (gaps < hi)).any() else None}
              for lo, hi in GAP_BINS}
    return {"frames": int(len(truth)), "x_mae_m": round(float(err[present].mean()), 2),
            "same_lane_ahead_share": round(float(close.any(1).mean()), 3),
            "same_lane_ahead_x_mae_m": round(float(err[close].mean()), 2),
            "nearest_ahead_offset_median_m": round(float(np.nanmedian(offsets)), 2),
            "nearest_ahead_missed": round(float(np.isnan(offsets).mean()), 3),
            "nearest_ahead_closing_speed_mean_abs_ms": round(float(np.mean(np.abs(closing))), 2),
            "closing_speed_mae_one_frame_ms": round(float(np.mean(speed_err)), 2),
            "nearest_ahead_missed_by_gap": by_gap,
            "closing_speed_mae_two_frames_ms": round(float(np.mean(diff_err)), 2) if diff_err else None}


LANE_GAP_BINS = ((0.0, 10.0), (10.0, 25.0), (25.0, 50.0), (50.0, 96.0))


def measure_lanes(reader: StateReader, folder: str, episodes: int, *, dt: float) -> dict:
    """The same question for a reader of ``state: lanes`` (the wide view): per gap to the car ahead in the ego lane,
    the share of frames whose estimated gap is more than MISS_M off, the median error, and the closing speed the
    change of two consecutive estimates gives."""
    truth, estimate, starts = _read(reader, folder, episodes)
    gap, closing = LANE_STATE.index("own_gap_ahead"), LANE_STATE.index("own_closing_ahead")
    true_gap, est_gap = truth[:, gap], estimate[:, gap]
    err = np.abs(est_gap - true_gap)
    first = np.zeros(len(truth), bool)
    first[starts] = True
    two_frames = np.full(len(truth), np.nan)  # the gap's change over one decision, as closing speed
    two_frames[1:] = (est_gap[:-1] - est_gap[1:]) / dt
    two_frames[first] = np.nan
    by_gap = {}
    for lo, hi in LANE_GAP_BINS:
        sel = (true_gap >= lo) & (true_gap < hi)
        pair = sel & ~np.isnan(two_frames)
        by_gap[f"{lo:g}-{hi:g} m"] = {
            "frames": int(sel.sum()), "missed": round(float((err[sel] > MISS_M).mean()), 3) if sel.any() else None,
            "gap_median_error_m": round(float(np.median(err[sel])), 2) if sel.any() else None,
            "closing_speed_mae_two_frames_ms": round(float(np.abs(two_frames[pair] - truth[pair, closing]).mean()), 2)
            if pair.any() else None}
    return {"frames": int(len(truth)), "gap_ahead_mae_m": round(float(err.mean()), 2), "by_gap": by_gap}


def how_to_measure(reader: StateReader):
    """``measure_lanes`` for a reader of highway's ``state: lanes``, ``measure`` for one of its kinematics."""
    return measure_lanes if reader.config.state_dim == len(LANE_STATE) else measure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reader", action="append", required=True, help="a reader folder (repeatable)")
    p.add_argument("--data", action="append", required=True, help="a demonstrations folder with states (repeatable)")
    p.add_argument("--episodes", type=int, default=40, help="the last episodes of each folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dt", type=float, default=1.0, help="seconds between decisions (1 / decisions_per_second)")
    p.add_argument("--out", default=str(Path(__file__).with_name("reader_shift.json")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    table = {}
    for path in args.reader:
        reader = StateReader.load(path).eval()
        table[path] = {Path(d).name: how_to_measure(reader)(reader, d, args.episodes, dt=args.dt) for d in args.data}
        for name, row in table[path].items():
            print(path, name, json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"episodes": args.episodes, "readers": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
