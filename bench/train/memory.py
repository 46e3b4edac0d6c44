"""Peak training memory with and without ``trainer.gradient_checkpointing``, measured per fresh process.

    python bench/train/memory.py            # ~5 min on 2 CPU threads; writes bench/train/memory.json

Each setting runs in its own process (peak RSS, ``ru_maxrss``, only grows): a random Llama built from a
config.json by omniplug's ``hf_causal_lm`` plugin (``from_scratch``), LoRA as ``train_mode: 1`` applies it,
then forward + backward of one batch, three times. Reported: the peak RSS, the RSS after the build (weights),
their difference (activations, gradients, autograd buffers) and the step time. Settings alternate
(off, on, off, on) so a change in machine load hits both sides.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 12, "num_attention_heads": 8,
         "num_key_value_heads": 8, "vocab_size": 8000, "max_position_embeddings": 2048}
BATCH, SEQ = 4, 1024


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(checkpointing: bool, full: bool) -> dict:
    import torch
    from transformers import LlamaConfig

    from omniplug.llms.hf_causal_lm import HFCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        LlamaConfig(**SHAPE).save_pretrained(folder)
        llm = HFCausalLM(model_name_or_path=folder, from_scratch=True, lora_enable=True, lora_dropout=0.0)
    llm.make_trainable(full=full, new_token_ids=[])
    if checkpointing:
        llm.enable_gradient_checkpointing()
    llm.train()
    ids = torch.randint(0, SHAPE["vocab_size"], (BATCH, SEQ))
    mask = torch.ones_like(ids)
    params = sum(p.numel() for p in llm.parameters())
    built = _rss_mib()
    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = llm(llm.embed(ids), mask, labels=ids)
        out.loss.backward()
        seconds.append(time.perf_counter() - t0)
        llm.zero_grad(set_to_none=True)
    peak = _rss_mib()
    return {"gradient_checkpointing": checkpointing, "full": full, "params": params, "rss_after_build_mib": built,
            "peak_rss_mib": peak, "training_extra_mib": peak - built, "step_s": statistics.median(seconds[1:]),
            "loss": float(out.loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["off", "on"])
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "memory.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "on", args.full)))
        return
    runs = []
    for full in (False, True):
        for _ in range(args.repeats):
            for setting in ("off", "on"):
                cmd = [sys.executable, __file__, "--child", setting] + (["--full"] if full else [])
                line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                runs.append(json.loads(line))
                print(runs[-1], flush=True)
    summary = {}
    for full in (False, True):
        for on in (False, True):
            mine = [r for r in runs if r["full"] == full and r["gradient_checkpointing"] == on]
            summary[f"{'full' if full else 'lora'}_{'on' if on else 'off'}"] = {
                key: statistics.median(r[key] for r in mine)
                for key in ("peak_rss_mib", "rss_after_build_mib", "training_extra_mib", "step_s", "loss")}
    result = {"command": "python bench/train/memory.py", "shape": SHAPE, "batch": BATCH, "seq": SEQ,
              "params": runs[0]["params"], "threads": 2, "summary": summary, "runs": runs}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in summary.items():
        print(f"{name:9s} peak {row['peak_rss_mib']:8.0f} MiB  extra {row['training_extra_mib']:8.0f} MiB  "
              f"step {row['step_s']:6.2f} s  loss {row['loss']:.4f}")


if __name__ == "__main__":
    main()
