"""LLM ``hf_causal_lm``: any transformers causal LM checkpoint in a local directory."""

from __future__ import annotations

from typing import Literal

from transformers import AutoModelForCausalLM

from omniplug.weights.hf_local import init_from_config, load_pretrained, local_checkpoint
from omniplug.llms._causal import DTYPES, CausalLMWrapper, quant_settings
from omniplug.registry import LLMS


@LLMS.register("hf_causal_lm")
class HFCausalLM(CausalLMWrapper):
    def __init__(self, *, model_name_or_path: str, dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                 freeze: bool = False, lora_enable: bool = False, lora_r: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.05, target_modules: list[str] | None = None,
                 bits: Literal[4, 8] | None = None, load_in_8bit: bool = False,
                 quant_backend: Literal["auto", "bitsandbytes", "quanto", "torch_int8"] = "auto", adapter: str | None = None,
                 attn_implementation: Literal["eager", "sdpa"] = "sdpa", from_scratch: bool = False) -> None:
        path = local_checkpoint(model_name_or_path, what="llm hf_causal_lm")
        bits, backend, quant_kwargs = quant_settings(bits=bits, load_in_8bit=load_in_8bit, quant_backend=quant_backend,
                                                     what="llm hf_causal_lm")
        if from_scratch:
            if quant_kwargs:
                raise ValueError("llm hf_causal_lm: from_scratch and bitsandbytes quantisation do not go together")
            model = init_from_config(AutoModelForCausalLM, path, dtype=DTYPES[dtype],
                                     attn_implementation=attn_implementation)
        else:
            model = load_pretrained(AutoModelForCausalLM, path, dtype=DTYPES[dtype],
                                    attn_implementation=attn_implementation, **quant_kwargs)
        super().__init__(model=model, freeze=freeze, lora_enable=lora_enable, lora_r=lora_r, lora_alpha=lora_alpha,
                         lora_dropout=lora_dropout, target_modules=target_modules, bits=bits, quant_backend=backend,
                         adapter=adapter, what="llm hf_causal_lm")
