"""The ONLY place that turns a Config into modules through the registries, and applies trainability once.

Trainability is config applied once (:func:`apply_train_mode`): ``train_mode`` plus per-module ``freeze`` flags.

* 0 — projector pre-training: only the input projector trains.
* 1 — fine-tuning: output projectors and decoders (each decides which of its parts train, e.g.
  SAM's ``train_mask_decoder``), the input projector unless frozen, the LLM through LoRA when
  ``lora_enable`` (else frozen) plus the embedding/output rows of the new special tokens.
* 2 — full: every module trains except those whose entry says ``freeze: true``.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omniplug.base import Decoder, Encoder, LanguageModel, Projector, Tokenizer
from omniplug.config import Config, EntryConfig, load_config
from omniplug.config.schema import ConfigError, signature_params
from omniplug.model import OneModel
from omniplug.registry import REGISTRIES, load_builtin_plugins
from omniplug.weights.hf_local import shared_loads


def build_entry(entry: EntryConfig, **supplied: Any) -> Any:
    """Instantiate one catalogue entry; ``supplied`` fills arguments the YAML left out and is
    checked against values the YAML did give."""
    load_builtin_plugins()
    cls = REGISTRIES[entry.section].get(entry.type)
    params = dict(entry.params)
    accepted = signature_params(cls)
    for key, value in supplied.items():
        if key not in accepted:
            continue
        if key in params and params[key] != value:
            raise ConfigError(
                f"{entry.where}: {key}={params[key]} does not fit the model: it must be {value} here "
                f"(set {key}: {value}, or remove the key and omniplug infers it)"
            )
        params[key] = value
    try:
        return cls(**params)
    except ConfigError as exc:
        raise ConfigError(f"{entry.where}: {exc}") from None


def build_model(config: Config | str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                load_weights: bool = True) -> OneModel:
    """Build ``one_model`` from a Config (or a YAML path), apply ``train_mode`` once, and load
    ``one_model.weights`` when set."""
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    om = config.one_model
    seed = config.trainer.seed if om.module_seeds else None
    with shared_loads():
        tokenizer: Tokenizer = build_entry(config.entry("tokenizer", om.tokenizer, where="one_model.tokenizer"))
        with _init_rng(seed, "llm"):
            llm: LanguageModel = build_entry(config.entry("llm", om.llm, where="one_model.llm"))
        encoder: Encoder | None = None
        in_projector: Projector | None = None
        if om.encoder:
            with _init_rng(seed, "encoder"):
                encoder = build_entry(config.entry("encoder", om.encoder, where="one_model.encoder"))
            pentry = config.entry("projector", om.in_projector, where="one_model.in_projector")
            with _init_rng(seed, "in_projector"):
                in_projector = build_entry(pentry, in_features=encoder.out_dim, out_features=llm.hidden_size)
            _check_dims(pentry, in_projector, encoder.out_dim, llm.hidden_size, "encoder", "LLM")
        decoders: dict[str, Decoder] = {}
        for task, dentry in config.decoder_entries().items():
            with _init_rng(seed, f"decoder.{task}"):
                decoders[task] = build_entry(dentry)
        _check_tokens(decoders, om.image_token)
        new_tokens = [om.image_token] + [tok for d in decoders.values() for tok in (*d.tokens, *d.extra_tokens)]
        new_token_ids = tokenizer.add_special_tokens(new_tokens)
        with _init_rng(seed, "new_token_embeddings"):
            llm.resize_token_embeddings(len(tokenizer))
        llm.load_adapter()
        for decoder in decoders.values():
            decoder.bind_tokenizer(tokenizer)
        out_projectors: dict[str, nn.Module] = {}
        for task, decoder in decoders.items():
            if not decoder.reads_prompts:  # e.g. action tokens read from the LM head's logits
                continue
            pentry = config.out_projector_entry(task)
            if pentry is None:
                if decoder.prompt_dim != llm.hidden_size:
                    raise ConfigError(
                        f"decoder {task!r} expects {decoder.prompt_dim}-d prompts but the LLM is {llm.hidden_size}-d and "
                        f"one_model.out_projector is not set; add an out projector (e.g. type: mlp)"
                    )
                continue
            with _init_rng(seed, f"out_projector.{task}"):
                proj = build_entry(pentry, in_features=llm.hidden_size, out_features=decoder.prompt_dim)
            _check_dims(pentry, proj, llm.hidden_size, decoder.prompt_dim, "LLM", f"decoder {task!r}")
            out_projectors[task] = proj
    with _init_rng(seed, "one_model"):  # the dense heads
        model = OneModel(tokenizer=tokenizer, llm=llm, encoder=encoder, in_projector=in_projector, decoders=decoders,
                         out_projectors=out_projectors, conv_type=om.conv_type, image_token=om.image_token,
                         image_position=om.image_position,
                         ce_loss_weight=om.ce_loss_weight, decoder_loss_weights=om.decoder_loss_weights,
                         dense_classes=om.dense_classes, dense_loss_weights=om.dense_loss_weights)
    with _init_rng(seed, "train_mode"):
        apply_train_mode(model, om.train_mode, new_token_ids=new_token_ids)
    model.config = config  # type: ignore[assignment]
    if load_weights and om.weights:
        from omniplug.weights import load_trainable

        load_trainable(model, om.weights)
    elif load_weights and om.init_weights:
        from omniplug.weights import init_from

        report = init_from(model, om.init_weights)
        print(f"one_model.init_weights {om.init_weights}: {report.summary()}", file=sys.stderr)
    model.llm.quantize_weights()
    return model


def build_dataset(config: Config, name: str, *, splits: list[str] | None = None) -> Any:
    """Instantiate the ``dataset`` catalogue entry ``name`` (a ``torch.utils.data.Dataset`` of ``Sample``).

    When the entry sets no ``split`` and its reader takes one, one dataset per name in ``splits``
    (``trainer.train_splits`` for training) is built and they are concatenated."""
    entry = config.entry("dataset", name, where=f"data: dataset {name!r}")
    takes_split = "split" in signature_params(REGISTRIES[entry.section].get(entry.type))
    if not splits or "split" in entry.params or not takes_split:
        return build_entry(entry)
    parts = [build_entry(entry, split=split) for split in splits]
    if len(parts) == 1:
        return parts[0]
    from torch.utils.data import ConcatDataset

    return ConcatDataset(parts)


@contextmanager
def _init_rng(seed: int | None, place: str) -> Iterator[None]:
    """``one_model.module_seeds``: the block draws its random numbers from torch's generator seeded by
    (seed, place) and leaves the global generator as it found it. ``seed`` None: the block just runs."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{seed}/{place}".encode()))
        yield


def _check_dims(entry: EntryConfig, proj: Any, in_dim: int, out_dim: int, src: str, dst: str) -> None:
    if proj.in_features != in_dim or proj.out_features != out_dim:
        raise ConfigError(
            f"{entry.where}: projector maps {proj.in_features} -> {proj.out_features} but the {src} gives {in_dim} "
            f"and the {dst} needs {out_dim}; pick a projector made for these sizes"
        )


def _check_tokens(decoders: dict[str, Decoder], image_token: str) -> None:
    seen: dict[str, str] = {image_token: "the image placeholder"}
    for task, d in decoders.items():
        if not d.tokens:
            raise ConfigError(f"decoder {task!r} declares no trigger token")
        for tok in (*d.tokens, *d.extra_tokens):
            if tok in seen:
                raise ConfigError(f"token {tok!r} of decoder {task!r} is already used by {seen[tok]}; set a different 'token'")
            seen[tok] = f"decoder {task!r}"


def apply_train_mode(model: OneModel, mode: int, *, new_token_ids: list[int]) -> None:
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
