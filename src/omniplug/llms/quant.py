"""Weight quantisation of the LLM: ``bits: 8 | 4`` (or the seed's ``load_in_8bit``) in an ``llm`` entry.

* CUDA: bitsandbytes (int8 / nf4), applied while loading (``quantization_config``).
* CPU, ``quant_backend: quanto`` (the default there): optimum-quanto (qint8 / qint4) applied to every
  Linear layer of the LLM once its weights are final (after trained weights are loaded); with 4 bits
  the LM head (``get_output_embeddings()``) is qint8, as 4-bit output heads are what changes short
  answers most. quanto dequantises the weights for each matmul: it saves memory, not time.
* CPU, ``quant_backend: torch_int8`` (8 bits only): PyTorch's dynamic quantisation — int8 weights,
  activations quantised per call, and the matmuls run as int8 GEMMs (fbgemm / oneDNN on x86). The one
  int8 path measured faster than fp32 here (``omniplug bench infer``); torchao's int8 configs ran
  slower than fp32 on this CPU, and its int4 kernels do not run on x86 CPUs.
* Both CPU backends store the LLM's input embedding table as int8 rows (:class:`Int8Embedding`).

Only the LLM is quantised: the image encoder, projectors and decoders stay float.

``weight_bytes`` counts the real storage of quantised tensor subclasses (``get_memory_footprint()``
under-counts them).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Backend = Literal["auto", "bitsandbytes", "quanto", "torch_int8"]

#: adapters (LoRA, trainable token rows) stay float: they are small and may be trained further
ADAPTER_PATTERNS = ["*lora_*", "*token_adapter*", "*modules_to_save*"]


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
    adapters = ADAPTER_PATTERNS
    head = _output_head_name(module) if bits == 4 else None
    head_patterns = [head, f"{head}.*"] if head else []
    quantize(module, weights=qint8 if bits == 8 else qint4, exclude=adapters + head_patterns)
    if head_patterns:
        quantize(module, weights=qint8, include=head_patterns, exclude=adapters)
    freeze(module)
    quantize_input_embedding(module)
    module.requires_grad_(False)


def torch_int8_quantize(module: nn.Module) -> None:
    """Every plain Linear in ``module`` (adapters excepted) becomes PyTorch's dynamic int8 Linear, in place."""
    import fnmatch
    import warnings

    names = {name for name, m in module.named_modules() if type(m) is nn.Linear
             and not any(fnmatch.fnmatch(name, p) for p in ADAPTER_PATTERNS)}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; 2.13 still ships it
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

        quantize_dynamic(module, {name: default_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)
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
    for m in module.modules():  # dynamic int8 Linears keep their weights packed, outside parameters and buffers
        packed = getattr(m, "_packed_params", None)
        if packed is not None and callable(getattr(m, "weight", None)):
            weight, bias = m.weight(), m.bias()
            total += weight.numel() * weight.element_size() + 8 + (0 if bias is None else bias.numel() * bias.element_size())
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        data = t.data if isinstance(t, nn.Parameter) else t
        total += _plain_bytes(data)
    return total
