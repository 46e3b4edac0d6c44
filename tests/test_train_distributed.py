"""The same loop under ``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo).

``--cpu --num_processes 2`` silently runs one process; ``--multi_gpu`` with ACCELERATE_USE_CPU=true
runs two. The data mix has batches without ``<tst>``, so the decoder's parameters are unused on
some ranks at some steps: this also covers DDP's unused-parameter handling.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_train_plugins import write_config

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(300)
def test_two_processes_train_on_different_data_and_stay_in_sync(tiny_dir, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    omniplug = shutil.which("omniplug", path=os.path.dirname(sys.executable))
    assert accelerate and omniplug, "accelerate and omniplug must be installed in the test environment"
    out = tmp_path / "out"
    path = write_config(tiny_dir, tmp_path, out=out)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           omniplug, "train", "-c", str(path), "trainer.max_epoch=2", "trainer.iters_per_epoch=3", "trainer.save_every=3"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert ranks[0]["data_sha256"] != ranks[1]["data_sha256"]  # each rank drew its own batches
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # gradients were synced
    assert {r["steps"] for r in ranks} == {6}
    with open(out / "metrics.csv", newline="") as fh:
        assert [row["step"] for row in csv.DictReader(fh)] == [str(i) for i in range(1, 7)]  # rank 0 alone wrote it
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000003", "step_000006"]
    assert sorted(p.name for p in (out / "checkpoints" / "step_000006").glob("rng_rank*.pt")) == ["rng_rank0.pt",
                                                                                                "rng_rank1.pt"]
