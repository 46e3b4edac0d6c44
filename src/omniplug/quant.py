"""Weight quantisation of the LLM: ``bits: 8 | 4`` (or the seed's ``load_in_8bit``) in an ``llm`` entry.

* CUDA: bitsandbytes (int8 / nf4), applied while loading (``quantization_config``).
* CPU: optimum-quanto (qint8 / qint4) applied to every Linear layer of the LLM once its weights are
  final (after trained weights are loaded). torchao's int4 kernels do not run on x86 CPUs.

``weight_bytes`` counts the real storage of quantised tensor subclasses (``get_memory_footprint()``
under-counts them).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Backend = Literal["auto", "bitsandbytes", "quanto"]


def resolve_backend(backend: Backend) -> str:
    if backend == "auto":
        return "bitsandbytes" if torch.cuda.is_available() else "quanto"
    return backend


def bnb_config(bits: int):
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ImportError("bits on CUDA needs bitsandbytes: pip install -e '.[cuda]'") from exc
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_use_double_quant=True)


def quanto_quantize(module: nn.Module, bits: int) -> None:
    """Quantise the weights of every Linear in ``module`` in place (activations stay float)."""
    try:
        from optimum.quanto import freeze, qint4, qint8, quantize
    except ImportError as exc:
        raise ImportError("bits on CPU needs optimum-quanto: pip install -e '.[quant]'") from exc
    # adapters (LoRA, trainable token rows) stay float: they are small and may be trained further
    quantize(module, weights=qint8 if bits == 8 else qint4, exclude=["*lora_*", "*token_adapter*", "*modules_to_save*"])
    freeze(module)
    module.requires_grad_(False)


def _plain_bytes(t: Tensor) -> int:
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(_plain_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by parameters and buffers, counting quantised subclasses by their inner storage."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        data = t.data if isinstance(t, nn.Parameter) else t
        total += _plain_bytes(data)
    return total
