"""The procedural world: determinism, standard formats, uniqueness of language, hold-out, analyser."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniplug.data.world import (
    SEMANTIC_CLASSES, Scene, WorldConfig, caption, decode_rle, evaluate, expected_from_caption, expected_from_scene,
    fill_polygons, mask_to_polygons, measure_accuracy, read_meta, read_scenes, reasoning_query, render_scene,
    rgb_to_ids, sample_scene, scene_rng, score_objects, write_split,
)
from omniplug.data.world.cli import main as world_main
from omniplug.data.world.geometry import object_templates
from omniplug.data.world.language import LOCATIONS, Desc, RefExpr
from omniplug.data.world.vocab import COLOURS, COMPOSITES, DEFAULT_HOLDOUT, SHAPES, SIZES

N = 24
# pycocotools' RLE decoding trips a numpy 2 deprecation warning inside pycocotools itself.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "train"
    write_split(out_dir=out, n=N, seed=0, split="train")
    return out


def _load(path: Path):
    return json.loads(path.read_text())


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(split_dir, tmp_path):
    write_split(out_dir=tmp_path / "again", n=N, seed=0, split="train")
    write_split(out_dir=tmp_path / "other", n=N, seed=1, split="train")
    first, again, other = _files(split_dir), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first.keys() == again.keys() and all(first[k] == again[k] for k in first)
    assert first["scenes.jsonl"] != other["scenes.jsonl"]
    assert first["images/000000.png"] != other["images/000000.png"]


def test_several_processes_write_the_same_bytes(split_dir, tmp_path):
    write_split(out_dir=tmp_path / "parallel", n=N, seed=0, split="train", workers=2)
    first, parallel = _files(split_dir), _files(tmp_path / "parallel")
    assert first.keys() == parallel.keys() and [k for k in first if first[k] != parallel[k]] == []
    with pytest.raises(ValueError, match="workers must be >= 1"):
        write_split(out_dir=tmp_path / "none", n=N, seed=0, split="train", workers=0)


def test_scene_regenerates_alone_and_round_trips(split_dir):
    scenes = read_scenes(split_dir)
    assert len(scenes) == N and [s.index for s in scenes] == list(range(N))
    cfg = WorldConfig()
    assert sample_scene(config=cfg, seed=0, split="train", index=17) == scenes[17]
    image = _png(split_dir / "images" / "000017.png")
    assert np.array_equal(render_scene(scenes[17]).image, image)
    meta = read_meta(split_dir)
    assert meta["n"] == N and meta["seed"] == 0 and meta["holdout"] == [f"{c} {s}" for c, s in DEFAULT_HOLDOUT]


def test_coco_instances_load_with_pycocotools(split_dir):
    from pycocotools.coco import COCO

    coco = COCO(str(split_dir / "instances.json"))
    scenes = read_scenes(split_dir)
    assert len(coco.getImgIds()) == N
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert set(SHAPES + COMPOSITES) <= set(names.values()) and "wheel" in names.values()
    for scene in scenes[:8]:
        r = render_scene(scene)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[scene.index]))
        objects = [a for a in anns if "part_of" not in a["attributes"]]
        assert len(objects) == len(scene.objects)
        for a in objects:
            m = coco.annToMask(a).astype(bool)
            i = r.position(a["attributes"]["object_id"])
            assert np.array_equal(m, r.visible_mask(i)) and a["area"] == m.sum()
            x, y, w, h = a["bbox"]
            rows, cols = np.nonzero(m)
            assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
            assert names[a["category_id"]] == scene.objects[i].category
            assert a["attributes"]["colour"] == scene.objects[i].colour
        for a in anns:
            if "part_of" in a["attributes"]:
                parent = coco.anns[a["attributes"]["part_of"]]
                assert not (coco.annToMask(a) & ~coco.annToMask(parent)).any()


def test_panoptic_agrees_with_semantic_map(split_dir):
    pan = _load(split_dir / "panoptic.json")
    cats = {c["id"]: c for c in pan["categories"]}
    assert {c["name"] for c in cats.values() if not c["isthing"]} == {"sky", "grass", "water"}
    classes = _load(split_dir / "semantic_classes.json")
    assert classes == list(SEMANTIC_CLASSES) and classes[0] == "unlabelled"
    for ann in pan["annotations"]:
        ids = rgb_to_ids(_png(split_dir / "panoptic" / ann["file_name"]))
        sem = _png(split_dir / "semantic" / ann["file_name"])
        covered = np.zeros(ids.shape, dtype=bool)
        for seg in ann["segments_info"]:
            m = ids == seg["id"]
            assert m.sum() == seg["area"] > 0
            assert (sem[m] == classes.index(cats[seg["category_id"]]["name"])).all()
            covered |= m
        assert covered.all() and (sem > 0).all()


_REF_RE = re.compile(r"^the (?:(small|large) )?(?:(%s) )?(\w+)(?: (%s))?$" % (
    "|".join(COLOURS), "|".join(LOCATIONS.values())))


def test_refs_are_unique_and_point_at_their_object(split_dir):
    refs = _load(split_dir / "refs.json")
    anns = {a["id"]: a for a in _load(split_dir / "instances.json")["annotations"]}
    scenes = read_scenes(split_dir)
    loc = {v: k for k, v in LOCATIONS.items()}
    assert refs
    for ref in refs:
        ann = anns[ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"] and ann["category_id"] == ref["category_id"]
        scene = scenes[ref["image_id"]]
        for sent in ref["sentences"]:
            m = _REF_RE.match(sent["sent"])
            assert m, sent["sent"]
            size, colour, noun, where = m.groups()
            expr = RefExpr(desc=Desc(category=None if noun == "object" else noun, colour=colour, size=size),
                           location=loc.get(where))
            hits = expr.resolve(scene)  # parsed back from the text, resolved independently
            assert [h.id for h in hits] == [ann["attributes"]["object_id"]], sent["sent"]
            assert sent["tokens"] == sent["sent"].split()


def test_reasoning_queries_unique_and_polygons_exact(split_dir):
    files = sorted((split_dir / "reason_seg").glob("*.json"))
    assert len(files) >= N * 0.8
    for f in files:
        doc = _load(f)
        assert doc["is_sentence"] is True and doc["text"] and (f.with_suffix(".png")).is_file()
        mask = decode_rle(doc["mask_rle"])
        polys = [s["points"] for s in doc["shapes"] if s["label"] == "target"]
        assert mask.any() and np.array_equal(fill_polygons(polys, height=mask.shape[0], width=mask.shape[1]), mask)
    cfg, kinds = WorldConfig(), Counter()
    for i in range(60):
        scene = sample_scene(config=cfg, seed=5, split="val", index=i)
        r = render_scene(scene)
        found = reasoning_query(r, scene_rng(seed=5, split="val", index=i, stream="language"))
        if found is None:
            continue
        target, texts = found
        kinds[target.query.op] += 1
        assert [o.id for o in evaluate(target.query, scene)] == [target.object_id]
        assert all(target.query.text() in t for t in texts)
        if target.part is None:
            assert not r.objects[r.position(target.object_id)].occluded
    assert len(kinds) >= 6, kinds


def test_holdout_combinations(tmp_path):
    cfg, held = WorldConfig(), set(DEFAULT_HOLDOUT)
    for split in ("train", "val", "test"):
        for i in range(150):
            scene = sample_scene(config=cfg, seed=3, split=split, index=i)
            assert not {(o.colour, o.category) for o in scene.objects} & held
    for i in range(150):
        scene = sample_scene(config=cfg, seed=3, split="holdout", index=i)
        assert {(o.colour, o.category) for o in scene.objects} & held
    write_split(out_dir=tmp_path / "t", n=10, seed=3, split="train")
    text = (tmp_path / "t" / "llava.json").read_text() + (tmp_path / "t" / "editing.jsonl").read_text()
    assert not any(f"{c} {s}" in text for c, s in held)


def test_editing_changes_only_inside_mask(split_dir):
    lines = (split_dir / "editing.jsonl").read_text().splitlines()
    assert len(lines) >= N * 0.8
    for line in lines:
        e = json.loads(line)
        src, tgt = _png(split_dir / e["source"]), _png(split_dir / e["target"])
        mask = _png(split_dir / e["mask"]) > 0
        diff = (src != tgt).any(-1)
        assert diff.any() and not (diff & ~mask).any(), e["instruction"]


def test_generation_captions_parse_back(split_dir):
    for line in (split_dir / "generation.jsonl").read_text().splitlines():
        g = json.loads(line)
        scene = Scene.from_json(g["scene"])
        assert 1 <= len(scene.objects) <= 3 and (split_dir / g["image"]).is_file()
        assert score_objects(detected=expected_from_caption(g["caption"]), expected=scene.objects).exact


def test_caption_lists_every_object():
    cfg = WorldConfig()
    for i in range(50):
        scene = sample_scene(config=cfg, seed=2, split="test", index=i)
        text = caption(scene, np.random.default_rng(i))
        assert score_objects(detected=expected_from_caption(text), expected=expected_from_scene(scene)).exact


def test_analyser_recovers_clean_renders():
    cfg = WorldConfig()
    scenes = [sample_scene(config=cfg, seed=9, split="test", index=i) for i in range(200)]
    report = measure_accuracy(scenes)
    assert report.exact_all >= 0.98 and report.exact_shapes >= 0.98, report.summary()


@pytest.mark.parametrize("size", [48, 96])
def test_other_image_sizes(size):
    cfg = WorldConfig(size=size)
    scenes = [sample_scene(config=cfg, seed=1, split="train", index=i) for i in range(20)]
    assert all(render_scene(s).image.shape == (size, size, 3) for s in scenes)
    assert measure_accuracy(scenes).exact_all >= 0.95


def test_template_polygons_fill_back_exactly():
    for category in SHAPES + COMPOSITES:
        for size in SIZES:
            for t in object_templates(category, size, 64):
                m = np.pad(t.mask, 2)
                assert np.array_equal(fill_polygons(mask_to_polygons(m), height=m.shape[0], width=m.shape[1]), m)


def test_cli_refuses_non_empty_dir(tmp_path, capsys):
    out = tmp_path / "split"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert world_main(["generate", "--out", str(out), "--n", "2", "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert world_main(["generate", "--out", str(out), "--n", "2", "--no-progress", "--overwrite"]) == 2
    assert (out / "notes.txt").read_text() == "mine"  # never deletes what it did not write
    fresh = tmp_path / "fresh"
    assert world_main(["generate", "--out", str(fresh), "--n", "2", "--no-progress"]) == 0
    assert world_main(["generate", "--out", str(fresh), "--n", "3", "--no-progress", "--overwrite"]) == 0
    assert len(read_scenes(fresh)) == 3


def test_config_errors_say_what_to_do():
    with pytest.raises(ValueError, match=">= 48"):
        WorldConfig(size=32)
    with pytest.raises(ValueError, match="unknown hold-out colour"):
        WorldConfig(holdout=(("teal", "star"),))


def test_shuffled_turns_ask_any_question_first(tmp_path):
    """llava_json shuffle_turns: same exchanges, per-record order fixed by (seed, index), the image on the
    first question; world conversations (which always open with a caption request) then open with others."""
    from omniplug.data.world_tasks import WorldTaskDataset

    root = tmp_path / "w"
    plain = WorldTaskDataset(root=str(root), task="caption_vqa", n=8, seed=3)
    mixed = WorldTaskDataset(root=str(root), task="caption_vqa", n=8, seed=3, options={"shuffle_turns": True})
    firsts = set()
    for i in range(len(plain)):
        a, b = plain[i], mixed[i]
        pairs = lambda s: sorted((s.turns[k].text, s.turns[k + 1].text) for k in range(0, len(s.turns), 2))  # noqa: E731
        assert pairs(a) == pairs(b) and len(b.images) == 1
        assert b.turns[0].images == 1 and sum(t.images for t in b.turns) == 1
        assert [t.text for t in mixed[i].turns] == [t.text for t in b.turns]  # deterministic
        firsts.add(b.turns[0].text == a.turns[0].text)
    assert firsts == {True, False}


def test_generation_targets_carry_their_object_pixels(tmp_path):
    """``object_focus``: a generation target's focus mask is its scene's visible objects (the pixels the
    description is about); nothing else changes, and other tasks refuse the option."""
    from omniplug.data.world import render_scene
    from omniplug.data.world_tasks import WorldTaskDataset

    root = tmp_path / "train"
    plain = WorldTaskDataset(root=str(root), task="generation", n=4, seed=5)
    focused = WorldTaskDataset(root=str(root), task="generation", n=4, seed=5, object_focus=True)
    for i in range(len(focused)):
        a, b = plain[i].targets["gen"][0], focused[i].targets["gen"][0]
        assert a.focus is None and np.array_equal(np.asarray(a.image), np.asarray(b.image))
        rendering = render_scene(Scene.from_json(focused[i].meta["scene"]))
        assert np.array_equal(rendering.image, np.asarray(b.image))  # the record's scene is the target's
        assert b.focus.dtype == bool and np.array_equal(b.focus, rendering.owner >= 0) and 0 < b.focus.mean() < 0.5
    with pytest.raises(ValueError, match="object_focus is for task generation"):
        WorldTaskDataset(root=str(root), task="referring", n=4, seed=5, object_focus=True)


def test_colour_score_gives_blobs_partial_credit(split_dir):
    """``colour_score``: every generation pair's own image finds each described colour; a blob of the
    described colour scores there but not as an object; the background alone scores nothing."""
    from omniplug.data.world import analyse, colour_score
    from omniplug.data.world.vocab import COLOURS as RGB

    records = [json.loads(line) for line in (split_dir / "generation.jsonl").read_text().splitlines()]
    for rec in records:
        expected = expected_from_caption(rec["caption"])
        assert colour_score(Image.open(split_dir / rec["image"]), expected).exact, rec["caption"]
    expected = expected_from_caption("a small red star on grass under the sky")
    sky = np.zeros((64, 64, 3), np.uint8)
    sky[...] = (135, 206, 235)
    blob = sky.copy()
    yy, xx = np.mgrid[:64, :64]
    blob[((yy - 30) ** 2 / 36 + (xx - 20) ** 2 / 9) <= 1] = RGB["red"]  # a red ellipse, not a star
    assert colour_score(sky, expected).f1 == 0.0
    assert colour_score(blob, expected).exact and not score_objects(detected=analyse(blob), expected=expected).exact
    assert colour_score(blob, expected_from_caption("a house on grass under the sky")).f1 == 0.0


def test_parts_per_sample_asks_several_parts_of_one_image(tmp_path):
    """coco_parts ``parts_per_sample``: the same (whole, part) pairs and masks as one-per-sample, grouped by
    image into multi-turn conversations (image on the first question), in a seeded order that lets any
    pair come first."""
    from omniplug.data.world_tasks import WorldTaskDataset

    root = tmp_path / "w"
    single = WorldTaskDataset(root=str(root), task="part", n=16, seed=3)
    multi = WorldTaskDataset(root=str(root), task="part", n=16, seed=3, options={"parts_per_sample": 3})
    want = sorted((s.meta["labels"][0], s.meta["whole"], s.targets["seg"][0].tobytes(), s.meta["file_name"])
                  for s in (single[i] for i in range(len(single))))
    got, firsts, sizes = [], set(), set()
    for i in range(len(multi)):
        s = multi[i]
        assert len(s.images) == 1 and s.turns[0].images == 1 and sum(t.images for t in s.turns) == 1
        assert len(s.turns) == 2 * len(s.targets["seg"]) and all(t.text.count("<seg>") == 1 for t in s.turns[1::2])
        for k, (label, whole) in enumerate(zip(s.meta["labels"], s.meta["wholes"])):
            assert f"{label} of {whole}" in s.turns[2 * k].text
            got.append((label, whole, s.targets["seg"][k].tobytes(), s.meta["file_name"]))
        assert [t.text for t in multi[i].turns] == [t.text for t in s.turns]  # deterministic
        sizes.add(len(s.targets["seg"]))
        firsts.add(s.meta["labels"][0])
    assert sorted(got) == want and max(sizes) == 3 and len(multi) < len(single)
    assert len(firsts) > 1
    with pytest.raises(ValueError, match="parts_per_sample must be >= 1"):
        WorldTaskDataset(root=str(root), task="part", n=16, seed=3, options={"parts_per_sample": 0})


def test_brief_drawing_requests_name_the_objects_alone(tmp_path):
    """``brief_every``: every k-th generation sample asks for its objects without the background, in
    the reader's phrasings; the image target is unchanged; other tasks refuse the option."""
    from omniplug.data.world.language import parse_caption
    from omniplug.data.world_tasks import WorldTaskDataset

    root = tmp_path / "train"
    verbs = ("Draw", "Paint", "Show me", "Sketch")
    plain = WorldTaskDataset(root=str(root), task="generation", n=16, seed=5)
    brief = WorldTaskDataset(root=str(root), task="generation", n=16, seed=5, brief_every=2,
                             options={"prompts": [f"{v} {{caption}}." for v in verbs]})
    seen = {True: [], False: []}
    for i in range(len(brief)):
        a, b = plain[i], brief[i]
        assert np.array_equal(np.asarray(a.targets["gen"][0].image), np.asarray(b.targets["gen"][0].image))
        assert a.targets["gen"][0].caption == b.targets["gen"][0].caption  # the full description stays the target's
        text = b.turns[0].text
        assert b.meta["prompt"] == text
        assert ("under the sky" in text) == (i % 2 == 1)
        assert parse_caption(text) == parse_caption(a.turns[0].text)  # the same objects are asked for
        seen[i % 2 == 0].append(next(v for v in verbs if text.startswith(v + " ")))
    # brief and full requests each cycle through every phrasing (an even count of phrasings included)
    assert seen[True] == list(verbs) * 2 and seen[False] == list(verbs) * 2
    with pytest.raises(ValueError, match="brief_every is for task generation"):
        WorldTaskDataset(root=str(root), task="referring", n=6, seed=5, brief_every=2)
    with pytest.raises(ValueError, match="brief_every must be >= 0"):
        WorldTaskDataset(root=str(root), task="generation", n=16, seed=5, brief_every=-1)
