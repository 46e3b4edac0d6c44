"""``llava_shards``: LLaVA conversations in WebDataset tar shards, read by index through webdataset's wids.

The shards hold exactly what the JSON file and its images hold; the training loop reads them with worker
processes and resumes mid-epoch bit for bit, as with an in-memory dataset."""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest
from safetensors.torch import load_file

pytest.importorskip("wids", reason="llava_shards needs pip install webdataset")

from omniplug.config import load_config  # noqa: E402
from omniplug.data.llava_json import LlavaJsonDataset  # noqa: E402
from omniplug.data.shards import LlavaShardsDataset, write_llava_shards  # noqa: E402
from omniplug.train import train  # noqa: E402


@pytest.fixture
def chat(tiny_dir, tmp_path):
    images = sorted((tiny_dir / "seg_data" / "shapes_refcoco" / "images").glob("*.png"))[:6]
    folder = tmp_path / "chat"
    folder.mkdir()
    records = []
    for i in range(11):
        rec = {"id": f"r{i}", "conversations": [{"from": "human", "value": f"<image>\nWhat is shown? ({i})"},
                                                {"from": "gpt", "value": f"shapes number {i}."}]}
        if i % 5 == 4:  # text only
            rec["conversations"][0]["value"] = f"Say a number. ({i})"
        elif i % 5 == 3:  # two images
            rec["conversations"][0]["value"] = "<image>\n<image>\nCompare them."
            rec["image"] = [images[i % 6].name, images[(i + 1) % 6].name]
        else:
            rec["image"] = images[i % 6].name
        records.append(rec)
    for image in images:
        shutil.copy(image, folder / image.name)
    (folder / "chat.json").write_text(json.dumps(records))
    return folder / "chat.json"


def test_shards_hold_what_the_json_and_its_images_hold(chat, tmp_path):
    index = write_llava_shards(chat, tmp_path / "shards", samples_per_shard=4)
    spec = json.loads(index.read_text())
    assert [s["nsamples"] for s in spec["shardlist"]] == [4, 4, 3]
    assert all(tarfile.is_tarfile(index.parent / s["url"]) for s in spec["shardlist"])
    plain, sharded = LlavaJsonDataset(data_path=str(chat)), LlavaShardsDataset(index=str(index))
    assert len(sharded) == len(plain) == 11
    for i in (10, 0, 3, 4, 7):  # any order: read by index
        a, b = plain[i], sharded[i]
        assert a.turns == b.turns and len(a.images) == len(b.images)
        assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    assert len(LlavaShardsDataset(index=str(index), max_samples=5)) == 5
    with pytest.raises(IndexError):
        sharded[11]


def test_bad_shard_indexes_are_refused_clearly(chat, tmp_path):
    index = write_llava_shards(chat, tmp_path / "shards", samples_per_shard=4)
    with pytest.raises(FileNotFoundError, match="index .* not found"):
        LlavaShardsDataset(index=str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text('{"shardlist": []}')
    with pytest.raises(ValueError, match="is not a shard index"):
        LlavaShardsDataset(index=str(tmp_path / "bad.json"))
    (index.parent / "shard-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="shard-000001.tar"):
        LlavaShardsDataset(index=str(index))


CONFIG = """\
includes: [{tiny}/catalogue.yaml]
dataset:
  chat: {{type: llava_shards, index: "{index}"}}
one_model: {{encoder: tiny_clip, in_projector: image_proj, tokenizer: tiny_tok, llm: tiny_llama, conv_type: llava_v1,
            train_mode: 1}}
data: {{train: {{chat: 1}}, max_length: 128}}
trainer: {{lr_sched: constant, init_lr: 0.003, max_epoch: 1, iters_per_epoch: 8, batch_size_train: 2, num_workers: 2,
          save_every: 3, output_dir: "{out}", seed: 3}}
"""


def test_training_reads_shards_with_workers_and_resumes_mid_epoch_exactly(tiny_dir, chat, tmp_path):
    index = write_llava_shards(chat, tmp_path / "shards", samples_per_shard=4)
    runs = {}
    for name in ("whole", "pieces"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(CONFIG.format(tiny=tiny_dir, index=index, out=tmp_path / name))
        runs[name] = path
    whole = train(load_config(runs["whole"]))
    assert whole.steps == 8 and whole.last_loss < whole.first_loss
    train(load_config(runs["pieces"]), stop_after_steps=5)  # killed after step 5; last checkpoint: step 3
    resumed = train(load_config(runs["pieces"], overrides=["trainer.resume_ckpt_path=auto"]))
    assert resumed.steps_this_run == 5  # from step 3: 6 of the 11 samples drawn, in the middle of a pass
    a = load_file(str(tmp_path / "whole" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "pieces" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
