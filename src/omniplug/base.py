"""Plugin contracts. Each plugin kind is a small abstract base; concrete plugins live one per file.

Constructors are keyword-only and typed: the signature is the YAML schema (see ``config/schema.py``).
``supplied_by_build`` names constructor arguments that ``build.py`` may fill in itself (for
example a projector's ``in_features`` when the YAML leaves it out).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor, nn

from omniplug.types import DecoderInput, DecoderOutput, GenerateOutput, ImageFeatures, LLMOutput


class Exportable:
    """What ``omniplug export`` asks of a module (``omniplug.weights.export``).

    ``checkpoint_modules`` names the submodules whose weights come from the entry's checkpoint folder (and go back
    into one on export); every other parameter and buffer of the module is written to the export's
    ``heads.safetensors``. ``export_pretrained`` writes the folder in its library's own format and returns the
    catalogue entry that loads it back; the default (no folder) keeps the entry and needs no checkpoint.
    """

    checkpoint_modules: tuple[str, ...] = ()

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        """Write the checkpoint folder into ``directory`` (which exists and is empty) and return ``entry``
        (``type`` plus parameters) changed to load it; ``ref`` is how the exported config names ``directory``
        (e.g. ``${base_dir}/decoders/seg``)."""
        if self.checkpoint_modules:
            raise NotImplementedError(f"{type(self).__name__} loads {self.checkpoint_modules} from a checkpoint but "
                                      f"cannot export them: implement export_pretrained")
        return entry


class Encoder(Exportable, nn.Module, ABC):
    """images -> tokens for the LLM (and dense features when the encoder has them)."""

    supplied_by_build: ClassVar[tuple[str, ...]] = ()
    out_dim: int
    num_tokens: int  # tokens per image handed to the input projector
    freeze: bool = True

    @abstractmethod
    def preprocess(self, images: list[Image.Image]) -> Tensor: ...

    @abstractmethod
    def forward(self, pixel_values: Tensor) -> ImageFeatures: ...


class Projector(Exportable, nn.Module, ABC):
    """Maps features of one width to another; used for input (image->LLM) and output (LLM->decoder)."""

    supplied_by_build: ClassVar[tuple[str, ...]] = ("in_features", "out_features")
    in_features: int
    out_features: int
    freeze: bool = False

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...


class Tokenizer(ABC):
    """Text <-> ids. User text never turns into special tokens (see ``encode(special=False)``)."""

    supplied_by_build: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def add_special_tokens(self, tokens: list[str]) -> list[int]: ...

    @abstractmethod
    def encode(self, text: str, *, special: bool) -> list[int]:
        """``special=True`` for omniplug's own template text: task/image tokens become their ids.
        ``special=False`` for user text: a typed ``<seg>`` stays plain characters."""

    @abstractmethod
    def decode(self, ids: list[int], *, skip_special: bool = False) -> str: ...

    @abstractmethod
    def token_id(self, token: str) -> int: ...

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def pad_id(self) -> int: ...

    @property
    @abstractmethod
    def eos_id(self) -> int | None: ...

    @property
    @abstractmethod
    def bos_id(self) -> int | None: ...

    @property
    @abstractmethod
    def special_tokens(self) -> list[str]: ...

    @abstractmethod
    def save(self, directory: str) -> None: ...


class LanguageModel(Exportable, nn.Module, ABC):
    """Wraps a causal LM: embeddings in, logits and last hidden states out."""

    supplied_by_build: ClassVar[tuple[str, ...]] = ()
    hidden_size: int
    freeze: bool = False
    lora_enable: bool = False

    @abstractmethod
    def embed(self, input_ids: Tensor) -> Tensor: ...

    @abstractmethod
    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor, labels: Tensor | None = None) -> LLMOutput: ...

    @abstractmethod
    def generate(self, inputs_embeds: Tensor, attention_mask: Tensor, **options: Any) -> GenerateOutput: ...

    @abstractmethod
    def resize_token_embeddings(self, size: int) -> None: ...

    def quantize_weights(self) -> None:
        """Quantise weights that must be quantised after loading (CPU back ends); default: nothing."""

    def load_adapter(self) -> None:
        """Called by ``build_model`` once the vocabulary has its final size: attach a trained adapter named in
        the entry (e.g. an exported peft LoRA); default: nothing."""

    @abstractmethod
    def make_trainable(self, *, full: bool, new_token_ids: list[int]) -> None:
        """Apply trainability once: ``full`` trains every weight; otherwise LoRA (when enabled)
        plus the rows of ``new_token_ids`` in the embedding and output layers."""

    def enable_gradient_checkpointing(self) -> None:
        """``trainer.gradient_checkpointing``: recompute activations in the backward pass instead of keeping them."""
        from omniplug.config.schema import ConfigError

        raise ConfigError(f"{type(self).__name__} does not support trainer.gradient_checkpointing; "
                                  f"implement LanguageModel.enable_gradient_checkpointing or set it to false")

    def new_cache(self) -> Any | None:
        """An empty KV cache for :meth:`forward_cached`, or None when this LLM has no such step (then
        ``OneModel.generate`` decodes through :meth:`generate`, one chunk at a time, without continuous
        batching). The cache must keep one (batch, heads, positions, dim) key and value tensor per layer
        in ``cache.layers[i].keys`` / ``.values``, so that rows can join and leave a running batch."""
        return None

    def forward_cached(self, inputs_embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                       cache: Any) -> tuple[Tensor, Tensor]:
        """Run new positions (B, T, H) on top of ``cache`` (extended in place): ``attention_mask`` (B,
        cached + T) marks the real positions (holes allowed), ``position_ids`` (B, T) are each row's own
        positions. Returns the logits at the last new position (B, vocab) and the last layer's hidden
        states at every new position (B, T, H), the same states :meth:`forward` returns."""
        raise NotImplementedError(f"{type(self).__name__} has no cached forward (new_cache() returns None)")

    def layer_class_names(self) -> list[str]:
        """Class names of the repeated blocks (e.g. ``LlamaDecoderLayer``): ``trainer.fsdp`` shards each one
        apart, so only one block's full weights exist at a time. Empty: the LLM is sharded as one unit."""
        return []


class Decoder(Exportable, nn.Module, ABC):
    """One task: knows its trigger token(s), its loss and how to postprocess its outputs.

    A decoder never calls the LLM. ``OneModel`` hands it one prompt per occurrence of its
    trigger tokens (``DecoderInput``), after the output projector.
    """

    supplied_by_build: ClassVar[tuple[str, ...]] = ()
    default_task: ClassVar[str] = "task"
    default_token: ClassVar[str] = "<task>"
    #: what kind of outputs postprocess() returns, used to fill ``Response``: masks, images, boxes, actions
    output_kind: ClassVar[str] = "extra"
    #: True for decoders that read the sample's own image (masks): at inference a trigger the model emits in
    #: answer to a request without an image yields nothing instead of a prediction on a stand-in
    needs_image: ClassVar[bool] = False

    tokens: list[str]  # K trigger tokens; an occurrence is the run tokens[0..K-1]
    prompt_dim: int  # width the output projector must produce
    loss_weight: float = 1.0
    freeze: bool = False
    #: False for decoders that ignore ``DecoderInput.prompts`` (no output projector is built for them)
    reads_prompts: ClassVar[bool] = True
    #: tokens added to the tokenizer besides the triggers (e.g. action tokens the LM head predicts)
    extra_tokens: tuple[str, ...] | list[str] = ()
    #: text decoders: how many answer tokens after each trigger run the decoder reads. When > 0,
    #: ``DecoderInput.answer_ids``/``answer_logits`` hold them and the collator writes
    #: ``answer_text(target)`` after each trigger of a training answer.
    answer_length: int = 0
    #: width of ``dense_features`` when the decoder has a feature map a dense head can read (omniplug.heads.dense)
    dense_width: int | None = None

    def set_trainable(self) -> None:
        """Called once by ``apply_train_mode`` when decoders train; default: every parameter
        unless ``freeze``. Decoders override to train only their trainable parts."""
        self.requires_grad_(not self.freeze)

    def prepare_images(self, images: list[Image.Image]) -> Any:
        """Decoder-specific image preprocessing done at collate time (e.g. SAM's 1024 px)."""
        return None

    #: True when the decoder reads every image of a sample (``prepare_image_groups``), not only the first: e.g. a
    #: mask decoder answering "Segment the red circle in every frame." with one mask per frame of a clip
    reads_every_image: bool = False

    def prepare_image_groups(self, groups: list[list[Image.Image]]) -> Any:
        """Every image of every sample (``groups[b]``: sample b's images, at least one), for decoders that
        set ``reads_every_image``."""
        raise NotImplementedError(f"{type(self).__name__} reads only each sample's first image")

    def prepare_target(self, target: Any, image: Image.Image | None) -> Any:
        """Turn one raw target (e.g. a numpy mask) into what ``loss`` expects."""
        return target

    def bind_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Called once by ``build_model`` after the triggers and ``extra_tokens`` were added; text
        decoders look up the ids of the tokens they read and write here."""

    def answer_text(self, target: Any) -> str:
        """Text decoders: the text that follows the trigger tokens in a training answer for ``target``."""
        return ""

    @abstractmethod
    def forward(self, inp: DecoderInput) -> DecoderOutput: ...

    @abstractmethod
    def loss(self, out: DecoderOutput, targets: list[Any]) -> dict[str, Tensor]: ...

    @abstractmethod
    def postprocess(self, out: DecoderOutput, inp: DecoderInput) -> list[Any]: ...

    def dense_features(self, out: DecoderOutput) -> Tensor | None:
        """(M, dense_width, h, w): the feature map of each occurrence's image, for dense supervision
        (``one_model.dense_loss_weights``); ``None`` when the decoder has none."""
        return None

    def validation_counts(self, out: DecoderOutput, targets: list[Any]) -> dict[str, tuple[float, float]]:
        """Quality figures for the training-time validation (teacher forced, next to the losses), as
        ``name -> (numerator, denominator)`` that add up over batches and ranks (mask IoU: summed
        intersection and union); the log shows ``numerator / denominator``. Default: none."""
        return {}


def count_params(module: nn.Module) -> tuple[int, int]:
    total = trainable = 0
    seen: set[int] = set()
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return total, trainable


def module_dtype(module: nn.Module) -> str:
    for p in module.parameters():
        return str(p.dtype).replace("torch.", "")
    return "none"


def zero_like_loss(ref: Tensor) -> Tensor:
    return ref.new_zeros(()) if ref.numel() else torch.zeros(())
