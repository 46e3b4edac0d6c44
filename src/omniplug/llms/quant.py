"""Weight quantisation of the LLM: ``bits: 8 | 4`` (or the seed's ``load_in_8bit``) in an ``llm`` entry.

* CUDA: bitsandbytes (int8 / nf4), applied while loading (``quantization_config``).
* CPU: optimum-quanto (qint8 / qint4) applied to every Linear layer of the LLM once its weights are
  final (after trained weights are loaded); with 4 bits the LM head (``get_output_embeddings()``) is
  qint8, as 4-bit output heads are what changes short answers most. The LLM's input embedding table
  is stored as int8 rows (:class:`Int8Embedding`, for 8 and 4 bits: quanto has no embedding type).
  torchao's int4 kernels do not run on x86 CPUs.

Only the LLM is quantised: the image encoder, projectors and decoders stay float.

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
    adapters = ["*lora_*", "*token_adapter*", "*modules_to_save*"]
    head = _output_head_name(module) if bits == 4 else None
    head_patterns = [head, f"{head}.*"] if head else []
    quantize(module, weights=qint8 if bits == 8 else qint4, exclude=adapters + head_patterns)
    if head_patterns:
        quantize(module, weights=qint8, include=head_patterns, exclude=adapters)
    freeze(module)
    quantize_input_embedding(module)
    module.requires_grad_(False)


def _output_head_name(model: nn.Module) -> str | None:
    """Qualified name of ``model.get_output_embeddings()`` inside ``model`` (None when it has none)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    return next((name for name, m in model.named_modules() if m is head and name), None)


class Int8Embedding(nn.Module):
    """A frozen lookup table stored as int8 with one float scale per row (symmetric, absmax / 127);
    rows are dequantised as they are looked up."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        weight = embedding.weight.detach()
        scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        self.register_buffer("qweight", torch.round(weight.float() / scale).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(weight.dtype))
        self.num_embeddings, self.embedding_dim = weight.shape
        self.padding_idx = embedding.padding_idx

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.qweight[input_ids].to(self.scale.dtype) * self.scale[input_ids]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


def quantize_input_embedding(model: nn.Module) -> bool:
    """Replace ``model.get_input_embeddings()`` by an :class:`Int8Embedding` when it is a plain
    ``nn.Embedding`` (an adapter-wrapped table, e.g. PEFT's trainable token rows, stays float)."""
    get = getattr(model, "get_input_embeddings", None)
    table = get() if callable(get) else None
    if type(table) is not nn.Embedding:
        return False
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is table:
                setattr(parent, name, Int8Embedding(table))
                return True
    return False


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
