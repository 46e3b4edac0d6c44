"""LLM ``llava``: the language model inside a transformers LLaVA checkpoint, unchanged.

The checkpoint's ``language_model`` and ``lm_head`` are placed in a causal-LM shell of the text
config's own class (built on the meta device, so nothing is allocated twice); transformers'
``generate`` then works as for any causal LM.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

from omniplug.hf import load_pretrained, local_checkpoint
from omniplug.llms._causal import DTYPES, CausalLMWrapper
from omniplug.registry import LLMS


@LLMS.register("llava")
class LlavaLM(CausalLMWrapper):
    def __init__(self, *, model_name_or_path: str, dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                 freeze: bool = False, lora_enable: bool = False, lora_r: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.05, target_modules: list[str] | None = None) -> None:
        path = local_checkpoint(model_name_or_path, what="llm llava")
        llava = load_pretrained(LlavaForConditionalGeneration, path)
        with torch.device("meta"):
            shell = AutoModelForCausalLM.from_config(llava.config.text_config)
        shell.model = llava.model.language_model
        shell.lm_head = llava.lm_head
        shell.generation_config = llava.generation_config
        shell.to(DTYPES[dtype])
        super().__init__(model=shell, freeze=freeze, lora_enable=lora_enable, lora_r=lora_r, lora_alpha=lora_alpha,
                         lora_dropout=lora_dropout, target_modules=target_modules)
