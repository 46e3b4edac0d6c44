"""``Pipeline.batch``: N requests together == N single calls; images encoded once; limits and errors;
``omniplug infer --batch``; the pictures of ``omniplug.infer.render``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omniplug.infer.pipeline import Options, Pipeline, Request, RequestError
from omniplug.types import Mask, Response
from tests.forced import force_answers


@pytest.fixture(scope="module")
def seg_pipe(tiny_dir):
    from omniplug.build import build_model

    torch.manual_seed(0)
    return Pipeline(build_model(tiny_dir / "seg.yaml", ["one_model.conv_type=plain"]), batch_size=3)


@pytest.fixture(scope="module")
def edit_pipe(tiny_dir):
    from omniplug.build import build_model

    torch.manual_seed(0)
    return Pipeline(build_model(tiny_dir / "edit.yaml", ["one_model.conv_type=plain",
                                                          "decoder.tiny_sd.num_inference_steps=2"]))


def _images(tiny_dir, n: int) -> list[str]:
    folder = tiny_dir / "seg_data" / "shapes_refcoco" / "images"
    return [str(p) for p in sorted(folder.glob("*.png"))[:n]]


def _force_answers(monkeypatch, pipe: Pipeline, answers: dict[int, str]) -> None:
    """The LLM 'generates' ``answers[prompt length]`` for each row (the rest of the path is real)."""
    force_answers(monkeypatch, pipe.model, answers)


def _prompt_length(pipe: Pipeline, request: Request) -> int:
    return int(pipe.collator([pipe._sample(0, request)]).attention_mask.sum())


def _spread(pipe: Pipeline, requests: list[Request], gap: int = 16) -> list[Request]:
    """Lengthen prompts (" ok" words) until their token counts are ``gap`` apart: forced answers
    recognise a row by its prompt length (tests/forced.py)."""
    taken: list[int] = []
    for request in requests:
        while any(abs(_prompt_length(pipe, request) - n) < gap for n in taken):
            request.prompt += " ok"
        taken.append(_prompt_length(pipe, request))
    return requests


def _same(a: Response, b: Response) -> None:
    assert a.text == b.text
    assert len(a.masks) == len(b.masks) and len(a.images) == len(b.images)
    for x, y in zip(a.masks, b.masks):
        assert np.array_equal(x.mask, y.mask) and x.label == y.label
        assert x.score == pytest.approx(y.score, abs=1e-4)
    for x, y in zip(a.images, b.images):
        assert np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max() <= 1


# --- batch == single calls ------------------------------------------------------------------------
def test_batch_of_mixed_requests_equals_single_calls_greedy(seg_pipe, tiny_dir):
    """Real greedy generation: prompts of different lengths, 0-2 images, a history, per-request
    max_new_tokens in one chunk, and requests whose answers start with <seg> (their own group)."""
    a, b, c, d = _images(tiny_dir, 4)
    from omniplug.data.conversation import Turn

    requests = [
        Request("Please segment the red circle.", [a], options=Options(max_new_tokens=6)),
        Request("What is in the image?", [b], options=Options(max_new_tokens=12)),
        Request("Hi", [], options=Options(max_new_tokens=3)),
        Request("Segment the blue square left of the green triangle.", [c], options=Options(max_new_tokens=5,
                                                                                               answer_prefix="<seg>")),
        Request("And this one?", [d, a], history=[Turn("user", "Look.", images=1), Turn("assistant", "ok")],
                options=Options(max_new_tokens=8, answer_prefix="<seg>")),
        {"prompt": "two shapes", "images": [b], "options": {"max_new_tokens": 9}},
        Request("the red circle", [c], options=Options(max_new_tokens=2, answer_prefix="<seg>", max_task_tokens=1)),
    ]
    batched = seg_pipe.batch(requests)
    singles = [seg_pipe.batch([r])[0] for r in requests]
    assert len(batched) == len(requests)
    for got, want in zip(batched, singles):
        _same(got, want)
    assert [len(r.masks) for r in batched] == [0, 0, 0, 1, 1, 0, 1]
    # the public single call is the same path
    _same(seg_pipe([a], "Please segment the red circle.", max_new_tokens=6), batched[0])
    for r in batched:
        assert set(r.timings) == {"preprocess", "generate", "postprocess", "total"}
        assert r.timings["total"] == pytest.approx(r.timings["preprocess"] + r.timings["generate"]
                                                   + r.timings["postprocess"])


def test_masks_land_on_the_right_requests_of_a_chunk(seg_pipe, tiny_dir, monkeypatch):
    a, b, c = _images(tiny_dir, 3)
    requests = _spread(seg_pipe, [
        Request("Segment it.", [a]), Request("What is there, and what else?", [b]),
        Request("Segment the two of them please.", [c], options=Options(max_task_tokens=1)),
        Request("Segment the circle and the square and the rest.", [b], options=Options(max_task_tokens=3))])
    lengths = [_prompt_length(seg_pipe, r) for r in requests]
    answers = dict(zip(lengths, ["the circle: <seg>.", "a circle and a square.", "<seg> and <seg>.",
                                 "<seg>, <seg>, <seg>, <seg>."]))
    _force_answers(monkeypatch, seg_pipe, answers)
    batched = seg_pipe.batch(requests, batch_size=4)
    singles = [seg_pipe.batch([r])[0] for r in requests]
    for got, want in zip(batched, singles):
        _same(got, want)
    assert [len(r.masks) for r in batched] == [1, 0, 1, 3]  # max_task_tokens is per request
    assert batched[0].masks[0].label == "the circle" and batched[0].text == "the circle: [mask 1]."
    assert all(m.mask.shape == (48, 64) for r in batched for m in r.masks)


def test_images_are_encoded_once_per_request(edit_pipe, tiny_dir, monkeypatch):
    """Two <seg> and one <gen> run per answer: the shared encoder and SAM's image encoder each see
    every request's image once; the masks feed the edit."""
    model = edit_pipe.model
    seen: dict[str, list[int]] = {"encoder": [], "sam": []}
    hooks = [model.encoder.register_forward_hook(lambda m, args, out: seen["encoder"].append(args[0].shape[0])),
             model.decoders["seg"].model.vision_encoder.register_forward_hook(
                 lambda m, args, out: seen["sam"].append(args[0].shape[0]))]
    a, b = _images(tiny_dir, 2)
    requests = _spread(edit_pipe, [Request("Make the circle blue.", [a]), Request("Make the square red, please.", [b])])
    gen = "".join(f"<gen_{i}>" for i in range(4))
    answers = {_prompt_length(edit_pipe, r): f"<seg> and <seg> {gen}." for r in requests}
    _force_answers(monkeypatch, edit_pipe, answers)
    try:
        batched = edit_pipe.batch(requests)
        assert seen == {"encoder": [2], "sam": [2]}  # one call each, one row per request
        seen["encoder"].clear(), seen["sam"].clear()
        single = edit_pipe(a, "Make the circle blue.")
        assert seen == {"encoder": [1], "sam": [1]}
    finally:
        for h in hooks:
            h.remove()
    assert [(len(r.masks), len(r.images)) for r in batched] == [(2, 1), (2, 1)]
    _same(single, batched[0])


# --- limits and errors ----------------------------------------------------------------------------
def test_typed_special_tokens_are_plain_text(edit_pipe, tiny_dir, monkeypatch):
    model = edit_pipe.model
    (a,) = _images(tiny_dir, 1)
    from omniplug.data.conversation import Turn

    typed = "Segment <seg> here <image> and draw <gen_0><gen_1><gen_2><gen_3>"
    request = Request(typed, [a], history=[Turn("user", "<seg> <image>"), Turn("assistant", "fine")])
    ids = edit_pipe.collator([edit_pipe._sample(0, request)]).input_ids[0].tolist()
    triggers = {i for t_ids in model.trigger_ids.values() for i in t_ids}
    assert not triggers & set(ids)
    assert ids.count(model.image_token_id) == model.num_image_tokens  # only the one real image
    _force_answers(monkeypatch, edit_pipe, {len(ids): "I cannot."})
    response = edit_pipe.batch([request])[0]
    assert response.masks == [] and response.images == [] and response.text == "I cannot."


def test_limits_and_bad_requests_name_the_index(seg_pipe, tiny_dir, monkeypatch):
    (a,) = _images(tiny_dir, 1)
    calls = []
    monkeypatch.setattr(seg_pipe.model, "generate", lambda *x, **k: calls.append(1))
    good = {"prompt": "ok", "image": a}
    cases = [
        ({"prompt": 5}, "the prompt must be text"),
        ({"prompt": "x", "options": {"max_new_tokens": 0}}, "max_new_tokens must be an integer from 1 to 512"),
        ({"prompt": "x", "options": {"max_new_tokens": 513}}, "from 1 to 512"),
        ({"prompt": "x", "options": {"max_new_tokens": True}}, "max_new_tokens"),
        ({"prompt": "x", "options": {"max_task_tokens": 65}}, "max_task_tokens must be an integer from 1 to 64"),
        ({"prompt": "x", "options": {"do_sample": True, "temperature": 0}}, "temperature must be a number > 0"),
        ({"prompt": "x", "options": {"top_p": 1.5}}, "top_p"),
        ({"prompt": "x", "options": {"beams": 2}}, "unknown option"),
        ({"prompt": "x", "colour": "red"}, "unknown key"),
        ({"prompt": "x", "image": a, "images": [a]}, "not both"),
        ({"prompt": "x", "history": [{"role": "user", "text": "look", "images": 1}]}, "places 1 image"),
        (42, "expected a Request or a dict"),
    ]
    for bad, message in cases:
        with pytest.raises(RequestError, match=f"^request 1: .*{message}") as info:
            seg_pipe.batch([good, bad, good])
        assert info.value.index == 1
    assert calls == []  # every request is checked before anything runs
    with pytest.raises(RequestError, match="request 2: image not found: .*nope.png"):
        seg_pipe.batch([good, good, {"prompt": "x", "image": str(tiny_dir / "nope.png")}], batch_size=8)
    with pytest.raises(RequestError, match=r"request 1: \d+ tokens exceed max_length"):
        seg_pipe.batch([good, {"prompt": "red " * 3000}])
    with pytest.raises(ValueError, match="max_new_tokens must be an integer") as info:  # a single call: no index
        seg_pipe(a, "x", max_new_tokens=0)
    assert info.value.index is None and not str(info.value).startswith("request")
    assert seg_pipe.batch([]) == []


def test_requests_join_in_arrival_order_and_keep_their_order(seg_pipe, tiny_dir, monkeypatch):
    """One running batch for every request: requests join in arrival order as slots free up,
    consecutive requests with the same shared options (answer prefix, sampling) as one group; a
    request with other options waits for nothing but a slot."""
    from omniplug.infer.engine import ContinuousBatcher

    (a,) = _images(tiny_dir, 1)
    real = ContinuousBatcher.admit
    admitted = []

    def spy(self, batch, **options):
        admitted.append((batch.input_ids.shape[0], options["answer_prefix"], options["max_new_tokens"]))
        return real(self, batch, **options)

    monkeypatch.setattr(ContinuousBatcher, "admit", spy)
    requests = _spread(seg_pipe, [Request("one", [a], options=Options(max_new_tokens=5)),
                                  Request("two", [a], options=Options(max_new_tokens=6, answer_prefix="<seg>")),
                                  Request("three", [a], options=Options(max_new_tokens=2)),
                                  Request("four", [a], options=Options(max_new_tokens=4)),
                                  Request("five", [a], options=Options(max_new_tokens=3, answer_prefix="<seg>"))])
    # nobody stops before its limit
    force_answers(monkeypatch, seg_pipe.model, {_prompt_length(seg_pipe, r): "a a a a a a a a" for r in requests})
    done = []
    out = seg_pipe.batch(requests, batch_size=2, progress=done.append)
    # batch_size 2: "one" and "two" (other prefix) start; "three" takes the slot "one" frees after 5 tokens,
    # "four" the slot "three" frees after 2 more; "five" the slot "two" frees after 6 (+1 to feed the mask's state)
    assert admitted == [(1, "", [5]), (1, "<seg>", [6]), (1, "", [2]), (1, "", [4]), (1, "<seg>", [3])]
    assert done == [1, 1, 1, 1, 1]
    assert [len(r.masks) for r in out] == [0, 1, 0, 0, 1]
    for request, response in zip(requests, out):  # responses in request order
        _same(response, seg_pipe.batch([request])[0])


# --- omniplug infer --batch -----------------------------------------------------------------------
def test_infer_batch_cli_writes_every_output(tiny_dir, tmp_path, monkeypatch, capsys):
    from omniplug.cli import main

    a, b = _images(tiny_dir, 2)
    (tmp_path / "imgs").mkdir()
    Image.open(a).save(tmp_path / "imgs" / "a.png")
    from omniplug.build import build_model

    probe = Pipeline(build_model(tiny_dir / "seg.yaml", ["one_model.conv_type=plain"]))
    requests = _spread(probe, [Request("Segment the red circle.", [a]), Request("Segment both, please.", [b]),
                               Request("Say something.", [])])
    lines = [json.dumps({"id": "first", "image": "imgs/a.png", "prompt": requests[0].prompt}),
             "",
             json.dumps({"image": b, "prompt": requests[1].prompt, "options": {"max_new_tokens": 20}}),
             json.dumps({"prompt": requests[2].prompt})]
    batch = tmp_path / "requests.jsonl"
    batch.write_text("\n".join(lines) + "\n")
    answers = dict(zip([_prompt_length(probe, r) for r in requests],
                       ["the red circle: <seg>.", "the circle: <seg>, the square: <seg>.", "Hello."]))
    _force_answers(monkeypatch, probe, answers)
    out = tmp_path / "out"
    rc = main(["infer", "-c", str(tiny_dir / "seg.yaml"), "one_model.conv_type=plain", "--batch", str(batch),
               "--out", str(out), "--batch-size", "2"])
    assert rc == 0, capsys.readouterr().err
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["line"] for r in results] == [1, 3, 4]
    assert [r["dir"] for r in results] == [str(out / "first"), str(out / "line_00003"), str(out / "line_00004")]
    assert [len(r["masks"]) for r in results] == [1, 2, 0]
    assert results[1]["text"] == "the circle: [mask 1], the square: [mask 2]."
    assert [m["label"] for m in results[1]["masks"]] == ["the circle", "the square"]
    for name, n_masks in (("first", 1), ("line_00003", 2)):
        folder = out / name
        assert json.loads((folder / "response.json").read_text())["text"] == results[0 if name == "first" else 1]["text"]
        for i in range(1, n_masks + 1):
            assert Image.open(folder / f"mask_{i}.png").size == (64, 48)
        assert Image.open(folder / "overlay.png").size == (64, 48)
        labelled = Image.open(folder / "overlay_labelled.png")
        assert labelled.size == (64 * 6, 48 * 6)  # enlarged so that the labels are legible
    assert sorted(p.name for p in (out / "line_00004").iterdir()) == ["response.json"]


def test_infer_batch_cli_rejects_a_bad_line_before_building(tiny_dir, tmp_path, monkeypatch, capsys):
    from omniplug.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be built for a bad batch file")

    monkeypatch.setattr(Pipeline, "from_config", no_model)
    (a,) = _images(tiny_dir, 1)
    good = json.dumps({"image": a, "prompt": "ok"})
    cases = [
        ([good, "{not json"], ":2: not valid JSON"),
        ([good, good, json.dumps({"image": "missing.png", "prompt": "x"})], ":3: image not found: .*missing.png"),
        ([json.dumps({"prompt": "x", "options": {"max_new_tokens": 10_000}})], ":1: max_new_tokens must be"),
        ([json.dumps(["prompt"])], ":1: each line must be a JSON object"),
        ([json.dumps({"id": "x", "prompt": "a"}), json.dumps({"id": "x", "prompt": "b"})], ":2: .*already used by line 1"),
        ([""], "no requests"),
    ]
    import re

    for i, (lines, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        rc = main(["infer", "-c", str(tiny_dir / "seg.yaml"), "--batch", str(path), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and re.search(message, err), err
    rc = main(["infer", "-c", str(tiny_dir / "seg.yaml"), "--batch", str(tmp_path / "bad0.jsonl")])
    assert rc == 2 and "--out" in capsys.readouterr().err


def test_infer_batch_cli_generated_images(tiny_dir, tmp_path, capsys):
    from omniplug.cli import main

    batch = tmp_path / "draw.jsonl"
    prefix = "".join(f"<gen_{i}>" for i in range(4))
    batch.write_text(json.dumps({"prompt": "Draw a red circle.", "options": {"answer_prefix": prefix,
                                                                              "max_new_tokens": 1}}) + "\n")
    rc = main(["infer", "-c", str(tiny_dir / "gen.yaml"), "decoder.tiny_sd.num_inference_steps=2", "--batch",
               str(batch), "--out", str(tmp_path / "o")])
    assert rc == 0, capsys.readouterr().err
    (result,) = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert result["images"] == [str(tmp_path / "o" / "line_00001" / "image_1.png")]
    with Image.open(result["images"][0]) as im:
        assert im.format == "PNG"


# --- pictures ---------------------------------------------------------------------------------------
def test_save_response_draws_labels_and_boxes(tmp_path):
    from omniplug.infer.render import PALETTE, box_parts, draw_boxes, labelled_overlay, save_response

    image = Image.new("RGB", (32, 16), (0, 0, 0))
    m = np.zeros((16, 32), bool)
    m[4:12, 8:20] = True
    labelled = labelled_overlay(image, [Mask(m, 0.9, label="the red circle")], min_side=64)
    assert labelled.size == (128, 64)
    px = np.asarray(labelled)
    assert (px == PALETTE[0]).all(-1).sum() > 20  # the label tag in the mask's colour
    boxes = [(2, 2, 10, 10), {"box": [12, 1, 30, 15], "label": "car", "score": 0.8}]
    assert box_parts(boxes[1]) == ((12.0, 1.0, 30.0, 15.0), "car", 0.8)
    drawn = np.asarray(draw_boxes(Image.new("RGB", (160, 80)), [(10, 40, 50, 70), (100, 30, 150, 75)], min_side=16))
    assert tuple(drawn[70, 30]) == PALETTE[0] and tuple(drawn[75, 120]) == PALETTE[1]  # bottom edges of the outlines
    assert tuple(drawn[60, 30]) == (0, 0, 0)  # inside stays as it was
    with pytest.raises(ValueError, match="4 numbers"):
        box_parts((1, 2, 3))
    response = Response(text="the red circle: [mask 1]", masks=[Mask(m, 0.9, label="the red circle")],
                        images=[Image.new("RGB", (8, 8), (255, 0, 0))], boxes=boxes,
                        actions=[np.array([0.5, -0.5])], timings={"total": 0.1})
    record = save_response(response, image, tmp_path / "r")
    names = sorted(p.name for p in (tmp_path / "r").iterdir())
    assert names == ["boxes.png", "image_1.png", "mask_1.png", "overlay.png", "overlay_labelled.png", "response.json"]
    saved = json.loads((tmp_path / "r" / "response.json").read_text())
    assert saved == record
    assert saved["masks"][0]["label"] == "the red circle" and saved["masks"][0]["area"] == 96
    assert saved["boxes"][1] == {"box": [12.0, 1.0, 30.0, 15.0], "label": "car", "score": 0.8}
    assert saved["actions"] == [[0.5, -0.5]]


# --- hidden states from generation == a second pass -----------------------------------------------
def _without_generation_states(monkeypatch, model) -> None:
    """Make the LLM return no hidden states, so that OneModel.generate runs its teacher-forced pass."""
    real = type(model.llm).generate

    def plain(self, inputs_embeds, attention_mask, *, return_hidden=False, **options):
        return real(self, inputs_embeds, attention_mask, **options)

    monkeypatch.setattr(type(model.llm), "generate", plain)


@pytest.mark.parametrize("config,entry,prefix", [("seg.yaml", None, "<seg>"), ("act.yaml", "act_bins_tiny", "<act>"),
                                                 ("act.yaml", "act_tokens_tiny", "<act>")])
def test_decoders_read_the_states_computed_while_generating(tiny_dir, monkeypatch, config, entry, prefix):
    """The hidden states and logits kept from generation give the decoders what a second, teacher-forced
    pass over prompt + answer gives (masks; action tokens read from the answer's logits)."""
    from omniplug.build import build_model
    from omniplug.data.collate import Collator
    from omniplug.data.conversation import Turn
    from omniplug.data.sample import Sample

    torch.manual_seed(0)
    model = build_model(tiny_dir / config, ["one_model.conv_type=plain"] + ([f"one_model.decoder={entry}"] if entry else []))
    model.eval()
    a, b = _images(tiny_dir, 2)
    from omniplug.data.images import open_image

    samples = [Sample(turns=[Turn("user", "Segment the red circle.", images=1)], images=[open_image(a)]),
               Sample(turns=[Turn("user", "Go.", images=1)], images=[open_image(b)])]
    batch = Collator(model, for_generation=True)(samples)
    task = next(iter(model.decoders))
    span = model.decoders[task].answer_length
    options = dict(max_new_tokens=[span + 1, span + 4], answer_prefix=prefix)
    fast = model.generate(batch, **options)
    _without_generation_states(monkeypatch, model)
    slow = model.generate(batch, **options)
    assert fast.texts == slow.texts
    for x, y in zip(fast.decoder_outputs[task], slow.decoder_outputs[task]):
        assert len(x) == len(y) >= 1
        for p, q in zip(x, y):
            if isinstance(p, Mask):
                assert np.array_equal(p.mask, q.mask) and p.score == pytest.approx(q.score, abs=1e-4)
            else:
                assert np.allclose(np.asarray(p), np.asarray(q), atol=1e-4)


def test_a_mask_trigger_without_an_image_yields_no_mask(seg_pipe, tiny_dir):
    """A model may answer "<seg>" to a request without an image (v12 did, to "Draw a red star."): the mask
    decoder has nothing to read, so that request gets no mask — alone or beside requests with images —
    instead of an error for the whole batch."""
    (a,) = _images(tiny_dir, 1)
    alone = seg_pipe.batch([Request("Draw a red star.", [], options=Options(max_new_tokens=2, answer_prefix="<seg>"))])
    assert alone[0].masks == [] and "<seg>" not in alone[0].text
    mixed = seg_pipe.batch([Request("Draw a red star.", [], options=Options(max_new_tokens=2, answer_prefix="<seg>")),
                            Request("Segment it.", [a], options=Options(max_new_tokens=2, answer_prefix="<seg>"))])
    assert [len(r.masks) for r in mixed] == [0, 1]
    _same(mixed[1], seg_pipe.batch([Request("Segment it.", [a], options=Options(max_new_tokens=2,
                                                                                 answer_prefix="<seg>"))])[0])


def test_a_single_request_answered_with_a_mask_but_no_image_says_why(seg_pipe):
    """Asked alone (as the server asks), the same request is refused with a reason (the server's 422)."""
    with pytest.raises(ValueError, match="no image was given"):
        seg_pipe([], "Draw a red star.", max_new_tokens=2, answer_prefix="<seg>")
