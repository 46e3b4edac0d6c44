"""OneModel over real transformers classes: switching by YAML, a test-defined decoder end to end,
which hidden state is routed, train modes, weight round trips, and parity with transformers' LLaVA."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from omniplug.base import Decoder
from omniplug.build import build_model
from omniplug.cli import main
from omniplug.data.collate import Collator
from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample
from omniplug.model import ShapeError
from omniplug.config.schema import ConfigError
from omniplug.registry import DECODERS
from omniplug.types import DecoderInput, DecoderOutput
from omniplug.weights import load_trainable, save_trainable


# --- a decoder defined in a test module: one class + one YAML entry ---------------------------------
class BoxOutput(DecoderOutput):
    def __init__(self, batch_index, boxes, prompts):
        super().__init__(batch_index=batch_index)
        self.boxes = boxes
        self.prompts = prompts


@DECODERS.register("test_boxes")
class BoxDecoder(Decoder):
    default_task = "box"
    default_token = "<box>"
    output_kind = "boxes"

    def __init__(self, *, token: str = "<box>", prompt_dim: int = 8, freeze: bool = False) -> None:
        super().__init__()
        self.tokens = [token]
        self.prompt_dim = prompt_dim
        self.freeze = freeze
        self.head = nn.Linear(prompt_dim, 4)

    def forward(self, inp: DecoderInput) -> BoxOutput:
        return BoxOutput(inp.batch_index, torch.sigmoid(self.head(inp.prompts[:, 0])), inp.prompts)

    def prepare_target(self, target, image):
        return torch.as_tensor(target, dtype=torch.float32)

    def loss(self, out, targets):
        return {"l1": F.l1_loss(out.boxes, torch.stack(targets))}

    def postprocess(self, out, inp):
        return [b.tolist() for b in out.boxes]


def _yaml(tiny_dir, *, extra_decoder: bool = True, train_mode: int = 1) -> str:
    dec = """
decoder:
  boxes: {type: test_boxes, prompt_dim: 8}
""" if extra_decoder else ""
    om_dec = "  decoder: boxes\n  out_projector: out_mlp\n  decoder_loss_weights: {box: 2.0}\n" if extra_decoder else ""
    return f"""includes: [{tiny_dir}/catalogue.yaml]
{dec}
one_model:
  encoder: tiny_clip
  in_projector: image_proj
  tokenizer: tiny_tok
  llm: tiny_llama
  conv_type: llava_v1
  train_mode: {train_mode}
{om_dec}"""


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8))


def _samples() -> list[Sample]:
    return [
        Sample(turns=[Turn("user", "Where is the cat?", images=1), Turn("assistant", "It is at <box>.")],
               images=[_image(0)], targets={"box": [[0.1, 0.2, 0.5, 0.6]]}),
        Sample(turns=[Turn("user", "Find both.", images=1), Turn("assistant", "Here <box> and <box>.")],
               images=[_image(1)], targets={"box": [[0.0, 0.0, 0.3, 0.3], [0.5, 0.5, 1.0, 1.0]]}),
    ]


@pytest.fixture(scope="module")
def box_model(tiny_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "box.yaml"
    path.write_text(_yaml(tiny_dir))
    return build_model(path)


def _inspect(path, *overrides) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["inspect", "-c", str(path), "--json", *overrides]) == 0
    return json.loads(buf.getvalue())


def test_switching_is_a_yaml_edit(tiny_dir):
    base = _inspect(tiny_dir / "composed.yaml")
    assert base["modules"]["llm"]["hidden_size"] == 64 and base["modules"]["encoder"]["out_dim"] == 64
    llm = _inspect(tiny_dir / "composed.yaml", "one_model.llm=tiny_llama_wide")  # 7B -> 13B style
    assert llm["modules"]["llm"]["hidden_size"] == 96 and llm["modules"]["in_projector"]["shape"] == [64, 96]
    enc = _inspect(tiny_dir / "composed.yaml", "one_model.encoder=tiny_clip_wide")  # CLIP-L -> CLIP-B style
    assert enc["modules"]["encoder"]["out_dim"] == 96 and enc["modules"]["in_projector"]["shape"] == [96, 64]
    proj = _inspect(tiny_dir / "composed.yaml", "one_model.in_projector=llava_proj")  # another projector
    assert proj["modules"]["in_projector"]["type"] == "llava"
    for info in (base, llm, enc):
        assert set(info) >= {"modules", "total_params", "trainable_params"}
        for role in ("encoder", "in_projector", "tokenizer", "llm"):
            assert {"type", "class", "params", "trainable_params"} <= set(info["modules"][role])
    assert llm["total_params"] > base["total_params"]


def test_test_defined_decoder_end_to_end(box_model):
    model = box_model
    tok = model.tokenizer
    box_id = tok.token_id("<box>")
    assert box_id >= 513 - 1  # added on top of the base vocabulary
    assert model.llm.model.get_input_embeddings().weight.shape[0] == len(tok)
    batch = Collator(model)(_samples())
    out = model(batch)
    assert set(out.decoder_losses) == {"box/l1"}
    expected = model.ce_loss_weight * out.lm_loss + out.decoder_losses["box/l1"]
    assert torch.allclose(out.loss, expected)
    # decoder_loss_weights: box weight 2.0 is applied
    raw = model.decoders["box"].loss(out.decoder_outputs["box"], batch.targets["box"])["l1"]
    assert torch.allclose(out.decoder_losses["box/l1"], 2.0 * raw)
    out.loss.backward()
    assert model.decoders["box"].head.weight.grad is not None
    assert model.out_projectors["box"].layers[0].weight.grad.abs().sum() > 0
    model.zero_grad()


def test_routed_hidden_is_the_trigger_tokens_own_state(box_model):
    model = box_model
    batch = Collator(model)(_samples())
    with torch.no_grad():
        embeds, _ = model.embed_inputs(batch.input_ids, batch.pixel_values)
        hidden = model.llm(embeds, batch.attention_mask).hidden_states
        out = model(batch)
    box_id = model.tokenizer.token_id("<box>")
    rows, cols = (batch.input_ids == box_id).nonzero(as_tuple=True)
    assert rows.tolist() == [0, 1, 1]  # three occurrences, in reading order
    expected = model.out_projectors["box"](hidden[rows, cols])
    assert torch.allclose(out.decoder_outputs["box"].prompts[:, 0], expected, atol=1e-6)
    before = model.out_projectors["box"](hidden[rows, cols - 1])
    assert not torch.allclose(out.decoder_outputs["box"].prompts[:, 0], before)


def test_target_count_mismatch_and_image_count_mismatch(box_model):
    model = box_model
    samples = _samples()
    samples[1].targets["box"] = samples[1].targets["box"][:1]
    batch = Collator(model)(samples)
    with pytest.raises(ShapeError, match="3 trigger occurrence.*2 target"):
        model(batch)
    batch = Collator(model)(_samples())
    with pytest.raises(ShapeError, match="image placeholder count mismatch"):
        model.embed_inputs(batch.input_ids, batch.pixel_values[:1])
    with pytest.raises(ValueError, match="places 1 image"):
        Collator(model)([Sample(turns=[Turn("user", "hi", images=1)], images=[])])


def test_typed_special_tokens_are_not_triggers(box_model):
    tok = box_model.tokenizer
    box_id, image_id = tok.token_id("<box>"), tok.token_id("<image>")
    user = tok.encode("please <box> and <image> now", special=False)
    assert box_id not in user and image_id not in user
    assert box_id in tok.encode("It is <box>.", special=True)
    sample = Sample(turns=[Turn("user", "<box><image>", images=1), Turn("assistant", "<box>")], images=[_image()],
                    targets={"box": [[0, 0, 1, 1]]})
    batch = Collator(box_model)([sample])
    assert int((batch.input_ids == box_id).sum()) == 1  # only the trusted answer's token
    assert int((batch.input_ids == image_id).sum()) == box_model.num_image_tokens


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_train_modes(tiny_dir, tmp_path, mode):
    path = tmp_path / "m.yaml"
    path.write_text(_yaml(tiny_dir, train_mode=mode))
    model = build_model(path)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    roots = {n.split(".")[0] for n in trainable}
    if mode == 0:
        assert roots == {"in_projector"}
    elif mode == 1:
        assert roots == {"in_projector", "out_projectors", "decoders", "llm"}
        llm_names = {n for n in trainable if n.startswith("llm.")}
        assert llm_names and all("lora_" in n or "trainable_tokens" in n for n in llm_names)
        assert not any(n.startswith("encoder.") for n in trainable)
    else:
        assert roots == {"in_projector", "out_projectors", "decoders", "llm"}  # clip entry says freeze: true
        assert any(n.endswith("layers.0.mlp.up_proj.weight") for n in trainable)


def test_trainable_weights_round_trip_exactly(tiny_dir, tmp_path, box_model):
    model = box_model.eval()  # LoRA dropout off
    batch = Collator(model)(_samples())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
        ref = model(batch)
    save_trainable(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "config.yaml").is_file()
    again = build_model(tmp_path / "ckpt" / "config.yaml")
    load_trainable(again, tmp_path / "ckpt")
    again.eval()
    with torch.no_grad():
        out = again(batch)
    assert torch.equal(out.loss, ref.loss)
    assert torch.equal(out.logits, ref.logits)


def test_generate_returns_text_and_decoder_outputs(box_model):
    model = box_model
    batch = Collator(model, for_generation=True)(_samples())
    gen = model.generate(batch, max_new_tokens=6)
    assert len(gen.texts) == 2 and all(isinstance(t, str) for t in gen.texts)
    assert set(gen.decoder_outputs) == {"box"} and len(gen.decoder_outputs["box"]) == 2


def test_llava_checkpoint_runs_unchanged_parity(tiny_dir):
    from transformers import LlavaForConditionalGeneration

    model = build_model(tiny_dir / "llava.yaml")
    ref = LlavaForConditionalGeneration.from_pretrained(str(tiny_dir / "llava")).eval()
    model.eval()
    tok = model.tokenizer
    image_id = tok.token_id("<image>")
    assert image_id == ref.config.image_token_id
    n = model.num_image_tokens
    assert n == (32 // 8) ** 2
    ids = [tok.bos_id] + tok.encode("USER: ", special=False) + [image_id] * n + \
        tok.encode("\nWhat is this? ASSISTANT:", special=False)
    input_ids = torch.tensor([ids])
    mask = torch.ones_like(input_ids)
    pixels = model.encoder.preprocess([_image(3)])
    with torch.no_grad():
        expected = ref(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits
        embeds, _ = model.embed_inputs(input_ids, pixels)
        got = model.llm(embeds, mask).logits
    assert (got - expected).abs().max().item() <= 1e-5
    with torch.no_grad():
        ref_ids = ref.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8,
                               do_sample=False)[0, input_ids.shape[1]:].tolist()
        from omniplug.types import Batch

        ours = model.generate(Batch(input_ids=input_ids, attention_mask=mask, pixel_values=pixels), max_new_tokens=8)
    if tok.eos_id in ref_ids:
        ref_ids = ref_ids[: ref_ids.index(tok.eos_id)]
    assert ours.token_ids[0] == ref_ids


def test_collate_mixes_samples_with_and_without_images(box_model, monkeypatch):
    """Text-only samples (e.g. "Draw ...") batch with image samples; decoder pixels stay row-aligned."""
    seen = []
    monkeypatch.setattr(box_model.decoders["box"], "prepare_images", lambda images: seen.append(images) or len(images))
    samples = _samples() + [Sample(turns=[Turn("user", "Say hi."), Turn("assistant", "hi")])]
    batch = Collator(box_model)(samples)
    assert batch.decoder_pixels["box"] == 3 and seen[0][2].getbbox() is None  # a black stand-in for row 2
    assert box_model(batch).loss.isfinite()


def test_image_position_after_text_puts_the_instruction_first(tiny_dir, tmp_path):
    """one_model.image_position: after_text -> the user's text, then its image tokens (they can attend to it)."""
    path = tmp_path / "after.yaml"
    path.write_text(_yaml(tiny_dir) + "  image_position: after_text\n")
    after, before = build_model(path), build_model(_write(tmp_path, tiny_dir))
    sample = _samples()[0]
    ids_after = Collator(after)([sample]).input_ids[0].tolist()
    ids_before = Collator(before)([sample]).input_ids[0].tolist()
    image_id, n = after.image_token_id, after.num_image_tokens
    text = after.tokenizer.encode("Where is the cat?", special=False)
    first_image = ids_after.index(image_id)
    assert ids_after.count(image_id) == ids_before.count(image_id) == n
    assert _find(ids_after, text) < first_image < _find(ids_before, text)  # text before the image, and the reverse
    assert sorted(ids_after) == sorted(ids_before)  # same tokens, another order
    assert after(Collator(after)(_samples())).loss.isfinite()
    with pytest.raises(ConfigError, match="image_position"):
        path.write_text(_yaml(tiny_dir) + "  image_position: middle\n")
        build_model(path)


def _write(tmp_path, tiny_dir):
    path = tmp_path / "before.yaml"
    path.write_text(_yaml(tiny_dir))
    return path


def _find(seq: list[int], sub: list[int]) -> int:
    return next(i for i in range(len(seq) - len(sub) + 1) if seq[i:i + len(sub)] == sub)


def test_projector_output_norm_puts_image_tokens_at_the_word_embedding_scale():
    """mlp output_norm: G -> every projected token has norm ~G*sqrt(d) (a from-scratch LLM's words: 0.02*sqrt(d)),
    whatever the scale of the encoder's features; LLaVA's parameter names are unchanged."""
    from omniplug.projectors.mlp import MLPProjector

    plain = MLPProjector(in_features=32, out_features=64)
    normed = MLPProjector(in_features=32, out_features=64, output_norm=0.02)
    normed.layers.load_state_dict(plain.layers.state_dict())
    x = torch.randn(2, 10, 32) * 50  # large encoder features
    assert plain(x).norm(dim=-1).mean() > 10
    assert torch.allclose(normed(x).norm(dim=-1), torch.full((2, 10), 0.02 * 64 ** 0.5), rtol=1e-3)
    assert {k for k in normed.state_dict() if k.startswith("layers.")} == set(f"layers.{k}" for k in plain.layers.state_dict())
    with pytest.raises(ValueError, match="output_norm"):
        MLPProjector(in_features=32, out_features=64, output_norm=0.0)


def test_module_seeds_keep_the_other_modules_initialisation(tiny_dir, tmp_path):
    """``one_model.module_seeds``: resizing one module (the LLM's LoRA rank) leaves every other module's initial
    weights and the global generator after the build as they were; without it, both move."""
    path = tmp_path / "box.yaml"
    path.write_text(_yaml(tiny_dir))

    def build(*overrides):
        torch.manual_seed(0)
        model = build_model(path, list(overrides))
        others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("llm.")}
        return others, torch.rand(4)

    def same(a, b):
        return a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and torch.equal(a[1], b[1])

    seeded = build("one_model.module_seeds=true")
    assert same(seeded, build("one_model.module_seeds=true", "llm.tiny_llama.lora_r=8"))
    assert not same(seeded, build("one_model.module_seeds=true", "trainer.seed=1"))  # the seed still decides
    assert any(k.startswith("in_projector.") for k in seeded[0]) and any(k.startswith("out_projectors.") for k in seeded[0])
    assert not same(build(), build("llm.tiny_llama.lora_r=8"))
