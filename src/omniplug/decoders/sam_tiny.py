"""Tiny SAM checkpoint, a synthetic referring-segmentation set and ``seg.yaml`` for ``omniplug tiny``.

``write_sam(DIR)`` writes:

* ``DIR/sam`` — a random ``SamModel`` (64 px input, 32-d prompts) + its ``SamImageProcessorPil``;
* ``DIR/seg_data/shapes_refcoco`` — coloured shapes on plain backgrounds in the refCOCO layout
  (``instances.json`` with polygon and RLE masks, ``refs.json``, ``images/``), splits train/val;
* ``DIR/seg.yaml`` — tiny CLIP + tiny Llama + tiny SAM with an ``mlp`` out projector, the two
  splits as ``data.train`` / ``data.eval`` and a small ``trainer`` section.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

from omniplug.data.seg_common import decode_coco_segmentation
from omniplug.tiny import register_writer

SAM_SIZE = 64
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ((245, 245, 245), (200, 200, 200), (120, 120, 120))


def sam_config(*, hidden: int = 32, image_size: int = SAM_SIZE, patch: int = 8) -> SamConfig:
    vision = SamVisionConfig(hidden_size=hidden, output_channels=hidden, num_hidden_layers=2, num_attention_heads=2,
                             image_size=image_size, patch_size=patch, window_size=4, global_attn_indexes=[1],
                             num_pos_feats=hidden // 2, mlp_dim=hidden * 2, initializer_range=0.02)
    prompt = SamPromptEncoderConfig(hidden_size=hidden, image_size=image_size, patch_size=patch, mask_input_channels=4)
    mask = SamMaskDecoderConfig(hidden_size=hidden, mlp_dim=hidden * 2, num_hidden_layers=2, num_attention_heads=2,
                                iou_head_hidden_dim=hidden)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=mask)


def write_sam_checkpoint(out: Path, *, hidden: int = 32, seed: int = 0) -> Path:
    from transformers import SamImageProcessorPil

    torch.manual_seed(seed)
    model = SamModel(sam_config(hidden=hidden))
    with torch.no_grad():
        # transformers initialises SAM for loading trained weights (std 0.02, vision 1e-10): activations near
        # zero that a short test run cannot move. Use PyTorch's default layer init (unit-scale activations, like a
        # trained SAM) and SAM's own random-Fourier scale 1.0 for the positional encoding.
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Embedding)):
                module.reset_parameters()
        model.shared_image_embedding.positional_embedding.normal_(std=1.0)
    model.save_pretrained(str(out))
    low = SAM_SIZE // 4
    SamImageProcessorPil(size={"longest_edge": SAM_SIZE}, pad_size={"height": SAM_SIZE, "width": SAM_SIZE},
                         mask_size={"longest_edge": low}, mask_pad_size={"height": low, "width": low}).save_pretrained(str(out))
    return out


# --- synthetic referring segmentation ------------------------------------------------------------
def _circle_mask(box: tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).ellipse(box, fill=1)
    return np.asarray(canvas, dtype=bool)


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[list[float]]:
    x0, y0, x1, y1 = box
    if shape == "square":
        return [[x0, y0, x1 + 1, y0, x1 + 1, y1 + 1, x0, y1 + 1]]
    return [[(x0 + x1 + 1) / 2, y0, x1 + 1, y1 + 1, x0, y1 + 1]]


def write_shapes_refcoco(root: Path, *, n_train: int = 24, n_val: int = 8, height: int = 48, width: int = 64,
                         seed: int = 0) -> Path:
    """Images of 2-3 coloured shapes, one ref per shape ("red circle", "the circle on the left")."""
    from pycocotools import mask as mask_utils

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns, refs = [], [], []
    cells = [(c, r) for r in range(2) for c in range(2)]
    cw, ch = width // 2, height // 2
    for image_id in range(n_train + n_val):
        split = "train" if image_id < n_train else "val"
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        pixels[:] = rng.choice(BACKGROUNDS)
        kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], rng.randint(2, 3))
        placed = []
        for (colour, shape), (col, row) in zip(kinds, rng.sample(cells, len(kinds))):
            size = rng.randint(min(cw, ch) // 2 + 2, min(cw, ch) - 2)
            x0 = col * cw + rng.randint(0, cw - size - 1)
            y0 = row * ch + rng.randint(0, ch - size - 1)
            box = (x0, y0, x0 + size - 1, y0 + size - 1)
            if shape == "circle":  # compressed RLE, as COCO stores crowd masks
                mask = _circle_mask(box, height, width)
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:  # polygons
                segmentation = _polygon(shape, box)
                mask = decode_coco_segmentation(segmentation, height, width)
            pixels[mask] = COLOURS[colour]
            placed.append((colour, shape, box, mask, segmentation))
        file_name = f"{split}_{image_id:04d}.png"
        Image.fromarray(pixels).save(root / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        xs = sorted(p[2][0] for p in placed)
        for colour, shape, box, mask, segmentation in placed:
            ann_id = len(anns) + 1
            anns.append({"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(shape) + 1,
                         "segmentation": segmentation, "area": int(mask.sum()), "iscrowd": 0,
                         "bbox": [box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1]})
            sents = [f"{colour} {shape}"]
            if box[0] == xs[0]:
                sents.append(f"{shape} on the left")
            elif box[0] == xs[-1]:
                sents.append(f"{shape} on the right")
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "category_id": SHAPES.index(shape) + 1,
                         "split": split, "sentences": [{"sent": s, "sent_id": ann_id * 10 + k, "tokens": s.split()}
                                                       for k, s in enumerate(sents)]})
    categories = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    (root / "refs.json").write_text(json.dumps(refs))
    return root


SEG_YAML = """\
# Referring segmentation, all tiny: CLIP + MLP projector + Llama + SAM (LISA's hand-off).
# Try: omniplug eval -c {name}    omniplug infer -c {name} --image IMG --prompt "Please segment the red circle."
includes: [catalogue.yaml]
projector:
  sam_prompt_proj: {{type: mlp, depth: 2, activation: relu}}
decoder:
  tiny_sam: {{type: sam, model_name_or_path: "${{base_dir}}/sam"}}
dataset:
  shapes_train: {{type: refcoco, data_dir: "${{base_dir}}/seg_data/shapes_refcoco", split: train}}
  shapes_val: {{type: refcoco, data_dir: "${{base_dir}}/seg_data/shapes_refcoco", split: val}}
one_model:
  encoder: tiny_clip
  in_projector: image_proj
  tokenizer: tiny_tok
  llm: tiny_llama
  out_projector: sam_prompt_proj
  decoder: tiny_sam
  conv_type: llava_v1
  train_mode: 1
data:
  train: {{shapes_train: 1}}
  eval: [shapes_val]
  max_length: 256
trainer:
  lr_sched: constant
  init_lr: 1.0e-3
  max_epoch: 1
  iters_per_epoch: 30
  batch_size_train: 4
  batch_size_eval: 4
  output_dir: "${{base_dir}}/runs/seg"
  log_every: 5
  seed: 0
"""


@register_writer
def write_sam(out: Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"sam": write_sam_checkpoint(out / "sam"),
             "seg_data": write_shapes_refcoco(out / "seg_data" / "shapes_refcoco")}
    (out / "seg.yaml").write_text(SEG_YAML.format(name=out / "seg.yaml"))
    paths["seg_config"] = out / "seg.yaml"
    return paths
