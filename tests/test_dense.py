"""Dense perception supervision: label maps from the world reach a head on the encoder's patch grid
and one on SAM's image embeddings; the cross entropy trains those modules; bad setups are loud."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omniplug.build import build_dataset, build_model
from omniplug.config import load_config
from omniplug.data.collate import Collator
from omniplug.data.world import DENSE_CHANNELS
from omniplug.data.world_tasks import WorldTaskDataset
from omniplug.heads.dense import IGNORE, DenseHead, DenseLabelError, collate_label_maps


def test_dense_head_learns_a_label_map_and_checks_classes():
    torch.manual_seed(0)
    feats = torch.randn(2, 4, 8, 8)
    labels = feats.argmax(1).repeat_interleave(2, 1).repeat_interleave(2, 2)  # (2, 16, 16): the argmax channel
    head = DenseHead(4, 4)
    opt = torch.optim.Adam(head.parameters(), lr=0.1)
    first = float(head.loss(feats, labels).detach())
    for _ in range(100):
        opt.zero_grad()
        loss = head.loss(feats, labels)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    with pytest.raises(DenseLabelError, match="gives it 4 classes"):
        head.loss(feats, torch.full((2, 16, 16), 7))
    assert head.loss(feats, torch.full((2, 16, 16), IGNORE)) is None  # nothing labelled: no loss
    with pytest.raises(DenseLabelError, match="expects"):
        head(torch.randn(2, 3, 8, 8))
    with pytest.raises(DenseLabelError, match="one class count per label-map channel"):
        head.loss(feats, labels.unsqueeze(1).repeat(1, 2, 1, 1))


def test_multi_channel_head_sums_channels():
    torch.manual_seed(0)
    feats = torch.randn(2, 4, 8, 8)
    labels = torch.stack([feats.argmax(1), (feats[:, 0] > 0).long()], 1)  # (2, 2, 8, 8)
    head = DenseHead(4, [4, 2])
    both = head.loss(feats, labels)
    only_first = head.loss(feats, torch.stack([labels[:, 0], torch.full_like(labels[:, 1], IGNORE)], 1))
    assert float(both) > float(only_first) > 0
    with pytest.raises(DenseLabelError, match="channel 1 holds class 5"):
        head.loss(feats, torch.stack([labels[:, 0], torch.full_like(labels[:, 1], 5)], 1))


def test_collate_label_maps():
    assert collate_label_maps([None, None]) is None
    out = collate_label_maps([np.array([[1, -1], [0, 2]]), None])
    assert out.shape == (2, 2, 2) and out[0].tolist() == [[1, IGNORE], [0, 2]] and bool((out[1] == IGNORE).all())
    with pytest.raises(DenseLabelError, match="must all be"):
        collate_label_maps([np.zeros((2, 2)), np.zeros((3, 3))])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense_world") / "train"
    WorldTaskDataset(root=str(root), task="semantic", n=6, seed=3)  # generates the split
    return root


def test_world_label_maps_match_the_annotations(world):
    """Category channel == the semantic task's masks; part channel == the part task's masks; colour
    channel == the colour the scene gives each shape."""
    classes = json.loads((world / "semantic_classes.json").read_text())
    assert tuple(classes) == DENSE_CHANNELS["category"]
    sizes = [len(v) for v in DENSE_CHANNELS.values()]
    ds = WorldTaskDataset(root=str(world), task="semantic", n=6, seed=3, dense_labels=True)
    for i in range(len(ds)):
        sample = ds[i]
        lm = sample.label_map
        assert lm.shape == (3, 64, 64) and all(0 <= lm[c].min() and lm[c].max() < n for c, n in enumerate(sizes))
        for label, mask in zip(sample.meta["labels"], sample.targets["seg"]):
            assert np.array_equal(lm[0] == classes.index(label), np.asarray(mask, dtype=bool))
    parts = WorldTaskDataset(root=str(world), task="part", n=6, seed=3, dense_labels=True)
    assert len(parts) > 0
    for i in range(len(parts)):
        sample = parts[i]
        part = DENSE_CHANNELS["part"].index(sample.meta["labels"][0])
        assert np.asarray(sample.targets["seg"][0], dtype=bool).sum() > 0
        assert (sample.label_map[1][np.asarray(sample.targets["seg"][0], dtype=bool)] == part).all()
    for task in ("caption_vqa", "referring", "panoptic", "editing"):  # every task with an image carries one
        assert WorldTaskDataset(root=str(world), task=task, n=6, seed=3, dense_labels=True)[0].label_map.shape == (3, 64, 64)
    assert WorldTaskDataset(root=str(world), task="referring", n=6, seed=3)[0].label_map is None  # off by default


def _config(tiny_dir, world, extra=()):
    return load_config(tiny_dir / "seg.yaml", [
        f"dataset.w_sem={{type: world, root: {world}, task: semantic, n: 6, seed: 3, dense_labels: true}}",
        f"dataset.w_cap={{type: world, root: {world}, task: caption_vqa, n: 6, seed: 3, dense_labels: true}}",
        "one_model.train_mode=2", "encoder.tiny_clip.freeze=false", "decoder.tiny_sam.freeze_image_encoder=false",
        "one_model.dense_classes=[12, 8, 9]", *extra])


def test_dense_losses_train_the_encoder_and_sam(tiny_dir, world):
    config = _config(tiny_dir, world, ["one_model.dense_loss_weights={encoder: 1.0, seg: 0.5}"])
    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    samples = [build_dataset(config, "w_sem")[i] for i in range(2)] + [build_dataset(config, "w_cap")[0]]
    batch = Collator(model, max_length=256)(samples)
    assert batch.label_maps.shape == (3, 3, 64, 64) and batch.first_image_rows.tolist() == [0, 1, 2]
    out = model(batch)
    assert {"dense/encoder", "dense/seg"} <= set(out.decoder_losses)
    out.loss.backward()
    clip_grad = sum(float(p.grad.abs().sum()) for p in model.encoder.parameters() if p.grad is not None)
    sam = model.decoders["seg"].model.vision_encoder
    sam_grad = sum(float(p.grad.abs().sum()) for p in sam.parameters() if p.grad is not None)
    assert clip_grad > 0 and sam_grad > 0
    # the heads are weights of the model (saved with it) but inference batches carry no label maps
    assert any(k.startswith("dense_heads.encoder") for k in model.state_dict())
    assert Collator(model, for_generation=True)(samples).label_maps is None


def test_dense_heads_follow_train_mode(tiny_dir, world):
    model = build_model(_config(tiny_dir, world, ["one_model.train_mode=0", "one_model.dense_loss_weights={encoder: 1.0}"]))
    assert not any(p.requires_grad for p in model.dense_heads.parameters())  # the encoder does not train in mode 0


@pytest.mark.parametrize("extra, message", [
    (["one_model.dense_loss_weights={sky: 1.0}"], "use 'encoder' or a decoder task"),
    (["one_model.dense_classes=null", "one_model.dense_loss_weights={encoder: 1.0}"], "dense_classes is not"),
])
def test_bad_dense_config_is_loud(tiny_dir, world, extra, message):
    with pytest.raises(ValueError, match=message):
        build_model(_config(tiny_dir, world, extra))


def test_sam_dense_loss_reads_each_image_once(tiny_dir, world):
    """A panoptic answer holds several <seg>: SAM's dense loss uses each sample's image embedding once."""
    config = _config(tiny_dir, world, ["one_model.dense_loss_weights={seg: 1.0}",
                                       f"dataset.w_pan={{type: world, root: {world}, task: panoptic, n: 6, seed: 3, "
                                       f"dense_labels: true}}"])
    torch.manual_seed(0)
    model = build_model(config)
    model.eval()
    pan = build_dataset(config, "w_pan")
    samples = [pan[0], build_dataset(config, "w_sem")[1], pan[1]]
    batch = Collator(model, max_length=256)(samples)
    with torch.no_grad():
        out = model(batch)
        sam = model.decoders["seg"]
        embeds = sam.image_embeddings(batch.decoder_pixels["seg"].pixel_values)  # one per sample, in batch order
        expected = model.dense_heads["seg"].loss(embeds, batch.label_maps)
    assert len(out.decoder_outputs["seg"].batch_index) > 3  # several masks per panoptic sample
    assert float(out.decoder_losses["dense/seg"]) == pytest.approx(float(expected), rel=1e-5)
