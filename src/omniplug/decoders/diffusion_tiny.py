"""Tiny Stable-Diffusion-layout checkpoint, a synthetic generation/editing set and ``gen.yaml``.

``write_gen(DIR)`` (run by ``omniplug tiny``) writes:

* ``DIR/sd`` — random ``unet/`` (64 px through an 8x8 latent, 32-d cross-attention), ``vae/``
  (factor 8), ``scheduler/`` (DDIM with Stable Diffusion's noise schedule), ``text_encoder/``
  (CLIP text, 32-d) and ``tokenizer/``, exactly as diffusers lays out a real checkpoint;
* ``DIR/gen_data`` — one coloured shape per 64 px image: ``generation.jsonl`` /
  ``generation_val.jsonl`` (image, caption) and ``editing.jsonl`` (source, instruction, target, mask);
* ``DIR/gen.yaml`` — tiny CLIP + Llama + ``gen_transformer`` projector + ``diffusion`` decoder;
* ``DIR/edit.yaml`` — the same plus the tiny SAM decoder (when ``DIR/sam`` exists): ``<seg>`` and
  ``<gen>`` in one answer, i.e. language-driven editing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from omniplug.tiny import register_writer, write_tokenizer

SIZE = 64
CROSS_DIM = 32
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (235, 235, 235)


def unet_config(*, in_channels: int = 4, sample_size: int = SIZE // 8) -> dict:
    return dict(sample_size=sample_size, in_channels=in_channels, out_channels=4, layers_per_block=1,
                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CROSS_DIM,
                attention_head_dim=8, norm_num_groups=8)


def write_sd(out: Path, *, seed: int = 0, inpainting: bool = False, pixel_space: bool = False,
             text_encoder: bool = True, unet_extra: dict | None = None, patch: int = 1) -> Path:
    """A random SD-layout directory. ``inpainting``: a 9-channel UNet; ``pixel_space``: no VAE, the
    UNet works on 3-channel pixels at 32 px (``patch`` p > 1: on p x p patches folded into 3 p^2
    channels, for the decoder's ``patch_size``); ``unet_extra``: more UNet config keys (pixel space
    only), e.g. ``class_embed_type``."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    if pixel_space:  # 32 px; three levels with attention only at 8x8 keep it cheap on CPU
        cfg = unet_config(in_channels=3 * patch ** 2, sample_size=32 // patch)
        cfg.update(out_channels=3 * patch ** 2, block_out_channels=(16, 32, 64),
                   down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), **(unet_extra or {}))
        UNet2DConditionModel(**cfg).save_pretrained(str(out / "unet"))
    else:
        UNet2DConditionModel(**unet_config(in_channels=9 if inpainting else 4)).save_pretrained(str(out / "unet"))
        AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 32, 32, 32), latent_channels=4,
                      layers_per_block=1, norm_num_groups=8, sample_size=SIZE).save_pretrained(str(out / "vae"))
    if pixel_space:  # DDPM's linear schedule (the last step is almost pure noise) with x0 clipped to
        # [-1, 1], without which the x0 estimates of the first, noisiest steps blow up in pixel space
        schedule = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=True)
    else:  # Stable Diffusion's
        schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    DDIMScheduler(num_train_timesteps=1000, set_alpha_to_one=False, steps_offset=1,
                  **schedule).save_pretrained(str(out / "scheduler"))
    if text_encoder:
        from transformers import CLIPTextConfig, CLIPTextModel

        tok = write_tokenizer(out / "tokenizer")
        config = CLIPTextConfig(vocab_size=len(tok), hidden_size=CROSS_DIM, intermediate_size=2 * CROSS_DIM,
                                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        CLIPTextModel(config).save_pretrained(str(out / "text_encoder"))
    return out


# --- synthetic data --------------------------------------------------------------------------------
def _draw(shape: str, colour: str, box: tuple[int, int, int, int]) -> tuple[Image.Image, np.ndarray]:
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    mask = Image.new("L", (SIZE, SIZE), 0)
    for canvas, fill in ((ImageDraw.Draw(image), COLOURS[colour]), (ImageDraw.Draw(mask), 255)):
        x0, y0, x1, y1 = box
        if shape == "circle":
            canvas.ellipse(box, fill=fill)
        elif shape == "square":
            canvas.rectangle(box, fill=fill)
        else:
            canvas.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image, np.asarray(mask) > 127


def write_gen_data(root: Path, *, n_train: int = 24, n_val: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)
    lines: dict[str, list[str]] = {"generation.jsonl": [], "generation_val.jsonl": [], "editing.jsonl": []}
    for i in range(n_train + n_val):
        shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], colours[int(rng.integers(len(colours)))]
        new = colours[(colours.index(colour) + 1 + int(rng.integers(len(colours) - 1))) % len(colours)]
        side = int(rng.integers(20, 36))
        x0, y0 = int(rng.integers(2, SIZE - side - 2)), int(rng.integers(2, SIZE - side - 2))
        box = (x0, y0, x0 + side, y0 + side)
        image, mask = _draw(shape, colour, box)
        target, _ = _draw(shape, new, box)
        name = f"{i:04d}"
        image.save(root / "images" / f"{name}.png")
        target.save(root / "images" / f"{name}_edit.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "images" / f"{name}_mask.png")
        split = "generation.jsonl" if i < n_train else "generation_val.jsonl"
        lines[split].append(json.dumps({"id": name, "image": f"images/{name}.png", "caption": f"a {colour} {shape}"}))
        if i < n_train:
            lines["editing.jsonl"].append(json.dumps({
                "id": name, "source": f"images/{name}.png", "instruction": f"make the {colour} {shape} {new}",
                "target": f"images/{name}_edit.png", "mask": f"images/{name}_mask.png", "caption": f"a {new} {shape}"}))
    for file, rows in lines.items():
        (root / file).write_text("".join(r + "\n" for r in rows))
    return root


GEN_YAML = """\
# Text -> image, all tiny: CLIP + MLP projector + Llama; 4 <gen_i> tokens -> gen_transformer ->
# 8 x 32 conditioning -> random UNet/VAE (64 px). Try:
#   omniplug infer -c {name} --prompt "Draw a red circle." --out out/
includes: [catalogue.yaml]
projector:
  gen_proj: {{type: gen_transformer, num_queries: 8, width: 64, depth: 1, heads: 4}}
decoder:
  tiny_sd: {{type: diffusion, model_name_or_path: "${{base_dir}}/sd", num_tokens: 4, seq_len: 8,
            num_inference_steps: 10, guidance_scale: 3.0, text_encoder: text_encoder, train_unet: true}}
dataset:
  gen_train: {{type: generation_pairs, data_dir: "${{base_dir}}/gen_data", num_tokens: 4}}
  gen_val: {{type: generation_pairs, data_dir: "${{base_dir}}/gen_data", file: generation_val.jsonl, num_tokens: 4}}
one_model:
  encoder: tiny_clip
  in_projector: image_proj
  tokenizer: tiny_tok
  llm: tiny_llama
  out_projector: gen_proj
  decoder: tiny_sd
  conv_type: llava_v1
  train_mode: 1
data:
  train: {{gen_train: 1}}
  eval: [gen_val]
  max_length: 256
trainer:
  lr_sched: constant
  init_lr: 1.0e-3
  max_epoch: 1
  iters_per_epoch: 30
  batch_size_train: 4
  batch_size_eval: 4
  output_dir: "${{base_dir}}/runs/gen"
  log_every: 5
  seed: 0
"""

EDIT_YAML = """\
# Language-driven editing, all tiny: one answer holds <seg> (tiny SAM: the region) and
# <gen_0..3> (tiny SD: the new content, inpainted inside that mask). The seg decoder is listed
# first so that its masks reach the diffusion decoder. Try:
#   omniplug infer -c {name} --image IMG --prompt "make the red circle blue" --out out/
includes: [gen.yaml]
projector:
  edit_sam_proj: {{type: mlp, depth: 2, activation: relu}}
decoder:
  edit_sam: {{type: sam, model_name_or_path: "${{base_dir}}/sam"}}
dataset:
  edit_train: {{type: editing_triples, data_dir: "${{base_dir}}/gen_data", num_tokens: 4}}
one_model:
  decoder: null
  decoders: {{seg: edit_sam, gen: tiny_sd}}
  out_projector: {{seg: edit_sam_proj, gen: gen_proj}}
data:
  train: {{edit_train: 1}}
  eval: []
trainer:
  output_dir: "${{base_dir}}/runs/edit"
"""


@register_writer
def write_gen(out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"sd": write_sd(out / "sd"), "gen_data": write_gen_data(out / "gen_data")}
    (out / "gen.yaml").write_text(GEN_YAML.format(name=out / "gen.yaml"))
    paths["gen_config"] = out / "gen.yaml"
    if (out / "sam").is_dir():
        (out / "edit.yaml").write_text(EDIT_YAML.format(name=out / "edit.yaml"))
        paths["edit_config"] = out / "edit.yaml"
    return paths
