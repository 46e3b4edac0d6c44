"""How exactly an exported model reloads: ``bench/export/roundtrip.json`` (figures in bench/export/README.md).

    python bench/export/roundtrip.py          # ~20 s on 2 CPU cores

1. Tiny ``edit.yaml`` (CLIP, LoRA Llama, SAM, SD with a text encoder), 20 LoRA training steps at lr 1e-2, exported
   in the three modes; each export reloaded through its ``omniplug.yaml`` and compared with the trained model on
   8 requests: LLM logits on fixed embeddings, the ``<seg>`` mask and the generated image of a forced answer.
2. The bundled default model (``configs/default/omni_tiny.yaml``) exported and reloaded; the answers of both to
   the world's caption, VQA and referring questions on 20 val scenes are compared (text and masks), and the
   export's size and time are recorded.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
FAST = ["decoder.tiny_sd.num_inference_steps=4", "one_model.conv_type=plain"]


def _tiny_outputs(model, config):
    from omniplug.build import build_dataset
    from omniplug.data.collate import Collator

    model.eval()
    data = build_dataset(config, "edit_train")
    torch.manual_seed(0)
    embeds = torch.randn(8, 12, model.llm.hidden_size) * 0.02
    masks, images = [], []
    with torch.no_grad():
        logits = model.llm(embeds, torch.ones(8, 12, dtype=torch.long)).logits
        for i in range(8):
            sample = data[i]
            sample.targets = {}
            gen = model.generate(Collator(model, for_generation=True)([sample]), max_new_tokens=1,
                                 answer_prefix="<seg> " + "".join(model.decoders["gen"].tokens))
            (mask,), (image,) = gen.decoder_outputs["seg"][0], gen.decoder_outputs["gen"][0]
            masks.append(np.asarray(mask.mask, dtype=bool))
            images.append(np.asarray(image, dtype=np.int16))
    return logits, masks, images


def tiny_round_trip(work: Path) -> dict:
    from omniplug.build import build_model
    from omniplug.cli import main
    from omniplug.config import load_config
    from omniplug.fixtures.tiny import write_all
    from omniplug.train import train

    tiny = work / "tiny"
    write_all(tiny)
    run = work / "run"
    config = load_config(tiny / "edit.yaml", [*FAST, "trainer.iters_per_epoch=20", "trainer.init_lr=1e-2",
                                              f"trainer.output_dir={run}"])
    train(config)
    source = build_model(tiny / "edit.yaml", [*FAST, f"one_model.weights={run}"])
    lora = max(p.abs().max().item() for n, p in source.named_parameters() if "lora_B" in n)
    ref = _tiny_outputs(source, config)
    rows = {"lora_B_max_abs": lora}
    for mode, flags in (("adapter", []), ("merge", ["--merge-lora"]), ("adapter_only", ["--adapter-only"])):
        out = work / f"export_{mode}"
        t0 = time.perf_counter()
        assert main(["export", "-c", str(tiny / "edit.yaml"), *FAST, f"one_model.weights={run}", "--out", str(out),
                     *flags]) == 0
        seconds = time.perf_counter() - t0
        logits, masks, images = _tiny_outputs(build_model(out / "omniplug.yaml"), config)
        rows[mode] = {
            "export_s": round(seconds, 2),
            "files_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20, 3),
            "logits_max_abs_diff": float((logits - ref[0]).abs().max()),
            "mask_pixels_equal": float(np.mean([np.mean(a == b) for a, b in zip(masks, ref[1])])),
            "image_mean_abs_diff_0_255": float(np.mean([np.abs(a - b).mean() for a, b in zip(images, ref[2])])),
            "image_max_abs_diff_0_255": int(max(np.abs(a - b).max() for a, b in zip(images, ref[2]))),
        }
        print(mode, rows[mode], flush=True)
    return rows


def bundled_round_trip(work: Path) -> dict:
    from omniplug.build import build_dataset
    from omniplug.cli import main
    from omniplug.config import load_config
    from omniplug.infer.pipeline import Pipeline

    shipped = REPO / "configs/default/omni_tiny.yaml"
    out = work / "bundled"
    t0 = time.perf_counter()
    assert main(["export", "-c", str(shipped), "--out", str(out)]) == 0
    seconds = time.perf_counter() - t0
    a, b = Pipeline.from_config(shipped), Pipeline.from_config(out / "omniplug.yaml")
    config = load_config(shipped, [f"dataset.{name}.{k}" for name in ("caption_vqa", "referring") for k in ("n=500", "seed=1")]
                         + ["dataset.caption_vqa.root=${config_dir}/../../data/world/val", "dataset.caption_vqa.split=val",
                            "dataset.referring.root=${config_dir}/../../data/world/val", "dataset.referring.split=val"])
    same_text = same_masks = total = 0
    for name in ("caption_vqa", "referring"):
        data = build_dataset(config, name)
        for i in range(20):
            sample = data[i]
            prompt = sample.turns[0].text
            ra, rb = a(sample.images[0], prompt), b(sample.images[0], prompt)
            total += 1
            same_text += ra.text == rb.text
            same_masks += [np.asarray(m.mask).tolist() for m in ra.masks] == [np.asarray(m.mask).tolist() for m in rb.masks]
    return {"export_s": round(seconds, 2),
            "files_mb": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20, 2),
            "requests": total, "same_text": same_text, "same_masks": same_masks}


def main() -> int:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="omniplug-export-") as tmp:
        work = Path(tmp)
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
                  "tiny_edit": tiny_round_trip(work), "bundled": bundled_round_trip(work)}
    path = Path(__file__).with_name("roundtrip.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
