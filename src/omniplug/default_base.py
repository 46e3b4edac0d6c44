"""The architecture of the bundled default model (``configs/default/``), written as config-only
checkpoint folders: ``config.json`` files, the SAM/CLIP preprocessing configs, a scheduler, and a
BPE tokenizer trained offline on the procedural world's text. No weights: every plugin entry of
``omni_tiny.yaml`` says ``from_scratch: true`` and ``omniplug train`` learns all of them.

Regenerate with ``python -m omniplug.default_base configs/default/base``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

IMAGE = 64


def world_texts(n: int = 600, seed: int = 7) -> list[str]:
    """Every kind of text the world's readers produce (questions, answers, expressions, captions)."""
    from omniplug.data.world_tasks import _reader, ensure_split

    texts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_split(root=Path(tmp) / "w", split="train", n=n, seed=seed)
        for task in ("caption_vqa", "referring", "reasoning", "semantic", "part", "panoptic", "generation", "editing"):
            reader = _reader(task, root, {})
            for i in range(min(len(reader), 3 * n)):
                texts.extend(t.text for t in reader[i].turns)
    return texts


def write_base(out: str | Path) -> Path:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPImageProcessorPil, SamImageProcessorPil

    from omniplug.decoders.sam_tiny import sam_config
    from omniplug.tiny import clip_config, llama_config, train_tokenizer

    out = Path(out)
    tok = train_tokenizer(world_texts(), vocab_size=768)
    (out / "llama").mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out / "llama"))
    llama_config(vocab=len(tok), hidden=256, layers=4, pad_id=tok.pad_token_id).save_pretrained(str(out / "llama"))
    clip = clip_config(hidden=128, image_size=IMAGE, patch=8, layers=3)
    clip.save_pretrained(str(out / "clip"))
    CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(
        str(out / "clip"))
    sam_config(hidden=64, image_size=IMAGE, patch=4).save_pretrained(str(out / "sam"))
    low = IMAGE // 4
    SamImageProcessorPil(size={"longest_edge": IMAGE}, pad_size={"height": IMAGE, "width": IMAGE},
                         mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low}).save_pretrained(
        str(out / "sam"))
    unet = dict(sample_size=IMAGE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64, 64),
                down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), cross_attention_dim=128,
                attention_head_dim=16, norm_num_groups=8)
    UNet2DConditionModel.from_config(unet).save_config(str(out / "sd" / "unet"))
    write_scheduler(out / "sd")
    write_sd_patch(out / "sd_patch")
    (out / "README.md").write_text("Config-only checkpoints of the default model's architecture (no weights); "
                                   "written by `python -m omniplug.default_base`.\n")
    return out


def write_scheduler(sd: Path) -> None:
    from diffusers import DDIMScheduler

    DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(str(sd / "scheduler"))


def write_sd_patch(sd: Path, patch: int = 4) -> None:
    """The UNet for the decoder's ``patch_size: 4``: 4 x 4 pixel patches folded into 48 channels, a
    16 x 16 grid, cross-attention at 8 x 8 and 4 x 4 (~6x cheaper per step than ``sd/``'s 64 x 64)."""
    from diffusers import UNet2DConditionModel

    channels = 3 * patch ** 2
    unet = dict(sample_size=IMAGE // patch, in_channels=channels, out_channels=channels, layers_per_block=1,
                block_out_channels=(64, 64, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=128,
                attention_head_dim=16, norm_num_groups=8)
    UNet2DConditionModel.from_config(unet).save_config(str(sd / "unet"))
    write_scheduler(sd)


if __name__ == "__main__":
    print(json.dumps(str(write_base(sys.argv[1] if len(sys.argv) > 1 else "configs/default/base"))))
