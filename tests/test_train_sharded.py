"""DeepSpeed ZeRO 1-3 and FSDP2 through accelerate, two CPU processes (torchrun, gloo), against one process.

One process with ``grad_accum_steps=2`` sees exactly the draws of two ranks with one micro-batch each (the
global batch is cut rank by rank), so the sharded runs must end on the same weights up to float rounding.
LoRA dropout is off: it is the one random draw that differs between one process and two ranks.

The mixed data (text-only batches beside ``<tst>`` batches) leaves the decoder idle on some ranks at some
steps: ZeRO-1 and FSDP must handle that; ZeRO-2/3 must refuse it with a clear error (they need every rank to
run the same modules) and are compared on data where every sample triggers the decoder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_plugins import write_config

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6  # max |w_sharded - w_single| over every trainable tensor after 8 steps (measured <= 2.3e-7)
pytest.importorskip("deepspeed", reason="the sharded-training tests need pip install 'omniplug[deepspeed]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def configs(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded")
    mixed = write_config(tiny_dir, folder, out=folder / "unused")
    every = folder / "every_sample_triggers.yaml"
    every.write_text(mixed.read_text().replace("train: {phrase: 1, phrase_tst: 1}", "train: {phrase_tst: 1}"))
    assert every.read_text() != mixed.read_text()
    return {"mixed": mixed, "every": every}


def _train(config: Path, out: Path, *, mode: str, extra: tuple[str, ...] = (), flags: tuple[str, ...] = (),
           check: bool = True):
    omniplug = shutil.which("omniplug", path=os.path.dirname(sys.executable))
    assert omniplug, "omniplug must be installed in the test environment"
    # TORCH_EXTENSIONS_DIR (conftest): DeepSpeed compiles its CPU shared-memory op there on first use (~27 s)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("ACCELERATE_USE_CPU", None)
    args = ["train", *flags, "-c", str(config), f"trainer.output_dir={out}", "llm.tiny_llama.lora_dropout=0.0", *extra]
    if mode == "single":
        cmd = [sys.executable, "-m", "omniplug", *args, "trainer.grad_accum_steps=2"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(_free_port())]
        setting = "trainer.fsdp=true" if mode == "fsdp" else f"trainer.zero_stage={mode.removeprefix('zero')}"
        cmd = [*launcher, omniplug, *args, setting]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "trainable.safetensors")), load_file(str(b / "trainable.safetensors"))
    assert wa.keys() == wb.keys() and wa
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def single(configs, tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    for data, config in configs.items():
        _train(config, root / data, mode="single")
    return root


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode,data", [("zero1", "mixed"), ("zero2", "every"), ("zero3", "every"),
                                       ("fsdp", "mixed")])
def test_two_sharded_processes_reach_the_single_process_weights(mode, data, configs, single, tmp_path):
    out = tmp_path / mode
    _train(configs[data], out, mode=mode)
    assert _max_diff(single / data, out) <= TOLERANCE
    checkpoint = out / "checkpoints" / "step_000008"
    shards = {"fsdp": "fsdp/optimizer_0/__*_0.distcp"}.get(mode, "deepspeed/global_step8/*optim_states.pt")
    assert len(list(checkpoint.glob(shards))) == 2  # each rank wrote its own optimizer shard


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode,data", [("zero2", "every"), ("zero3", "every"), ("fsdp", "mixed")])
def test_a_sharded_run_stopped_and_resumed_ends_on_the_same_weights(mode, data, configs, single, tmp_path):
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    _train(configs[data], whole, mode=mode, extra=("trainer.save_every=3",))
    _train(configs[data], pieces, mode=mode, extra=("trainer.save_every=3",), flags=("--stop-after", "3"))
    assert not (pieces / "trainable.safetensors").exists()  # stopped early: only the checkpoint
    resumed = _train(configs[data], pieces, mode=mode, extra=("trainer.save_every=3", "trainer.resume_ckpt_path=auto"))
    assert "resuming from" in resumed.stdout + resumed.stderr and "step_000003" in resumed.stdout + resumed.stderr
    assert _max_diff(whole, pieces) == 0.0  # exact: sharded optimizer state, RNG and data position restored
    assert _max_diff(single / data, pieces) <= TOLERANCE


@pytest.mark.timeout(300)
def test_zero2_refuses_ranks_running_different_decoders(configs, tmp_path):
    proc = _train(configs["mixed"], tmp_path / "out", mode="zero2", check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "trainer.zero_stage=2 needs every rank to run the same modules" in text
    assert "rank 0: decoders ['tst']" in text and "rank 1: decoders []" in text
    assert "trainer.fsdp=true" in text  # says what to use instead


def test_sharding_keys_are_checked_before_any_process_starts(tiny_dir, tmp_path):
    from omniplug.config import load_config
    from omniplug.config.schema import ConfigError
    from omniplug.train.accel import make_accelerator

    path = write_config(tiny_dir, tmp_path, out=tmp_path / "out")
    both = load_config(path, overrides=["trainer.zero_stage=2", "trainer.fsdp=true"])
    with pytest.raises(ConfigError, match="choose one"):
        make_accelerator(both.trainer)
    if not torch.cuda.is_available():  # one process: nothing to shard across
        with pytest.raises(ConfigError, match="torchrun --nproc_per_node 2"):
            make_accelerator(load_config(path, overrides=["trainer.zero_stage=3"]).trainer)
        with pytest.raises(ConfigError, match="torchrun --nproc_per_node 2"):
            make_accelerator(load_config(path, overrides=["trainer.fsdp=true"]).trainer)
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(path, overrides=["trainer.zero_stage=4"])


@pytest.mark.timeout(300)
def test_two_nodes_of_one_process_each_train_as_one_run(configs, single, tmp_path):
    """The multi-node launch (``torchrun --nnodes 2 --node_rank r``, one launcher per machine), with both
    "machines" on localhost: each process is local rank 0 of its node, and still only the global rank 0
    writes. FSDP, the mode whose checkpoints every rank writes into."""
    omniplug = shutil.which("omniplug", path=os.path.dirname(sys.executable))
    out, port = tmp_path / "out", _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               omniplug, "train", "-c", str(configs["mixed"]), f"trainer.output_dir={out}",
                               "llm.tiny_llama.lora_dropout=0.0", "trainer.fsdp=true"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "train done" in logs[0] and "train done" not in logs[1]  # the summary is rank 0's
    assert _max_diff(single / "mixed", out) <= TOLERANCE
    assert len(list((out / "checkpoints" / "step_000008" / "fsdp" / "optimizer_0").glob("__*_0.distcp"))) == 2


@pytest.mark.timeout(300)
def test_the_shipped_multi_node_accelerate_config_launches(configs, single, tmp_path):
    """configs/accelerate/multi_node.yaml as far as one CPU machine goes: accelerate reads it, the machine
    count, address and process count are overridden on the command line (as a user does per machine), and
    the run trains as two FSDP processes."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    omniplug = shutil.which("omniplug", path=os.path.dirname(sys.executable))
    out = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [accelerate, "launch", "--config_file", str(REPO / "configs" / "accelerate" / "multi_node.yaml"),
           "--num_machines", "1", "--num_processes", "2", "--main_process_ip", "127.0.0.1",
           "--main_process_port", str(_free_port()), omniplug, "train", "-c", str(configs["mixed"]),
           f"trainer.output_dir={out}", "llm.tiny_llama.lora_dropout=0.0", "trainer.fsdp=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert _max_diff(single / "mixed", out) <= TOLERANCE
