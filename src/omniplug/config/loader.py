"""Load YAML configs in the seed format into typed values.

OmegaConf is used at the edge only (includes, ``${base_dir}`` interpolation, CLI dotlists); the
rest of omniplug sees :class:`Config` and the typed sections below. Every problem is reported at
load time with the file, the entry, the key and what is accepted.

File format::

    includes: [../modules/encoders.yaml, ../modules/llms.yaml]   # relative to this file
    base_dir: /data
    encoder:   {clip_encoder: {type: clip, model_name_or_path: ${base_dir}/clip, ...}}
    projector: {...}  tokenizer: {...}  llm: {...}  decoder: {...}  dataset: {...}
    one_model: {encoder: clip_encoder, in_projector: ..., tokenizer: ..., llm: ..., ...}
    trainer:   {lr_sched: linear_warmup_cosine_lr, init_lr: 1e-4, ...}
    data:      {train: {refcoco_train: 3, reason_train: 1}, eval: [refcoco_val]}
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from omniplug.registry import REGISTRIES, RegistryError
from omniplug.config.schema import ConfigError, check_kwargs

CATALOGUES = ("encoder", "projector", "tokenizer", "llm", "decoder", "dataset")
_PY_TAG = re.compile(r"!!?python/")


class _Loader(yaml.SafeLoader):
    """Safe YAML plus floats written without a dot (``1e-4``), as configs in this field do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class EntryConfig:
    """One named catalogue entry, e.g. ``encoder.clip_encoder``."""

    section: str
    name: str
    type: str
    params: dict[str, Any]
    source: str  # file that defined it (or "command line")

    @property
    def where(self) -> str:
        return f"{self.source}: {self.section}.{self.name}"


@dataclass(frozen=True)
class OneModelConfig:
    """The ``one_model`` section: which catalogue entries make the model."""

    tokenizer: str
    llm: str
    type: str = "one_model"
    encoder: str | None = None
    in_projector: str | None = None
    out_projector: str | dict[str, str] | None = None  # one entry for every decoder, or task -> entry
    decoder: str | None = None  # a single decoder ...
    decoders: dict[str, str] | None = None  # ... or task -> entry, e.g. {seg: sam_h, gen: sd15}
    conv_type: str = "llava_v1"
    # where a user turn's images go: LLaVA's "before_text", or "after_text" (the image tokens can then attend to
    # the instruction in a causal LLM: instruction-conditioned vision, what BabyAI's FiLM agents rely on)
    image_position: Literal["before_text", "after_text"] = "before_text"
    train_mode: Literal[0, 1, 2] = 1  # 0 pretrain in_projector; 1 decoders+out projectors(+LoRA); 2 full
    ce_loss_weight: float = 1.0
    decoder_loss_weights: dict[str, float] = field(default_factory=dict)  # task -> weight (default 1)
    # dense perception supervision (omniplug.heads.dense): classes of the datasets' label maps, and the weight of the
    # cross entropy on each feature map: "encoder" and/or decoder task names (e.g. {encoder: 1.0, seg: 1.0})
    dense_classes: int | list[int] | None = None  # one count per label-map channel
    dense_loss_weights: dict[str, float] = field(default_factory=dict)
    image_token: str = "<image>"
    weights: str | None = None  # trainable.safetensors (or its directory) loaded after building
    # start training from another model's weights (omniplug.weights.init_from): tensors with this model's names and
    # shapes are loaded, token rows this model adds and decoders it adds keep their initialisation; `weights` wins
    init_weights: str | None = None
    # each module's random initialisation from its own generator, seeded by (trainer.seed, its place in the model:
    # llm, encoder, in_projector, decoder.TASK, out_projector.TASK, ...), and the global generator left as the
    # trainer seeded it: swapping or resizing one module changes no other module's initial weights and not the
    # training-time noise — one-module ablations compare like with like. Off by default (the shipped weights
    # were trained without it).
    module_seeds: bool = False


@dataclass(frozen=True)
class TrainerConfig:
    """The ``trainer`` section (the seed's keys plus accumulation, clipping and seed)."""

    lr_sched: Literal["linear_warmup_cosine_lr", "linear_warmup_step_lr", "constant"] = "linear_warmup_cosine_lr"
    init_lr: float = 1e-4
    min_lr: float = 0.0
    warmup_lr: float = 1e-6
    warmup_steps: int = 0
    lr_decay_rate: float = 0.5  # step schedule: multiply by this every epoch
    weight_decay: float = 0.0
    max_epoch: int = 1
    iters_per_epoch: int = 100
    batch_size_train: int = 2
    batch_size_eval: int = 2
    num_workers: int = 0
    output_dir: str = "output/run"
    amp: bool = False
    bits: int | None = None  # seed key: quantise the LLM for training (QLoRA-style) on CUDA
    resume_ckpt_path: str | None = None  # a checkpoint dir, or "auto" for the newest complete one
    evaluate: bool = False  # evaluate only, no training
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    seed: int = 42
    save_every: int = 0  # optimizer steps between checkpoints; 0 = once per epoch
    log_every: int = 1
    max_nonfinite_in_row: int = 5
    eval_max_samples: int | None = None
    eval_every: int = 0  # optimizer steps between validations of data.eval (besides every epoch end); 0 = epoch ends only
    # floors the validations must reach: {"<data.eval entry>/<metric>": {min: 0.3, by_step: 1500}} (max: for a loss);
    # the first validation at or after by_step (default 0) that misses one ends the run there — checkpoint and
    # loss curve written — with an error naming the figure: a decoder that never converged stops early and loudly;
    # null drops floors a config inherits (e.g. with data.eval=[]: no validation, nothing to hold a floor to)
    expect: dict[str, dict[str, float]] | None = field(default_factory=dict)
    keep_last_checkpoints: int = 3  # complete checkpoints kept in output_dir/checkpoints (older ones are deleted)
    # length grouping: the draws of every window of this many global batches are sorted by their dataset's typical
    # token length before being cut into batches (less padding; batches mostly of one task); 0 = off
    length_group_window: int = 0
    ddp_find_unused_parameters: bool = True  # decoders absent from a batch leave parameters without gradients
    # sharding through accelerate (docs/training.md "Beyond one process"); both off = plain DDP
    zero_stage: Literal[0, 1, 2, 3] | None = None  # DeepSpeed ZeRO stage (CUDA, or CPU processes with gloo)
    fsdp: bool = False  # PyTorch FSDP2: parameters, gradients and optimizer state sharded; the LLM's blocks one by one
    gradient_checkpointing: bool = False  # the LLM recomputes its blocks' activations in backward: less memory, ~30% slower

    def __post_init__(self) -> None:
        if self.expect is None:
            object.__setattr__(self, "expect", {})


@dataclass(frozen=True)
class DataConfig:
    """The ``data`` section: which ``dataset`` entries train (with sampling ratios) and evaluate."""

    train: dict[str, float] = field(default_factory=dict)
    eval: list[str] = field(default_factory=list)
    max_length: int = 512
    # a curriculum: phases [{until_step: N, train: {entry: ratio}}, ...] in increasing until_step; a phase's
    # mixture draws the samples of optimizer steps [previous until_step, until_step); `train` applies after the last
    schedule: list[dict[str, Any]] = field(default_factory=list)
    # procedural-world evaluation for `omniplug eval` without --data: {root, n, seed, holdout_seed, samples};
    # `root`/val and `root`/holdout are generated on first use (seeds never used for training)
    world_eval: dict[str, Any] | None = None


@dataclass(frozen=True)
class EnvConfig:
    """The ``env`` section of an agent's config: the environment it was trained for, with the options its
    demonstrations were collected under, e.g. ``{name: babyai-gotolocal, options: {view: agent}}``. ``omniplug eval
    --env`` (no name), ``serve --env`` and ``demos collect -c`` use it; a command line's options go on top."""

    name: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """A fully loaded, validated configuration."""

    source: str
    catalogues: dict[str, dict[str, EntryConfig]]
    one_model: OneModelConfig
    trainer: TrainerConfig
    data: DataConfig
    resolved: dict[str, Any]  # the fully resolved YAML tree (what gets saved)
    env: EnvConfig = field(default_factory=EnvConfig)

    def entry(self, section: str, name: str, *, where: str) -> EntryConfig:
        entries = self.catalogues.get(section, {})
        if name not in entries:
            available = ", ".join(sorted(entries)) or "(none)"
            raise ConfigError(f"{where}: unknown {section} entry {name!r}; available {section} entries: {available}")
        return entries[name]

    def decoder_entries(self) -> dict[str, EntryConfig]:
        """task name -> decoder entry, in config order."""
        om = self.one_model
        if om.decoders:
            return {task: self.entry("decoder", n, where=f"one_model.decoders.{task}") for task, n in om.decoders.items()}
        if om.decoder:
            entry = self.entry("decoder", om.decoder, where="one_model.decoder")
            return {_default_task(entry): entry}
        return {}

    def out_projector_entry(self, task: str) -> EntryConfig | None:
        op = self.one_model.out_projector
        if op is None:
            return None
        if isinstance(op, dict):
            if task not in op:
                raise ConfigError(f"one_model.out_projector has no entry for task {task!r}; it has {sorted(op)}")
            return self.entry("projector", op[task], where=f"one_model.out_projector.{task}")
        return self.entry("projector", op, where="one_model.out_projector")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved, sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the fully resolved config (what was really run) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_yaml())
        tmp.replace(path)
        return path


def _default_task(entry: EntryConfig) -> str:
    cls = REGISTRIES["decoder"].get(entry.type)
    return getattr(cls, "default_task", entry.name)


# ----------------------------------------------------------------------------------------------
# loading

def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (with its includes), apply ``key=value`` overrides, resolve and validate."""
    from omniplug.registry import load_builtin_plugins

    load_builtin_plugins()
    path = Path(path).expanduser().resolve()
    origins: dict[tuple[str, str], str] = {}
    tree = _load_with_includes(path, origins, stack=())
    tree.setdefault("config_dir", str(path.parent))  # ${config_dir}: the folder of the file that was loaded
    if overrides:
        tree = _apply_overrides(tree, list(overrides), origins)
    resolved = _resolve(tree, path)
    return _validate(resolved, origins, source=str(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    match = _PY_TAG.search(text)
    if match:
        line = text.count("\n", 0, match.start()) + 1
        raise ConfigError(f"{path}:{line}: python object tags ({match.group(0)}...) are refused; configs hold plain data only")
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _load_with_includes(path: Path, origins: dict[tuple[str, str], str], stack: tuple[Path, ...]) -> dict[str, Any]:
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"include cycle: {chain}")
    data = _read_yaml(path)
    includes = data.pop("includes", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: 'includes' must be a list of file paths relative to this file")
    merged: dict[str, Any] = {}
    for inc in includes:
        inc_path = (path.parent / inc).resolve()
        if not inc_path.is_file():
            raise ConfigError(f"{path}: included file {inc!r} not found (looked for {inc_path})")
        merged = _merge(merged, _load_with_includes(inc_path, origins, (*stack, path)))
    _record_origins(data, origins, str(path))
    return _merge(merged, data)


def _record_origins(data: dict[str, Any], origins: dict[tuple[str, str], str], source: str) -> None:
    for key, value in data.items():
        origins[(key, "")] = source
        if key in CATALOGUES and isinstance(value, dict):
            for name in value:
                origins[(key, str(name))] = source


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_overrides(tree: dict[str, Any], overrides: list[str], origins: dict[tuple[str, str], str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. trainer.init_lr=2e-5 or base_dir=/mnt)")
        if _PY_TAG.search(item):
            raise ConfigError(f"override {item!r}: python object tags are refused")
    try:
        cfg = OmegaConf.merge(OmegaConf.create(tree), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid override in {overrides}: {exc}") from None
    for item in overrides:
        parts = item.split("=", 1)[0].split(".")
        origins[(parts[0], parts[1] if len(parts) > 1 and parts[0] in CATALOGUES else "")] = "command line"
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _resolve(tree: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        cfg = OmegaConf.create(tree)
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        hint = " (set it in the file or on the command line, e.g. base_dir=/data)" if "base_dir" in msg else ""
        raise ConfigError(f"{path}: cannot resolve interpolation: {msg}{hint}") from None


_TOP_LEVEL = {"base_dir", "config_dir", *CATALOGUES, "one_model", "trainer", "data", "env", "infer", "serve", "name",
              "description"}


def _validate(tree: dict[str, Any], origins: dict[tuple[str, str], str], *, source: str) -> Config:
    for key in tree:
        if key not in _TOP_LEVEL:
            where = origins.get((key, ""), source)
            raise ConfigError(f"{where}: unknown top-level key {key!r}; accepted keys: {', '.join(sorted(_TOP_LEVEL))}")

    catalogues: dict[str, dict[str, EntryConfig]] = {}
    for section in CATALOGUES:
        raw = tree.get(section) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{origins.get((section, ''), source)}: section {section!r} must map entry names to settings")
        entries: dict[str, EntryConfig] = {}
        for name, settings in raw.items():
            where_file = origins.get((section, str(name)), source)
            if not isinstance(settings, dict):
                raise ConfigError(f"{where_file}: {section}.{name} must be a mapping with a 'type' key")
            settings = dict(settings)
            type_ = settings.pop("type", None)
            if not isinstance(type_, str):
                raise ConfigError(f"{where_file}: {section}.{name} needs 'type: <alias>'; available: {', '.join(REGISTRIES[section].names())}")
            entry = EntryConfig(section=section, name=str(name), type=type_, params=settings, source=where_file)
            try:
                cls = REGISTRIES[section].get(type_)
            except RegistryError as exc:
                raise ConfigError(f"{entry.where}: {exc}") from None
            check_kwargs(cls, settings, where=entry.where, supplied=frozenset(getattr(cls, "supplied_by_build", ())))
            entries[str(name)] = entry
        catalogues[section] = entries

    one_model = _section(tree, "one_model", OneModelConfig, origins, source, required=True)
    trainer = _section(tree, "trainer", TrainerConfig, origins, source, required=False)
    data = _section(tree, "data", DataConfig, origins, source, required=False)
    env = _section(tree, "env", EnvConfig, origins, source, required=False)
    _check_env(env, where=f"{origins.get(('env', ''), source)}: env")
    config = Config(source=source, catalogues=catalogues, one_model=one_model, trainer=trainer, data=data, resolved=tree,
                    env=env)
    _check_references(config)
    return config


def _check_env(env: EnvConfig, *, where: str) -> None:
    """A registered environment and options its constructor takes (checked without building a simulator)."""
    if env.name is None:
        if env.options:
            raise ConfigError(f"{where}.options needs env.name (the environment they belong to, e.g. highway)")
        return
    if not isinstance(env.options, dict):
        raise ConfigError(f"{where}.options must map option names to values, e.g. {{view: agent}}")
    from omniplug import envs  # noqa: F401  (registers the built-in environments; simulators load on first build)
    from omniplug.envs.base import ENVS

    try:
        cls = ENVS.get(env.name)
    except RegistryError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    check_kwargs(cls, env.options, where=f"{where}.options (environment {env.name!r})")


def _section(tree, name, cls, origins, source, *, required: bool):
    raw = tree.get(name)
    where = f"{origins.get((name, ''), source)}: {name}"
    if raw is None:
        if required:
            raise ConfigError(f"{source}: missing section {name!r}")
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    check_kwargs(cls, raw, where=where)
    try:
        return cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_references(config: Config) -> None:
    om = config.one_model
    if om.type != "one_model":
        raise ConfigError(f"one_model.type must be 'one_model', got {om.type!r}")
    if om.decoder and om.decoders:
        raise ConfigError("one_model: set either 'decoder' (one) or 'decoders' (a task -> entry mapping), not both")
    for role, section in (("encoder", "encoder"), ("in_projector", "projector"), ("tokenizer", "tokenizer"), ("llm", "llm")):
        name = getattr(om, role)
        if name is not None:
            config.entry(section, name, where=f"one_model.{role}")
    if (om.encoder is None) != (om.in_projector is None):
        raise ConfigError("one_model: 'encoder' and 'in_projector' go together (set both, or neither for a text-only model)")
    for task in config.decoder_entries():
        config.out_projector_entry(task)
    for name in (*config.data.train, *config.data.eval):
        config.entry("dataset", name, where="data")
    _check_schedule(config)


def _check_schedule(config: Config) -> None:
    """``data.schedule``: a list of ``{until_step: int, train: {entry: ratio}}`` in increasing ``until_step``."""
    previous = 0
    for i, phase in enumerate(config.data.schedule):
        where = f"data.schedule[{i}]"
        if not isinstance(phase, dict) or set(phase) != {"until_step", "train"}:
            raise ConfigError(f"{where} must be {{until_step: N, train: {{entry: ratio, ...}}}}, got {phase!r}")
        until, mixture = phase["until_step"], phase["train"]
        if not isinstance(until, int) or isinstance(until, bool) or until <= previous:
            raise ConfigError(f"{where}.until_step must be an integer > {previous} (phases in increasing order), "
                              f"got {until!r}")
        if not isinstance(mixture, dict) or not mixture:
            raise ConfigError(f"{where}.train must map dataset entries to ratios, got {mixture!r}")
        for name, ratio in mixture.items():
            config.entry("dataset", name, where=f"{where}.train")
            if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio < 0:
                raise ConfigError(f"{where}.train.{name}: ratio must be a number >= 0, got {ratio!r}")
        if sum(mixture.values()) <= 0:
            raise ConfigError(f"{where}.train: ratios must have a positive sum")
        previous = until


def as_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
