"""Chat templating in one place (``one_model.conv_type``).

A conversation is a list of :class:`Turn`. Encoding keeps three kinds of text apart:
template text (ours: special tokens allowed), user text (never special: a typed ``<seg>`` or
``<image>`` stays plain characters) and assistant text from trusted training data (special
tokens allowed, so ``"It is <seg>."`` targets work). Image placeholders are inserted only where
the caller says an image goes, and expanded to the encoder's token count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from omniplug.base import Tokenizer

IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str
    images: int = 0  # images of this user turn, placed before its text (or after: encode_chat's image_position)


@dataclass(frozen=True)
class ChatTemplate:
    system: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str  # after each assistant answer (before EOS)
    image_sep: str = "\n"


TEMPLATES: dict[str, ChatTemplate] = {
    # LLaVA v1 / Vicuna style, as used by LISA
    "llava_v1": ChatTemplate(
        system="A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions.",
        user_prefix=" USER: ", user_suffix="", assistant_prefix=" ASSISTANT: ", assistant_suffix="",
    ),
    # no system prompt; short, for small models trained from scratch
    "plain": ChatTemplate(system="", user_prefix="", user_suffix="\n", assistant_prefix="", assistant_suffix=""),
    "llama_2": ChatTemplate(system="", user_prefix="[INST] ", user_suffix=" [/INST]", assistant_prefix=" ",
                            assistant_suffix=" "),
}


def get_template(conv_type: str) -> ChatTemplate:
    if conv_type not in TEMPLATES:
        raise ValueError(f"unknown conv_type {conv_type!r}; available: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[conv_type]


@dataclass(frozen=True)
class EncodedChat:
    input_ids: list[int]
    labels: list[int]  # -100 except on assistant answers (and their EOS)
    num_images: int


def encode_chat(tokenizer: Tokenizer, turns: list[Turn], *, conv_type: str, image_token: str,
                image_tokens_per_image: int, add_generation_prompt: bool = False,
                trusted_assistant: bool = True,
                image_position: Literal["before_text", "after_text"] = "before_text") -> EncodedChat:
    """Tokenize a conversation. With ``add_generation_prompt`` the result ends where the
    assistant's next answer starts (for inference).

    ``image_position``: LLaVA puts a turn's images before its text; ``after_text`` puts the text
    first, so that in a causal LLM every image token can attend to the instruction (the image is
    read *for* the instruction, as FiLM conditioning does in BabyAI's agents)."""
    if image_position not in ("before_text", "after_text"):
        raise ValueError(f"image_position must be 'before_text' or 'after_text', got {image_position!r}")
    template = get_template(conv_type)
    ids: list[int] = []
    labels: list[int] = []
    n_images = 0

    def add(piece: list[int], *, train: bool) -> None:
        ids.extend(piece)
        labels.extend(piece if train else [-100] * len(piece))

    if tokenizer.bos_id is not None:
        add([tokenizer.bos_id], train=False)
    if template.system:
        add(tokenizer.encode(template.system, special=False), train=False)
    image_id = tokenizer.token_id(image_token)
    for turn in turns:
        if turn.role == "user":
            add(tokenizer.encode(template.user_prefix, special=True), train=False)
            if image_position == "after_text":
                add(tokenizer.encode(turn.text, special=False), train=False)
            for _ in range(turn.images):
                if image_position == "after_text" and template.image_sep:
                    add(tokenizer.encode(template.image_sep, special=False), train=False)
                add([image_id] * image_tokens_per_image, train=False)
                if image_position == "before_text" and template.image_sep:
                    add(tokenizer.encode(template.image_sep, special=False), train=False)
                n_images += 1
            if image_position == "before_text":
                add(tokenizer.encode(turn.text, special=False), train=False)
            if template.user_suffix:
                add(tokenizer.encode(template.user_suffix, special=True), train=False)
        else:
            add(tokenizer.encode(template.assistant_prefix, special=True), train=False)
            add(tokenizer.encode(turn.text, special=trusted_assistant), train=True)
            if template.assistant_suffix:
                add(tokenizer.encode(template.assistant_suffix, special=True), train=False)
            if tokenizer.eos_id is not None:
                add([tokenizer.eos_id], train=True)
    if add_generation_prompt:
        add(tokenizer.encode(template.assistant_prefix, special=True), train=False)
    return EncodedChat(input_ids=ids, labels=labels, num_images=n_images)


def split_image_placeholders(text: str) -> tuple[int, str]:
    """For LLaVA-format training data: count and remove ``<image>`` placeholders in a human turn."""
    count = text.count(IMAGE_PLACEHOLDER)
    return count, text.replace(IMAGE_PLACEHOLDER, "").strip()
