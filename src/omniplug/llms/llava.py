"""LLM ``llava``: the language model inside a transformers LLaVA checkpoint, unchanged.

The checkpoint's ``language_model`` and ``lm_head`` are placed in a causal-LM shell of the text
config's own class (built on the meta device, so nothing is allocated twice); transformers'
``generate`` then works as for any causal LM.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

from omniplug.weights.hf_local import load_pretrained, local_checkpoint
from omniplug.llms._causal import DTYPES, CausalLMWrapper, quant_settings
from omniplug.registry import LLMS


@LLMS.register("llava")
class LlavaLM(CausalLMWrapper):
    def __init__(self, *, model_name_or_path: str, dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                 freeze: bool = False, lora_enable: bool = False, lora_r: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.05, target_modules: list[str] | None = None,
                 bits: Literal[4, 8] | None = None, load_in_8bit: bool = False,
                 quant_backend: Literal["auto", "bitsandbytes", "quanto", "torch_int8"] = "auto",
                 adapter: str | None = None) -> None:
        path = local_checkpoint(model_name_or_path, what="llm llava")
        bits, backend, quant_kwargs = quant_settings(bits=bits, load_in_8bit=load_in_8bit, quant_backend=quant_backend,
                                                     what="llm llava")
        if quant_kwargs:
            raise ValueError("llm llava: bitsandbytes loading of a shared LLaVA checkpoint is not supported; "
                             "use quant_backend: quanto, or load the language model as hf_causal_lm")
        llava = load_pretrained(LlavaForConditionalGeneration, path)
        with torch.device("meta"):
            shell = AutoModelForCausalLM.from_config(llava.config.text_config)
        shell.model = llava.model.language_model
        shell.lm_head = llava.lm_head
        shell.generation_config = llava.generation_config
        shell.to(DTYPES[dtype])
        super().__init__(model=shell, freeze=freeze, lora_enable=lora_enable, lora_r=lora_r, lora_alpha=lora_alpha,
                         lora_dropout=lora_dropout, target_modules=target_modules, bits=bits, quant_backend=backend,
                         adapter=adapter, what="llm llava")
