"""Trainability is config applied once: ``train_mode`` plus per-module ``freeze`` flags.

* 0 — projector pre-training: only the input projector trains.
* 1 — fine-tuning: output projectors and decoders (each decides which of its parts train, e.g.
  SAM's ``train_mask_decoder``), the input projector unless frozen, the LLM through LoRA when
  ``lora_enable`` (else frozen) plus the embedding/output rows of the new special tokens.
* 2 — full: every module trains except those whose entry says ``freeze: true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omniplug.model import OneModel


def apply_train_mode(model: "OneModel", mode: int, *, new_token_ids: list[int]) -> None:
    if mode not in (0, 1, 2):
        raise ValueError(f"train_mode must be 0, 1 or 2, got {mode}")
    model.requires_grad_(False)
    if model.in_projector is not None and (mode == 0 or not model.in_projector.freeze):
        model.in_projector.requires_grad_(True)
    if mode == 0:
        return
    for proj in model.out_projectors.values():
        proj.requires_grad_(not getattr(proj, "freeze", False))
    for decoder in model.decoders.values():
        decoder.set_trainable()
    if mode == 2 and model.encoder is not None and not model.encoder.freeze:
        model.encoder.requires_grad_(True)
    for name, head in model.dense_heads.items():  # a head trains with the module whose feature map it reads
        source = model.encoder if name == "encoder" else model.decoders[name]
        head.requires_grad_(any(p.requires_grad for p in source.parameters()))
    llm_full = mode == 2 and not model.llm.freeze
    model.llm.make_trainable(full=llm_full, new_token_ids=sorted(set(new_token_ids)))
