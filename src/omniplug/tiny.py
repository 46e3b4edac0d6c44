"""Tiny random checkpoints of every supported family, written with the real library classes.

``omniplug tiny --out DIR`` uses these to give anyone an offline smoke test; the test-suite
loads the very same directories back through YAML, so the real loading code is what is tested.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM,
                          LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerFast)

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]

_CORPUS = """
A chat between a curious human and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the human's questions.
USER: ASSISTANT: What is in the image? Please segment the red circle. It is here. Sure, the mask is shown.
a small red circle, a large blue square, a green triangle, a yellow star, a purple hexagon, an orange shape
white black pink brown cyan grey left right above below next to the largest the smallest the only one
house roof wall door tree crown trunk car body wheels sky grass water how many are there yes no
draw an image of replace with remove move the picture shows describe this scene in one sentence
go to pick up put next to open the door turn left right forward drop toggle done mission
0 1 2 3 4 5 6 7 8 9 10 zero one two three four five six seven eight nine ten
""".strip().splitlines()


def train_tokenizer(texts: list[str], *, vocab_size: int = 512, extra_special: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on ``texts`` (no unknown characters possible)."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL + list(extra_special or []),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", clean_up_tokenization_spaces=False)


def write_tokenizer(out: Path, *, extra_special: list[str] | None = None) -> PreTrainedTokenizerFast:
    tok = train_tokenizer(_CORPUS, extra_special=extra_special)
    tok.save_pretrained(str(out))
    return tok


def clip_config(*, hidden: int = 64, image_size: int = 32, patch: int = 8, layers: int = 2) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                            num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=hidden)


def write_clip(out: Path, *, hidden: int = 64, image_size: int = 32, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    CLIPVisionModel(clip_config(hidden=hidden, image_size=image_size)).save_pretrained(str(out))
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(str(out))
    return out


def llama_config(*, vocab: int, hidden: int = 64, layers: int = 2, pad_id: int | None = None) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       bos_token_id=1, eos_token_id=2, pad_token_id=pad_id, tie_word_embeddings=False)


def write_llama(out: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    tok = write_tokenizer(out)
    torch.manual_seed(seed)
    LlamaForCausalLM(llama_config(vocab=len(tok), hidden=hidden, layers=layers, pad_id=tok.pad_token_id)).save_pretrained(str(out))
    return out


def write_llava(out: Path, *, seed: int = 0) -> Path:
    tok = write_tokenizer(out, extra_special=["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(seed)
    config = LlavaConfig(vision_config=clip_config(), text_config=llama_config(vocab=len(tok), pad_id=tok.pad_token_id),
                         image_token_id=image_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    LlavaForConditionalGeneration(config).save_pretrained(str(out))
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(out))
    return out


CATALOGUE = """\
# Tiny checkpoints written by `omniplug tiny`; base_dir is this folder.
base_dir: {base_dir}
encoder:
  tiny_clip: {{type: clip, model_name_or_path: "${{base_dir}}/clip", select_feature_layer: -2}}
  tiny_clip_wide: {{type: clip, model_name_or_path: "${{base_dir}}/clip_wide", select_feature_layer: -2}}
  llava_vision: {{type: llava_vision, model_name_or_path: "${{base_dir}}/llava"}}
projector:
  image_proj: {{type: mlp, depth: 2, activation: gelu}}
  llava_proj: {{type: llava, model_name_or_path: "${{base_dir}}/llava"}}
  out_mlp: {{type: mlp, depth: 2, activation: relu}}
tokenizer:
  tiny_tok: {{type: hf, model_name_or_path: "${{base_dir}}/llama"}}
  llava_tok: {{type: hf, model_name_or_path: "${{base_dir}}/llava"}}
llm:
  tiny_llama: {{type: hf_causal_lm, model_name_or_path: "${{base_dir}}/llama", lora_enable: true, lora_r: 4, lora_alpha: 8}}
  tiny_llama_wide: {{type: hf_causal_lm, model_name_or_path: "${{base_dir}}/llama_wide", lora_enable: true, lora_r: 4}}
  llava_lm: {{type: llava, model_name_or_path: "${{base_dir}}/llava"}}
"""

COMPOSED = """\
# CLIP + MLP projector + Llama, all tiny. Try: omniplug inspect -c {name} one_model.llm=tiny_llama_wide
includes: [catalogue.yaml]
one_model:
  encoder: tiny_clip
  in_projector: image_proj
  tokenizer: tiny_tok
  llm: tiny_llama
  conv_type: llava_v1
  train_mode: 1
"""

LLAVA = """\
# A transformers LLaVA checkpoint used unchanged: its vision tower, projector and LLM.
includes: [catalogue.yaml]
one_model:
  encoder: llava_vision
  in_projector: llava_proj
  tokenizer: llava_tok
  llm: llava_lm
  conv_type: llava_v1
  train_mode: 1
"""


def write_all(out: str | Path) -> dict[str, Path]:
    """Write every tiny checkpoint and ready configs into ``out``; returns name -> path."""
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "clip": write_clip(out / "clip"),
        "clip_wide": write_clip(out / "clip_wide", hidden=96, seed=1),
        "llama": write_llama(out / "llama"),
        "llama_wide": write_llama(out / "llama_wide", hidden=96, seed=1),
        "llava": write_llava(out / "llava"),
    }
    (out / "catalogue.yaml").write_text(CATALOGUE.format(base_dir=out))
    (out / "composed.yaml").write_text(COMPOSED.format(name=out / "composed.yaml"))
    (out / "llava.yaml").write_text(LLAVA)
    import importlib

    for module in _WRITER_MODULES:
        importlib.import_module(module)
    for extra in _EXTRA_WRITERS:
        paths.update(extra(out))
    paths.update({"catalogue": out / "catalogue.yaml", "composed": out / "composed.yaml", "llava_config": out / "llava.yaml"})
    return paths


#: modules that register extra writers (segmentation, generation, ...): fn(out_dir) -> {name: path}
_WRITER_MODULES: tuple[str, ...] = ("omniplug.decoders.sam_tiny", "omniplug.decoders.diffusion_tiny",
                                      "omniplug.envs.tiny_act")
_EXTRA_WRITERS: list = []


def register_writer(fn):
    _EXTRA_WRITERS.append(fn)
    return fn
