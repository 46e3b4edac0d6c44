"""The default model's architecture builds offline from the shipped config-only folders."""

from __future__ import annotations

from pathlib import Path

from omniplug.build import build_model

REPO = Path(__file__).resolve().parents[1]


def test_default_architecture_builds_and_fits_the_size_budget():
    model = build_model(REPO / "configs" / "default" / "omni_tiny.yaml", load_weights=False)
    total = sum(p.numel() for p in model.parameters())
    assert total * 4 <= 30 * 2**20  # fp32 weights within the 30 MB the repository allows
    assert set(model.decoders) == {"seg", "gen"}
    assert model.num_image_tokens == 64
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("encoder.", "llm.")))


def test_shipped_default_model_loads_and_answers_offline(tmp_path):
    """The committed weights load through the shipped config and the model answers a world image."""
    import pytest

    weights = REPO / "configs" / "default" / "weights" / "trainable.safetensors"
    if not weights.is_file():
        pytest.skip("the default model's weights are not committed yet")
    from omniplug.data.world import write_split
    from omniplug.infer.pipeline import Pipeline

    write_split(out_dir=tmp_path / "w", n=1, seed=999, split="val")
    pipe = Pipeline.from_config(REPO / "configs" / "default" / "omni_tiny.yaml")
    response = pipe([tmp_path / "w" / "images" / "000000.png"], "Describe the image.", max_new_tokens=48)
    assert response.text.strip()


def test_shipped_default_model_draws_for_the_demos_drawing_requests(tmp_path):
    """The demo's example drawing request — and brief requests like it — are answered with a picture (the
    v12 weights answered them with nothing: bench/HISTORY.md, v12-v14)."""
    import pytest

    weights = REPO / "configs" / "default" / "weights" / "trainable.safetensors"
    if not weights.is_file():
        pytest.skip("the default model's weights are not committed yet")
    from omniplug.infer.pipeline import Pipeline, Request
    from omniplug.serve.examples import world_examples

    demo = [e.prompt for e in world_examples(tmp_path, n=1) if e.image is None]
    assert demo == ["Draw a small red circle."]
    pipe = Pipeline.from_config(REPO / "configs" / "default" / "omni_tiny.yaml")
    prompts = demo + ["Draw a house.", "Generate an image of a large blue square."]
    for prompt, response in zip(prompts, pipe.batch([Request(p) for p in prompts])):
        assert len(response.images) == 1 and response.text == "[image 1]", (prompt, response.text)


def _bench_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / "default" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prompt_form_and_stuff_form_checks_run_on_the_shipped_model(tmp_path):
    """bench/default/prompt_forms.py scores every drawing-request form and asks the fixed requests;
    seg_forms.py scores stuff regions and objects in every mask-request form against the split's maps."""
    import pytest

    if not (REPO / "configs" / "default" / "weights" / "trainable.safetensors").is_file():
        pytest.skip("the default model's weights are not committed yet")
    from omniplug.data.world import write_split

    write_split(out_dir=tmp_path / "w", n=3, seed=999, split="val")
    config = str(REPO / "configs" / "default" / "omni_tiny.yaml")
    forms = _bench_module("prompt_forms")
    report = forms.measure(config, [], data=str(tmp_path / "w"), n=2, batch_size=2)
    assert set(report["forms"]) == set(forms.forms()) and "brief/sketch" in report["forms"]
    for figures in report["forms"].values():
        assert figures["n"] == 2 and 0.0 <= figures["answered"] <= 1.0 and 0.0 <= figures["colour_f1"] <= 1.0
    assert [r["prompt"] for r in report["requests"]] == list(forms.REQUESTS)
    assert report["requests_answered"] == sum(r["pictures"] > 0 for r in report["requests"]) / len(forms.REQUESTS)
    seg = _bench_module("seg_forms")
    stuff = seg.measure(config, [], data=tmp_path / "w", n=3)
    assert set(stuff["iou"]) == {f"{f}/{c}" for f in seg.FORMS for c in seg.STUFF}
    assert set(stuff["objects"]) == set(seg.FORMS) and all(v["n"] == 3 for v in stuff["objects"].values())
    assert all((v["mean"] is None) == (v["n"] == 0) and 0.0 <= (v["mean"] or 0.0) <= 1.0 and v["n"] <= 3
               for v in [*stuff["iou"].values(), *stuff["objects"].values()])
    assert stuff["iou"]["semantic/sky"]["n"] == 3  # every scene has sky


def test_gen_conditioning_diagnostic_runs_on_the_shipped_model(tmp_path):
    """bench/default/gen_conditioning.py measures spreads and the prompt share at every timestep."""
    import importlib.util

    import pytest

    if not (REPO / "configs" / "default" / "weights" / "trainable.safetensors").is_file():
        pytest.skip("the default model's weights are not committed yet")
    spec = importlib.util.spec_from_file_location("gen_conditioning", REPO / "bench" / "default" / "gen_conditioning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    overrides = [f"dataset.generation.root={tmp_path / 'w'}", "dataset.generation.n=24"]
    result = module.measure(str(REPO / "configs" / "default" / "omni_tiny.yaml"), overrides, n=4, dataset="generation")
    assert result["samples"] == 4
    for part in ("hidden", "conditioning"):
        assert 0 <= result[part]["spread"] <= 2 * result[part]["norm"]
    assert set(result["use"]) == {str(t) for t in module.TIMESTEPS}
    for errors in result["use"].values():
        assert errors["own"] > 0 and errors["prompt_share"] == round(1 - errors["own"] / errors["other"], 4)
    content = module.content(str(REPO / "configs" / "default" / "omni_tiny.yaml"), overrides, n=24, dataset="generation",
                             batch_size=8)
    assert content["prompts"] == 24 and all(0.0 <= content[k] <= 1.0 for k in ("hidden", "conditioning"))
    # the read-out itself: features that carry the labels read out perfectly, pure noise near chance
    import torch

    torch.manual_seed(0)
    labels = (torch.rand(400, 5) > 0.5).float()
    assert module._readout(torch.cat([labels, torch.randn(400, 20)], 1) * 3, labels, fit=300, ridge=1.0) == 1.0
    assert abs(module._readout(torch.randn(400, 20), labels, fit=300) - 0.5) < 0.1


def _same_paths(params: dict) -> dict:
    """Config params with folder paths normalised (configs in different folders reach the same files)."""
    import os

    return {k: os.path.normpath(v) if isinstance(v, str) and "/" in v else v for k, v in params.items()}


def test_v9_specialists_keep_the_shipped_recipe():
    """bench/default/specialists/v9_*.yaml are the shipped default's modules, SAM settings and task data at its
    5,000 steps (the full-budget comparison whose `multi` side is the shipped model)."""
    from omniplug.config import load_config

    default = load_config(REPO / "configs" / "default" / "omni_tiny.yaml")
    for name, decoders, datasets in (("v9_seg_only", ("sam",), ("referring", "reasoning", "semantic", "part", "panoptic")),
                                     ("v9_caption_only", (), ("caption_vqa",))):
        spec = load_config(REPO / "bench" / "default" / "specialists" / f"{name}.yaml")
        assert spec.trainer == default.trainer.__class__(**{**vars(default.trainer), "output_dir": spec.trainer.output_dir,
                                                            "batch_size_train": 16,  # v14's batch (v9 = v14's scale)
                                                            "expect": {}})  # the semantic floor came after v9
        for kind in ("encoder", "llm", "projector", "tokenizer"):
            for key, entry in spec.catalogues[kind].items():
                assert _same_paths(entry.params) == _same_paths(default.catalogues[kind][key].params), (name, key)
        for key in decoders:
            ours, theirs = spec.catalogues["decoder"][key].params, default.catalogues["decoder"][key].params
            assert _same_paths(ours) == _same_paths(theirs), (name, key)
        for key in datasets:
            ours, theirs = spec.catalogues["dataset"][key].params, default.catalogues["dataset"][key].params
            assert _same_paths(ours) == _same_paths(theirs), (name, key)
        assert set(spec.data.train) == set(datasets)


def test_patched_unet_recipe_builds_within_budget_and_its_folder_is_reproducible(tmp_path):
    """The shipped recipe's 4x4-patch UNet (base/sd_patch) builds within the 30 MB budget, and the
    committed config-only folder is what ``omniplug.fixtures.default_architecture.write_sd_patch`` writes."""
    import json

    from omniplug.fixtures.default_architecture import write_sd_patch

    model = build_model(REPO / "configs" / "default" / "omni_tiny.yaml", load_weights=False)
    assert sum(p.numel() for p in model.parameters()) * 4 <= 30 * 2**20
    gen = model.decoders["gen"]
    assert (gen.patch, gen.latent_channels, gen.vae_factor, gen.height, gen.noise_repeats) == (4, 48, 4, 64, 4)
    write_sd_patch(tmp_path / "sd_patch")
    for part in ("unet/config.json", "scheduler/scheduler_config.json"):
        ours = {k: v for k, v in json.loads((tmp_path / "sd_patch" / part).read_text()).items() if not k.startswith("_")}
        shipped = json.loads((REPO / "configs" / "default" / "base" / "sd_patch" / part).read_text())
        assert ours == {k: v for k, v in shipped.items() if not k.startswith("_")}
