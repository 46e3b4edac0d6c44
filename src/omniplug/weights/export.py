"""``omniplug export``: a trained OneModel as standard folders that load without omniplug, and as an omniplug
config that loads them back exactly.

Layout of an export folder::

    omniplug.yaml          the config that loads the export as it is (base_dir: the folder itself)
    README.md              model card: what each folder is, the training config, eval figures, licences
    export.json            manifest: mode, source config and weights, module folders, file sizes
    training_config.yaml   the resolved config the weights were trained with
    llm/                   transformers causal LM (LoRA merged, or the base when the adapter stays apart)
                           + the tokenizer with omniplug's task tokens
    llm_adapter/           peft adapter (adapter_config.json + adapter_model.safetensors), when kept apart
    encoder/  in_projector/  decoders/TASK/  out_projectors/TASK/    each module's library folder, if it has one
    heads.safetensors      everything else: projectors, dense heads, decoder parts outside their library model

Modes: ``adapter`` (default: a peft-wrapped LLM keeps its adapter apart from the base), ``merge``
(``merge_and_unload``) and ``adapter_only`` (only the adapter and the trained non-LLM parts; the config points at
the original checkpoints, for a fine-tune of a base others already have). A model without peft exports the same
in the first two modes.

The folder appears complete or not at all: everything is written into a hidden sibling and renamed into place
at the end. Only safetensors (and JSON/YAML/tokenizer files) are written.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from safetensors.torch import save_file
from torch import Tensor, nn

from omniplug.config import Config
from omniplug.config.schema import ConfigError

Mode = Literal["adapter", "merge", "adapter_only"]
HEADS_NAME = "heads.safetensors"
CONFIG_NAME = "omniplug.yaml"
HEADS_FORMAT = "export"  # safetensors metadata "omniplug": tells load_trainable what the file is
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclass
class Part:
    """One module of the model as the export sees it: where its state lives and which entry builds it."""

    prefix: str  # its name in model.state_dict(), e.g. "decoders.seg"
    module: nn.Module
    section: str  # catalogue section of its entry: encoder, projector, llm, decoder
    entry: str  # entry name
    folder: str  # folder in the export, e.g. "decoders/seg"

    def covered(self) -> list[str]:
        """State-dict prefixes the module's checkpoint folder holds."""
        return [f"{self.prefix}.{name}." for name in getattr(self.module, "checkpoint_modules", ())]


@dataclass
class ExportResult:
    directory: Path
    mode: Mode
    folders: dict[str, str] = field(default_factory=dict)  # module -> folder
    heads: list[str] = field(default_factory=list)  # tensor names in heads.safetensors


def model_parts(model, config: Config) -> list[Part]:
    """The model's modules with their catalogue entries, in data-flow order."""
    om = config.one_model
    parts: list[Part] = []
    if model.encoder is not None:
        parts.append(Part("encoder", model.encoder, "encoder", om.encoder, "encoder"))
        parts.append(Part("in_projector", model.in_projector, "projector", om.in_projector, "in_projector"))
    parts.append(Part("llm", model.llm, "llm", om.llm, "llm"))
    for task, entry in config.decoder_entries().items():
        parts.append(Part(f"decoders.{task}", model.decoders[task], "decoder", entry.name, f"decoders/{task}"))
    for task, proj in model.out_projectors.items():
        parts.append(Part(f"out_projectors.{task}", proj, "projector", config.out_projector_entry(task).name,
                          f"out_projectors/{task}"))
    return parts


def export_model(model, config: Config, out: str | Path, *, mode: Mode = "adapter", overwrite: bool = False,
                 source: str | None = None, weights: str | None = None, training_config: Path | None = None,
                 quant_params: dict[str, Any] | None = None) -> ExportResult:
    """Write ``model`` (built from ``config``, trained weights loaded) to ``out``. The model is consumed: its
    LLM is merged or unloaded on the way, so build one for the export alone. ``quant_params``: quantisation keys
    of the LLM entry that the model was built without and that the exported config keeps."""
    out = Path(out).expanduser().resolve()
    _check_target(out, overwrite=overwrite)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        result = _write(model, config, tmp, mode=mode, source=source, weights=weights,
                        training_config=training_config, quant_params=quant_params or {})
        _check_safe_files(tmp)
        for folder in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()  # e.g. out_projectors/ when every projector went to heads.safetensors
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.directory = out
    return result


def _check_target(out: Path, *, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"export: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"export: {out} is not empty; choose a new folder or pass --overwrite to replace it")


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write(model, config: Config, root: Path, *, mode: Mode, source: str | None, weights: str | None,
           training_config: Path | None, quant_params: dict[str, Any]) -> ExportResult:
    tree = json.loads(json.dumps(config.resolved))  # a deep copy of plain data
    result = ExportResult(directory=root, mode=mode)
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    parts = model_parts(model, config)
    kept_apart: list[str] = []  # adapter_only: prefixes loaded from the original checkpoints
    for part in parts:
        entry = dict(tree[part.section][part.entry])
        folder = root / part.folder
        ref = "${base_dir}/" + part.folder
        if part.section == "llm":
            new = _export_llm(part, entry, root, mode=mode)
            new.update(quant_params)
        elif mode == "adapter_only" and part.covered():
            if entry.get("from_scratch"):
                raise ValueError(f"--adapter-only shares a fine-tune of checkpoints others have, but {part.section} "
                                 f"{part.entry!r} was trained from scratch (from_scratch: true): its weights exist "
                                 f"only here; export without --adapter-only")
            new = entry  # the original checkpoint, by its absolute path; trained parts go to heads
            kept_apart.append(part.prefix)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            new = part.module.export_pretrained(folder, entry, ref=ref)
            if not any(folder.iterdir()):
                folder.rmdir()
        if not part.covered() and new.get("model_name_or_path") and new is entry:
            raise ValueError(f"export: {part.section} {part.entry!r} reads {new['model_name_or_path']} but its plugin "
                             f"does not say which of its weights come from there (checkpoint_modules)")
        entries[(part.section, part.entry)] = new
        if (root / part.folder).is_dir():
            result.folders[part.prefix] = part.folder
    tokenizer_entry = dict(tree["tokenizer"][config.one_model.tokenizer])
    if mode != "adapter_only":
        model.tokenizer.save(str(root / "llm"))
        tokenizer_entry["model_name_or_path"] = "${base_dir}/llm"
    entries[("tokenizer", config.one_model.tokenizer)] = tokenizer_entry
    result.heads = _write_heads(model, parts, root / HEADS_NAME, trained_only_under=kept_apart)
    _write_config(tree, entries, root)
    _write_manifest_and_card(root, result, config, source=source, weights=weights, training_config=training_config,
                             entries=entries)
    return result


def _export_llm(part: Part, entry: dict[str, Any], root: Path, *, mode: Mode) -> dict[str, Any]:
    folder, adapter = root / "llm", root / "llm_adapter"
    if mode == "adapter_only":
        if entry.get("from_scratch"):
            raise ValueError(f"--adapter-only needs a base others have, but llm {part.entry!r} was trained from "
                             f"scratch (from_scratch: true); export without --adapter-only")
    else:
        folder.mkdir()
    return part.module.export_pretrained(folder, entry, ref="${base_dir}/llm", lora=mode, adapter_directory=adapter,
                                         adapter_ref="${base_dir}/llm_adapter")


def _write_heads(model, parts: list[Part], path: Path, *, trained_only_under: list[str]) -> list[str]:
    """Every tensor of the state dict that no exported folder holds; under a module kept at its original
    checkpoint (``adapter_only``), only the trained ones."""
    covered = [p for part in parts for p in part.covered()]
    apart = tuple(f"{p}." for p in trained_only_under)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    state: dict[str, Tensor] = {}
    for name, value in model.state_dict().items():
        if name.startswith("llm."):
            continue  # the LLM leaves whole: its folder and adapter
        if name.startswith(apart):
            if name in trained:
                state[name] = value
            continue
        if any(name.startswith(c) for c in covered):
            continue
        state[name] = value
    modules = sorted({name.rsplit(".", 1)[0] for name in state})
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path),
              metadata={"format": "pt", "omniplug": HEADS_FORMAT, "modules": json.dumps(modules)})
    return sorted(state)


def _write_config(tree: dict[str, Any], entries: dict[tuple[str, str], dict[str, Any]], root: Path) -> None:
    """The resolved config with the model's entries pointing into the export; other model entries removed
    (they may name checkpoints that do not travel). Written last: a folder with it is complete."""
    for section in ("encoder", "projector", "tokenizer", "llm", "decoder"):
        used = {name: entry for (sec, name), entry in entries.items() if sec == section}
        if used:
            tree[section] = used
        else:
            tree.pop(section, None)
    tree.pop("config_dir", None)
    tree = {"base_dir": "${config_dir}", **{k: v for k, v in tree.items() if k != "base_dir"}}
    tree["one_model"]["weights"] = "${base_dir}/" + HEADS_NAME
    header = ("# Written by `omniplug export`: loads the exported folders beside this file (base_dir is this folder).\n"
              "#   omniplug serve -c omniplug.yaml   |   omniplug infer -c omniplug.yaml --image IMG --prompt TEXT\n")
    (root / CONFIG_NAME).write_text(header + yaml.safe_dump(tree, sort_keys=False))


def _licence(path: str | None) -> str:
    """The licence a checkpoint folder states (its model card's ``license:`` or its config's), if any."""
    if not path:
        return "not stated"
    folder = Path(path)
    card = folder / "README.md"
    if card.is_file():
        text = card.read_text(errors="replace")
        if text.startswith("---"):
            front = text.split("---", 2)[1]
            try:
                meta = yaml.safe_load(front) or {}
            except yaml.YAMLError:
                meta = {}
            if isinstance(meta, dict) and meta.get("license"):
                return str(meta["license"])
    config = folder / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("license")
        except (json.JSONDecodeError, AttributeError):
            value = None
        if value:
            return str(value)
    return "not stated"


_WHAT = {"encoder": "vision encoder", "in_projector": "input projector (image tokens -> LLM)", "llm": "language model",
         "decoders": "decoder", "out_projectors": "output projector (LLM -> decoder prompt)"}


def _write_manifest_and_card(root: Path, result: ExportResult, config: Config, *, source: str | None,
                             weights: str | None, training_config: Path | None,
                             entries: dict[tuple[str, str], dict[str, Any]]) -> None:
    if training_config is not None and training_config.is_file():
        shutil.copyfile(training_config, root / "training_config.yaml")
    else:
        (root / "training_config.yaml").write_text(config.to_yaml())
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = {"format": "omniplug-export", "version": 1, "mode": result.mode, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "source_config": source, "source_weights": weights, "folders": result.folders,
                "heads": {"file": HEADS_NAME, "tensors": len(result.heads)}, "files": files}
    (root / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    om = config.one_model
    rows = []
    for (section, name), entry in entries.items():
        original = config.catalogues.get(section, {}).get(name)
        original_path = original.params.get("model_name_or_path") if original else None
        scratch = bool(original and original.params.get("from_scratch"))
        where = entry.get("model_name_or_path", "-")
        licence = ("trained from scratch here" if scratch else _licence(original_path) if original_path
                   else f"trained here ({HEADS_NAME})" if section != "tokenizer" else "not stated")
        rows.append(f"| {section} `{name}` | `{entry['type']}` | `{where}` | {licence} |")
    types = {part_prefix: entry["type"] for part_prefix, entry in _prefix_entries(config, entries).items()}
    folders = "\n".join(f"| `{folder}/` | {_WHAT.get(prefix.split('.')[0], prefix)}"
                        f"{' `' + prefix.split('.', 1)[1] + '`' if '.' in prefix else ''} (`{types.get(prefix, '?')}`) |"
                        for prefix, folder in result.folders.items())
    figures = _eval_figures(weights)
    apart = (root / "llm_adapter").is_dir()
    mode_text = {"adapter": "the LLM's peft adapter kept apart in `llm_adapter/`" if apart
                 else "the LLM has no adapter: all its weights are in `llm/`",
                 "merge": "LoRA merged into the LLM (`merge_and_unload`)",
                 "adapter_only": "only the LLM adapter and the trained non-LLM parts; the config points at the "
                                 "original checkpoints"}[result.mode]
    card = f"""# omniplug export

Exported by `omniplug export` ({mode_text}) from `{source or 'a config'}`
{f'with weights `{weights}`' if weights else 'without trained weights'}. Decoders: {', '.join(config.decoder_entries()) or 'none'}.

```
omniplug serve -c omniplug.yaml
omniplug infer -c omniplug.yaml --image IMG --prompt "..."
```

## Folders

| folder | what |
|---|---|
{folders or '| (none) | |'}
| `{HEADS_NAME}` | weights with no library format of their own: projectors, dense heads, decoder parts outside their library model ({len(result.heads)} tensors) |
| `omniplug.yaml` | the config that loads this folder (`base_dir` is the folder) |
| `training_config.yaml` | the resolved config of training |

Each library folder loads without omniplug, e.g. `AutoModelForCausalLM.from_pretrained("llm")` (with
`AutoTokenizer.from_pretrained("llm")`, task tokens included){', `PeftModel.from_pretrained(base, "llm_adapter")`' if (root / 'llm_adapter').is_dir() else ''}.

## Modules and licences

| entry | type | loads from | licence of the source |
|---|---|---|---|
{chr(10).join(rows)}

Image placeholder `{om.image_token}`; conversation template `{om.conv_type}`; train_mode {om.train_mode}.

## Evaluation

{figures}
"""
    (root / "README.md").write_text(card)


def _prefix_entries(config: Config, entries: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    om = config.one_model
    out: dict[str, dict[str, Any]] = {"llm": entries[("llm", om.llm)]}
    if om.encoder:
        out["encoder"] = entries[("encoder", om.encoder)]
        out["in_projector"] = entries[("projector", om.in_projector)]
    for task, entry in config.decoder_entries().items():
        out[f"decoders.{task}"] = entries[("decoder", entry.name)]
        proj = config.out_projector_entry(task) if om.out_projector else None
        if proj is not None:
            out[f"out_projectors.{task}"] = entries[("projector", proj.name)]
    return out


def _eval_figures(weights: str | None) -> str:
    """The last validation figures of the run the weights come from (``eval_metrics.jsonl``), when there are."""
    if not weights:
        return "No trained weights: nothing was evaluated."
    run = Path(weights)
    run = run if run.is_dir() else run.parent
    for folder in (run, run.parent):
        log = folder / "eval_metrics.jsonl"
        if log.is_file():
            last: dict[str, dict] = {}
            for line in log.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                last[str(row.get("dataset"))] = row
            lines = [f"- `{name}` at step {row.get('step')}: " +
                     ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in row.items() if k not in ("step", "dataset"))
                     for name, row in last.items()]
            return f"Last validation of the training run (`{log}`):\n\n" + "\n".join(lines)
    return ("No evaluation file beside the weights; `omniplug eval -c omniplug.yaml --json` measures the export "
            "(figures of the bundled model: bench/default/README.md).")


def _check_safe_files(root: Path) -> None:
    bad = [str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in _PICKLE_SUFFIXES]
    if bad:
        raise ConfigError(f"export: a library wrote pickle files {bad}; omniplug exports safetensors only")


def load_heads(model, state: dict[str, Tensor], file: Path) -> None:
    """Load an export's ``heads.safetensors``: every tensor must exist in the model with its shape, and every
    tensor of the model must come from a checkpoint folder (``checkpoint_modules``) or from this file."""
    import torch

    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise ConfigError(f"weights {file}: tensors {unknown[:5]} are not in this model; was the export's "
                          f"omniplug.yaml edited?")
    config = getattr(model, "config", None)
    covered = tuple(p for part in model_parts(model, config) for p in part.covered()) if config is not None else ()
    missing = sorted(k for k in own if k not in state and not k.startswith(covered) and not k.startswith("llm."))
    if missing:
        raise ConfigError(f"weights {file} do not hold {missing[:5]}{'...' if len(missing) > 5 else ''}, which no "
                          f"checkpoint folder provides; re-export the model")
    with torch.no_grad():
        for name, value in state.items():
            target = own[name]
            if tuple(target.shape) != tuple(value.shape):
                raise ConfigError(f"weights {file}: tensor {name} has shape {tuple(value.shape)}, the model has "
                                  f"{tuple(target.shape)}")
            target.copy_(value.to(target.dtype))
