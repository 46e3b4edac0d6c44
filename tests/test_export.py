"""``omniplug export``: a trained model leaves as transformers / diffusers / peft folders plus a config that loads
them back, and the reloaded model answers as the trained one did (tiny checkpoints, a few LoRA training steps)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from omniplug.build import build_dataset, build_model
from omniplug.cli import main
from omniplug.config import load_config
from omniplug.config.schema import ConfigError
from omniplug.data.collate import Collator

FAST = ["decoder.tiny_sd.num_inference_steps=2", "one_model.conv_type=plain"]
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """edit.yaml (CLIP, LoRA Llama, SAM, SD with a text encoder) after 3 training steps at a high rate."""
    from omniplug.train import train

    if not (tiny_dir / "edit.yaml").is_file():
        pytest.skip("edit.yaml needs the tiny SAM checkpoint")
    run = tmp_path_factory.mktemp("run")
    config = load_config(tiny_dir / "edit.yaml", [*FAST, "trainer.iters_per_epoch=3", "trainer.init_lr=1e-2",
                                                  f"trainer.output_dir={run}"])
    train(config)
    return tiny_dir / "edit.yaml", run


def _export(config, run, out, *flags, overrides=FAST):
    args = ["export", "-c", str(config), *overrides, *([f"one_model.weights={run}"] if run else []), "--out", str(out), *flags]
    assert main(args) == 0
    return out


def _outputs(model, config_path):
    """What the model says about one fixed request: LLM logits on fixed embeddings, the <seg> mask and the
    generated image of a forced answer, and the training loss of one batch (noise seeded)."""
    model.eval()
    config = load_config(config_path, FAST)
    sample = build_dataset(config, "edit_train")[0]
    sample.targets = {}
    torch.manual_seed(0)
    embeds = torch.randn(2, 9, model.llm.hidden_size) * 0.02
    with torch.no_grad():
        logits = model.llm(embeds, torch.ones(2, 9, dtype=torch.long)).logits
        gen = model.generate(Collator(model, for_generation=True)([sample]), max_new_tokens=1,
                             answer_prefix="<seg> " + "".join(model.decoders["gen"].tokens))
        (mask,), (image,) = gen.decoder_outputs["seg"][0], gen.decoder_outputs["gen"][0]
        data = build_dataset(config, "edit_train")
        torch.manual_seed(1)
        loss = model(Collator(model)([data[0], data[1]])).loss
    return {"logits": logits, "mask": np.asarray(mask.mask, dtype=bool), "image": np.asarray(image, dtype=np.int16),
            "loss": float(loss)}


@pytest.fixture(scope="module")
def reference(trained):
    config, run = trained
    return _outputs(build_model(config, [*FAST, f"one_model.weights={run}"]), config)


def _no_pickles(root: Path) -> None:
    assert not [p for p in root.rglob("*") if p.suffix in PICKLES]


def test_default_export_keeps_the_adapter_apart_and_reloads_exactly(trained, reference, tmp_path):
    config, run = trained
    out = _export(config, run, tmp_path / "exp")
    assert {"omniplug.yaml", "README.md", "export.json", "heads.safetensors", "training_config.yaml", "llm",
            "llm_adapter", "encoder", "decoders"} <= {p.name for p in out.iterdir()}
    assert (out / "llm_adapter" / "adapter_config.json").is_file() and (out / "decoders/gen/unet/config.json").is_file()
    _no_pickles(out)
    exported = yaml.safe_load((out / "omniplug.yaml").read_text())
    assert exported["base_dir"] == "${config_dir}"
    assert exported["llm"]["tiny_llama"]["adapter"] == "${base_dir}/llm_adapter"
    got = _outputs(build_model(out / "omniplug.yaml"), config)
    assert torch.equal(got["logits"], reference["logits"])
    assert np.array_equal(got["mask"], reference["mask"]) and np.array_equal(got["image"], reference["image"])
    assert got["loss"] == reference["loss"]


def test_merged_export_matches_within_float_tolerance(trained, reference, tmp_path):
    config, run = trained
    out = _export(config, run, tmp_path / "merged", "--merge-lora")
    assert not (out / "llm_adapter").exists()
    exported = yaml.safe_load((out / "omniplug.yaml").read_text())
    assert exported["llm"]["tiny_llama"]["lora_enable"] is False and "adapter" not in exported["llm"]["tiny_llama"]
    got = _outputs(build_model(out / "omniplug.yaml"), config)
    diff = (got["logits"] - reference["logits"]).abs().max().item()
    assert 0 <= diff < 1e-4  # LoRA folded into the weights: W + BA rounded once
    assert (got["mask"] == reference["mask"]).mean() > 0.99
    assert np.abs(got["image"] - reference["image"]).mean() < 1.0  # 0-255 pixels
    assert abs(got["loss"] - reference["loss"]) < 1e-3


def test_exported_folders_load_with_the_plain_libraries(trained, tmp_path):
    import diffusers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, SamModel

    config, run = trained
    source = build_model(config, [*FAST, f"one_model.weights={run}"]).eval()
    merged = _export(config, run, tmp_path / "merged", "--merge-lora")
    kept = _export(config, run, tmp_path / "kept")
    torch.manual_seed(0)
    embeds = torch.randn(1, 6, source.llm.hidden_size) * 0.02
    with torch.no_grad():
        want = source.llm(embeds, torch.ones(1, 6, dtype=torch.long)).logits
        plain = AutoModelForCausalLM.from_pretrained(merged / "llm").eval()
        assert (plain(inputs_embeds=embeds).logits - want).abs().max() < 1e-4
        base = AutoModelForCausalLM.from_pretrained(kept / "llm")
        with_adapter = PeftModel.from_pretrained(base, kept / "llm_adapter").eval()
        assert torch.equal(with_adapter(inputs_embeds=embeds).logits, want)
    tokenizer = AutoTokenizer.from_pretrained(merged / "llm")
    for token in ("<image>", "<seg>", "<gen_0>"):
        assert tokenizer.convert_tokens_to_ids(token) == source.tokenizer.token_id(token)
    own = source.state_dict()
    checks = [(CLIPVisionModel.from_pretrained(merged / "encoder"), "encoder.model."),
              (SamModel.from_pretrained(merged / "decoders/seg"), "decoders.seg.model."),
              (diffusers.UNet2DConditionModel.from_pretrained(merged / "decoders/gen/unet"), "decoders.gen.unet.")]
    for module, prefix in checks:
        for name, value in module.state_dict().items():
            assert torch.equal(value, own[prefix + name]), prefix + name


def test_adapter_only_holds_the_fine_tune_and_reloads_on_the_original_bases(trained, reference, tmp_path):
    config, run = trained
    out = _export(config, run, tmp_path / "adapter", "--adapter-only")
    names = {p.name for p in out.iterdir()}
    assert "llm_adapter" in names and not names & {"llm", "encoder", "decoders"}
    assert {p.name for p in (out / "llm_adapter").glob("adapter_*")} == {"adapter_config.json",
                                                                       "adapter_model.safetensors"}
    exported = yaml.safe_load((out / "omniplug.yaml").read_text())
    assert exported["llm"]["tiny_llama"]["model_name_or_path"] == str(config.parent / "llama")
    got = _outputs(build_model(out / "omniplug.yaml"), config)
    assert torch.equal(got["logits"], reference["logits"])
    assert np.array_equal(got["mask"], reference["mask"]) and np.array_equal(got["image"], reference["image"])
    # the adapter is small next to the model it adapts
    adapter = (out / "llm_adapter" / "adapter_model.safetensors").stat().st_size
    assert adapter < 0.5 * (config.parent / "llama" / "model.safetensors").stat().st_size


def test_a_llava_model_leaves_as_clip_mlp_and_a_causal_lm(tiny_dir, tmp_path):
    out = _export(tiny_dir / "llava.yaml", None, tmp_path / "llava", "--merge-lora", overrides=())
    exported = yaml.safe_load((out / "omniplug.yaml").read_text())
    assert exported["encoder"]["llava_vision"]["type"] == "clip"
    assert exported["projector"]["llava_proj"]["type"] == "mlp"
    assert exported["llm"]["llava_lm"]["type"] == "hf_causal_lm"
    a, b = build_model(tiny_dir / "llava.yaml").eval(), build_model(out / "omniplug.yaml").eval()
    from PIL import Image

    pixels = a.encoder.preprocess([Image.new("RGB", (40, 30), (200, 30, 30))])
    with torch.no_grad():
        fa, fb = a.in_projector(a.encoder(pixels).tokens), b.in_projector(b.encoder(pixels).tokens)
        assert torch.equal(fa, fb)
        mask = torch.ones(fa.shape[:2], dtype=torch.long)
        assert (a.llm(fa, mask).logits - b.llm(fb, mask).logits).abs().max() < 1e-5


def test_refusals_are_clear_and_lose_nothing(trained, tmp_path, tiny_dir, capsys):
    config, run = trained
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert main(["export", "-c", str(config), f"one_model.weights={run}", "--out", str(full)]) == 2
    assert "not empty" in capsys.readouterr().err and (full / "keep.txt").read_text() == "mine"
    assert main(["export", "-c", str(config), f"one_model.weights={tmp_path / 'nope'}", "--out", str(tmp_path / "o")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "-c", str(config), "--out", str(tmp_path / "o"), "--merge-lora", "--adapter-only"])
    assert main(["export", "-c", str(tiny_dir / "composed.yaml"), "one_model.train_mode=2", "--out",
                 str(tmp_path / "o"), "--adapter-only"]) == 2
    assert "adapter-only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # --overwrite replaces the folder as a whole
    _export(config, run, full, "--overwrite")
    assert not (full / "keep.txt").exists() and (full / "omniplug.yaml").is_file()


def test_a_failing_export_leaves_no_folder(trained, tmp_path, monkeypatch):
    from omniplug.decoders.sam import SamDecoder

    config, run = trained

    def broken(self, *args, **kwargs):
        raise KeyboardInterrupt  # as a ^C half way through the folders

    monkeypatch.setattr(SamDecoder, "export_pretrained", broken)
    assert main(["export", "-c", str(config), *FAST, f"one_model.weights={run}", "--out", str(tmp_path / "exp")]) == 130
    assert list(tmp_path.iterdir()) == []


def test_a_killed_export_leaves_nothing_that_loads_as_complete(trained, tmp_path):
    """SIGKILL half way (after the LLM and the encoder were written): no folder at --out, and the hidden
    partial folder has no omniplug.yaml."""
    config, run = trained
    script = f"""
import os, signal
from omniplug.decoders.sam import SamDecoder
SamDecoder.export_pretrained = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)
from omniplug.cli import main
main(["export", "-c", {str(config)!r}, "one_model.weights={run}", "--out", {str(tmp_path / 'exp')!r}])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9
    assert not (tmp_path / "exp").exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".exp.partial")]
    assert partial and (partial[0] / "llm").is_dir() and not (partial[0] / "omniplug.yaml").exists()
    with pytest.raises(ConfigError):
        load_config(partial[0] / "omniplug.yaml")


def test_heads_that_do_not_fit_are_refused(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    config, run = trained
    out = _export(config, run, tmp_path / "exp")
    heads = out / "heads.safetensors"
    state = load_file(str(heads))
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(heads), metadata={"format": "pt", "omniplug": "export"})
    with pytest.raises(ConfigError, match="do not hold"):
        build_model(out / "omniplug.yaml")


def test_a_quantised_llm_leaves_in_full_precision_and_reloads_quantised(tiny_dir, tmp_path):
    pytest.importorskip("optimum.quanto")
    out = _export(tiny_dir / "composed.yaml", None, tmp_path / "q", overrides=["llm.tiny_llama.bits=8"])
    exported = yaml.safe_load((out / "omniplug.yaml").read_text())
    assert exported["llm"]["tiny_llama"]["bits"] == 8
    from safetensors import safe_open

    with safe_open(str(out / "llm" / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}
    build_model(out / "omniplug.yaml")  # quantises on load, as the source config did


def test_the_bundled_model_exports_and_serves(tmp_path):
    from omniplug.infer.pipeline import Pipeline
    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "bundled"
    assert main(["export", "-c", str(repo / "configs/default/omni_tiny.yaml"), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "trained from scratch here" in card and "llm/" in card
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["mode"] == "adapter" and "decoders.seg" in manifest["folders"]
    image = Image.new("RGB", (64, 64), (240, 240, 240))
    image.paste((220, 30, 30), (10, 10, 30, 30))
    a = Pipeline.from_config(repo / "configs/default/omni_tiny.yaml")
    b = Pipeline.from_config(out / "omniplug.yaml")
    for prompt in ("Describe the image.", "Please segment the red square."):
        ra, rb = a(image, prompt), b(image, prompt)
        assert ra.text == rb.text
        assert [np.asarray(m.mask).tolist() for m in ra.masks] == [np.asarray(m.mask).tolist() for m in rb.masks]
    from omniplug.serve.admission import Admission
    from omniplug.serve.service import Service
    from omniplug.serve.settings import ServeSettings

    settings = ServeSettings()  # what `omniplug serve -c DIR/omniplug.yaml` loads, without the HTTP server
    service = Service(config=str(out / "omniplug.yaml"), settings=settings,
                      admission=Admission(concurrency=settings.concurrency, queue_size=settings.queue_size)).start()
    assert service.wait(120).state == "ready", service.readiness.message


def test_an_exported_adapter_trains_on(trained, tmp_path):
    """`adapter: DIR` in an LLM entry: train_mode 1 trains the adapter's LoRA and token rows, nothing of the base."""
    config, run = trained
    out = _export(config, run, tmp_path / "adapter", "--adapter-only")
    model = build_model(out / "omniplug.yaml")
    llm_trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert llm_trainable and all("lora_" in n or "trainable_tokens_" in n for n in llm_trainable)
    with pytest.raises(ConfigError, match="lora_enable"):
        build_model(out / "omniplug.yaml", ["llm.tiny_llama.lora_enable=true"])


def test_the_model_card_names_the_licence_a_source_states(tmp_path):
    from omniplug.weights.export import _licence

    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# a model\n")
    assert _licence(str(tmp_path)) == "apache-2.0"
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert _licence(str(tmp_path)) == "not stated"


def test_a_projector_read_from_a_file_travels_in_the_heads(tiny_dir, tmp_path):
    """A linear projector loaded from ``ckpt_path`` (LLaVA v1's mm_projector) leaves its file behind: the export's
    config no longer names it and the weights come back from heads.safetensors."""
    from safetensors.torch import save_file

    base = build_model(tiny_dir / "composed.yaml")
    dims = (base.encoder.out_dim, base.llm.hidden_size)
    file = tmp_path / "mm_projector.safetensors"
    save_file({"model.mm_projector.weight": torch.randn(dims[1], dims[0]), "model.mm_projector.bias": torch.randn(dims[1])},
              str(file))
    overrides = ["projector.lin.type=linear", f"projector.lin.ckpt_path={file}", "one_model.in_projector=lin"]
    out = _export(tiny_dir / "composed.yaml", None, tmp_path / "exp", overrides=overrides)
    exported = yaml.safe_load((out / "omniplug.yaml").read_text())
    assert "ckpt_path" not in exported["projector"]["lin"]
    from safetensors.torch import load_file

    weight = load_file(str(file))["model.mm_projector.weight"]
    file.unlink()  # the export must not need it
    assert torch.equal(build_model(out / "omniplug.yaml").in_projector.layers.weight, weight)
