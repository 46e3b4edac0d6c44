"""Shared behaviour of LLM plugins that wrap a transformers causal LM (composition, no subclassing)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from peft import LoraConfig, TrainableTokensConfig, get_peft_model
from torch import Tensor, nn

from omniplug.base import LanguageModel
from omniplug.config.schema import ConfigError
from omniplug.types import GenerateOutput, LLMOutput


def quant_settings(*, bits: int | None, load_in_8bit: bool, quant_backend: str, what: str) -> tuple[int | None, str, dict]:
    """Resolve the seed's ``load_in_8bit`` / ``bits`` keys into (bits, backend, from_pretrained kwargs)."""
    from omniplug.llms.quant import bnb_config, resolve_backend

    if load_in_8bit:
        if bits not in (None, 8):
            raise ValueError(f"{what}: load_in_8bit: true contradicts bits: {bits}")
        bits = 8
    if bits is None:
        return None, "none", {}
    backend = resolve_backend(quant_backend)  # type: ignore[arg-type]
    if backend == "torch_int8" and bits != 8:
        raise ValueError(f"{what}: quant_backend torch_int8 is 8-bit only; for bits: 4 use quant_backend: quanto")
    if backend == "bitsandbytes":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: quant_backend bitsandbytes needs a CUDA GPU; on CPU use quant_backend: quanto")
        return bits, backend, {"quantization_config": bnb_config(bits), "device_map": {"": 0}}
    return bits, backend, {}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class CausalLMWrapper(LanguageModel):
    """Holds ``self.model`` (a transformers ``*ForCausalLM``) and the LoRA settings."""

    checkpoint_modules = ("model",)

    def __init__(self, *, model: nn.Module, freeze: bool, lora_enable: bool, lora_r: int, lora_alpha: int,
                 lora_dropout: float, target_modules: list[str] | None, bits: int | None = None,
                 quant_backend: str = "quanto", adapter: str | None = None, what: str = "llm") -> None:
        super().__init__()
        if adapter is not None and lora_enable:
            raise ConfigError(f"{what}: `adapter` loads a trained LoRA and lora_enable would add a second, untrained one; "
                             f"set lora_enable: false (the adapter's own weights stay trainable in train_mode 1)")
        self.model = model
        self.adapter = adapter
        self.bits = bits
        self.quant_backend = quant_backend
        self.freeze = freeze
        self.lora_enable = lora_enable
        self.lora_r, self.lora_alpha, self.lora_dropout = lora_r, lora_alpha, lora_dropout
        self.target_modules = list(target_modules or DEFAULT_LORA_TARGETS)
        self.hidden_size = int(model.config.hidden_size)

    # --- contract -----------------------------------------------------------------------------
    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor, labels: Tensor | None = None) -> LLMOutput:
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, output_hidden_states=True,
                         use_cache=False)
        loss = causal_lm_loss(out.logits, labels) if labels is not None else None
        return LLMOutput(logits=out.logits, hidden_states=out.hidden_states[-1], loss=loss)

    @torch.no_grad()
    def generate(self, inputs_embeds: Tensor, attention_mask: Tensor, *, max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 eos_token_id: int | None = None, pad_token_id: int = 0, return_hidden: bool = False,
                 **extra: Any) -> GenerateOutput:
        """``return_hidden`` also returns the last layer's hidden states and the raw logits computed while
        generating (see ``GenerateOutput``), so that nobody has to run the sequence again to get them."""
        options: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, eos_token_id=eos_token_id,
                                       pad_token_id=pad_token_id, **extra)
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        else:  # keep greedy decoding free of sampling knobs from the checkpoint's generation_config
            options.update(temperature=None, top_p=None, top_k=None)
        if return_hidden:
            options.update(return_dict_in_generate=True, output_hidden_states=True, output_logits=True)
        out = self.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **options)
        seq = out.sequences if return_hidden else out
        lengths = torch.full((seq.shape[0],), seq.shape[1], dtype=torch.long, device=seq.device)
        if eos_token_id is not None:
            is_eos = seq == eos_token_id
            has = is_eos.any(dim=1)
            first = is_eos.float().argmax(dim=1)
            lengths = torch.where(has, first + 1, lengths)
        if not return_hidden:
            return GenerateOutput(sequences=seq, lengths=lengths)
        # out.hidden_states: one tuple per step (all layers); step 0 covers the prompt, step j the token j-1
        hidden = torch.cat([step[-1] for step in out.hidden_states], dim=1)
        return GenerateOutput(sequences=seq, lengths=lengths, hidden_states=hidden, logits=torch.stack(out.logits, dim=1))

    def new_cache(self) -> Any | None:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        # sliding-window and linear-attention layers drop or fold positions: rows could not join a running batch
        return cache if all(type(layer) is DynamicLayer for layer in cache.layers) else None

    @torch.no_grad()
    def forward_cached(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                       cache: Any) -> tuple[Tensor, Tensor]:
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        return out.logits[:, -1], out.hidden_states[-1]

    def resize_token_embeddings(self, size: int) -> None:
        """Grow (or shrink) the vocabulary. New rows start at the old rows' mean plus small noise from a
        fixed-seed generator, so building the same config twice gives the same frozen weights (the
        trained part of new rows is saved separately, see ``make_trainable``)."""
        old = self.model.get_input_embeddings().num_embeddings
        if old == size:
            return
        self.model.resize_token_embeddings(size, mean_resizing=False)
        if size > old:
            generator = torch.Generator().manual_seed(0)
            layers = [self.model.get_input_embeddings(), self.model.get_output_embeddings()]
            with torch.no_grad():
                for layer in {id(m): m for m in layers if m is not None}.values():
                    weight = layer.weight
                    base = weight[:old].float()
                    # drawn on the CPU (same rows on any device), then moved: a quantised LLM loads on the GPU
                    noise = torch.randn((size - old, weight.shape[1]), generator=generator).to(weight.device)
                    weight[old:] = (base.mean(0) + 0.5 * base.std(0) * noise).to(weight.dtype)

    def load_adapter(self) -> None:
        """``adapter: DIR``: a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, as
        ``omniplug export`` or peft's ``save_pretrained`` write it) put on the base model, after the vocabulary
        was resized (its trainable token rows index the grown embedding)."""
        if self.adapter is None:
            return
        from peft import PeftModel

        from omniplug.weights.hf_local import local_checkpoint

        path = local_checkpoint(self.adapter, what="llm adapter", must_contain=("adapter_config.json",))
        self.model = PeftModel.from_pretrained(self.model, str(path), is_trainable=True)

    def make_trainable(self, *, full: bool, new_token_ids: list[int]) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):  # an adapter loaded from its folder (load_adapter)
            if full:
                self.model = self.model.merge_and_unload()
                self.model.requires_grad_(True)
                return
            self.model.requires_grad_(False)
            for name, param in self.model.named_parameters():
                if "lora_" in name or "trainable_tokens_" in name:
                    param.requires_grad_(True)
            return
        if full:
            self.model.requires_grad_(True)
            return
        self.model.requires_grad_(False)
        token_targets = self._token_targets(new_token_ids)
        if self.lora_enable:
            config = LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                                target_modules=self.target_modules, task_type="CAUSAL_LM",
                                trainable_token_indices=token_targets or None)
            self.model = get_peft_model(self.model, config)
        elif token_targets:
            config = TrainableTokensConfig(target_modules=list(token_targets), token_indices=new_token_ids)
            self.model = get_peft_model(self.model, config)

    def enable_gradient_checkpointing(self) -> None:
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{type(self.model).__name__} does not support gradient checkpointing; set "
                                      f"trainer.gradient_checkpointing to false")
        # non-reentrant: works with frozen embeddings (LoRA) without forcing inputs to require gradients
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def layer_class_names(self) -> list[str]:
        return list(getattr(self.model, "_no_split_modules", None) or [])

    def quantize_weights(self) -> None:
        """CPU backends quantise here, once the weights are final (bitsandbytes did it while loading)."""
        from omniplug.weights.hf_local import building_on_meta

        if not self.bits or building_on_meta():  # a plan counts fp weights
            return
        if self.quant_backend == "quanto":
            from omniplug.llms.quant import quanto_quantize

            quanto_quantize(self.model, self.bits)
        elif self.quant_backend == "torch_int8":
            from omniplug.llms.quant import torch_int8_quantize

            torch_int8_quantize(self.model)

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str,
                          lora: Literal["merge", "adapter", "adapter_only"] = "merge",
                          adapter_directory: Path | None = None, adapter_ref: str | None = None) -> dict[str, Any]:
        """The LLM as a transformers causal-LM folder (``AutoModelForCausalLM.from_pretrained`` loads it; the grown
        vocabulary included). A peft-wrapped LLM (LoRA, trainable token rows): ``merge`` folds the adapter into
        the weights (``merge_and_unload``); ``adapter`` writes the base without it and the adapter beside it
        (``adapter_directory``); ``adapter_only`` writes only the adapter, for a base the user already has.
        Consumes the wrapper: its model is merged or unloaded afterwards."""
        from peft import PeftModel

        entry = {k: v for k, v in entry.items() if k not in ("from_scratch", "adapter")}
        peft = isinstance(self.model, PeftModel)
        if lora == "adapter_only":
            if not peft:
                raise ValueError("--adapter-only shares a peft fine-tune (LoRA or trainable token rows, train_mode 1), "
                                 "but this LLM trains all its weights (train_mode 2 or no peft); export without it")
            assert adapter_directory is not None and adapter_ref is not None
            self._save_adapter(adapter_directory)
            return {**entry, "lora_enable": False, "adapter": adapter_ref}  # the base others have, as it was named
        entry["type"] = "hf_causal_lm"  # a llava LLM leaves as the causal LM it wraps
        model = self.model
        if peft and lora == "merge":
            model = self.model = self.model.merge_and_unload()
        elif peft:
            assert adapter_directory is not None and adapter_ref is not None
            self._save_adapter(adapter_directory)
            model = self.model = self.model.unload()
            entry["adapter"] = adapter_ref
        model.save_pretrained(str(directory))  # transformers writes safetensors only
        return {**entry, "model_name_or_path": ref, "lora_enable": False}

    def _save_adapter(self, directory: Path) -> None:
        # the embedding rows of new tokens are rebuilt by resize_token_embeddings (fixed seed) and the trained ones
        # travel as trainable-token values: no full copy of the embedding in the adapter
        self.model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)

    def _token_targets(self, ids: list[int]) -> dict[str, list[int]]:
        if not ids:
            return {}
        targets = {_short_name(self.model, self.model.get_input_embeddings()): list(ids)}
        head = self.model.get_output_embeddings()
        if head is not None and head.weight is not self.model.get_input_embeddings().weight:
            targets[_short_name(self.model, head)] = list(ids)
        return targets


def _short_name(root: nn.Module, module: nn.Module) -> str:
    for name, m in root.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError("module not found in model")


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Next-token cross entropy; positions labelled -100 carry no loss."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    if not (shift_labels != -100).any():
        return shift_logits.sum() * 0.0
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100)
