"""Continuous batching (``omniplug.infer.engine``): answers equal those of transformers' own ``generate``
one request at a time; rows leave and join a running batch; one image asked several things is
prefilled once; sampling knobs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omniplug.infer.engine import ContinuousBatcher
from omniplug.infer.pipeline import Options, Pipeline, Request


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    from omniplug.build import build_model

    torch.manual_seed(0)
    return Pipeline(build_model(tiny_dir / "seg.yaml"), batch_size=3)


def _images(tiny_dir, n: int) -> list[str]:
    folder = tiny_dir / "seg_data" / "shapes_refcoco" / "images"
    return [str(p) for p in sorted(folder.glob("*.png"))[:n]]


def _without_cached_step(monkeypatch, pipe: Pipeline) -> None:
    """The LLM as one without a cached step: OneModel.generate decodes through transformers' generate."""
    monkeypatch.setattr(type(pipe.model.llm), "new_cache", lambda self: None)


def _same(a, b) -> None:
    assert a.text == b.text
    assert len(a.masks) == len(b.masks)
    for x, y in zip(a.masks, b.masks):
        assert np.array_equal(x.mask, y.mask)
        assert x.score == pytest.approx(y.score, abs=1e-4)


def _requests(tiny_dir) -> list[Request]:
    a, b, c, d = _images(tiny_dir, 4)
    return [Request("What is in the image?", [a], options=Options(max_new_tokens=12)),
            Request("Hi", [], options=Options(max_new_tokens=3)),
            Request("Please segment the red circle.", [b], options=Options(max_new_tokens=7)),
            Request("Tell me a long story about these shapes.", [c], options=Options(max_new_tokens=20)),
            Request("Is there a square?", [d], options=Options(max_new_tokens=2)),
            Request("Describe it.", [a, b], options=Options(max_new_tokens=9)),
            Request("Which colour is the circle?", [c], options=Options(max_new_tokens=5))]


def test_continuous_batch_equals_transformers_generate_one_at_a_time(pipe, tiny_dir, monkeypatch):
    """Seven requests, three slots: rows leave at their own limits and queued ones join the running
    batch; every answer equals transformers' greedy generate on that request alone."""
    requests = _requests(tiny_dir)
    seen = []
    real_step = ContinuousBatcher.step

    def watch(self):
        seen.append(len(self.rows))
        return real_step(self)

    monkeypatch.setattr(ContinuousBatcher, "step", watch)
    batched = pipe.batch(requests)
    monkeypatch.undo()
    assert max(seen) == 3 and len(set(seen)) > 1  # full, then partly empty: rows left and joined
    _without_cached_step(monkeypatch, pipe)
    alone = [pipe.batch([r])[0] for r in requests]
    for got, want in zip(batched, alone):
        _same(got, want)
    assert [len(r.text) > 0 for r in batched] == [True] * len(requests)


def test_a_request_joining_mid_answer_changes_no_running_row(pipe, tiny_dir):
    """Drive the batcher by hand: a group admitted after 4 steps of another gives both the answers
    they get alone."""
    model = pipe.model
    first, second = _requests(tiny_dir)[3], _requests(tiny_dir)[0]
    batches = [pipe._collate([(0, r)])[0] for r in (first, second)]
    alone = [model.generate(b, max_new_tokens=r.options.max_new_tokens) for b, r in zip(batches, (first, second))]
    batcher = ContinuousBatcher(model, slots=4)
    with torch.no_grad():
        batcher.admit(batches[0], max_new_tokens=first.options.max_new_tokens, tag="first")
        done = {}
        for _ in range(4):
            done.update(batcher.step())
        batcher.admit(batches[1], max_new_tokens=second.options.max_new_tokens, tag="second")
        assert len(batcher.rows) == 2
        while batcher.busy:
            done.update(batcher.step())
    assert done["first"].texts == alone[0].texts and done["second"].texts == alone[1].texts
    assert batcher.free_slots == 4 and batcher.cache is None  # everything left


def test_one_image_three_questions_share_the_prefill(pipe, tiny_dir):
    """Three questions about one image in one group: the image tokens (and the text before the question)
    run through the LLM once; the answers are those of three separate requests."""
    (a,) = _images(tiny_dir, 1)
    questions = ["What is in the image?", "Please segment the red circle.", "How many shapes are there?"]
    requests = [Request(q, [a], options=Options(max_new_tokens=6)) for q in questions]
    batch, _, _ = pipe._collate(list(enumerate(requests)))
    lengths = batch.attention_mask.sum(1)
    batcher = ContinuousBatcher(pipe.model, slots=3)
    with torch.no_grad():
        batcher.admit(batch, max_new_tokens=6)
        out = []
        while batcher.busy:
            out.extend(batcher.step())
    n_image = pipe.model.num_image_tokens
    assert batcher.prefill_positions <= int(lengths.sum()) - 2 * n_image  # the shared part ran once
    alone = [pipe.batch([r])[0] for r in requests]
    together = pipe.batch(requests)
    for got, want in zip(together, alone):
        _same(got, want)
    assert len(out) == 1 and len(out[0][1].texts) == 3


def test_sampling_with_a_tiny_top_p_is_greedy_and_a_generator_repeats(pipe, tiny_dir):
    requests = _requests(tiny_dir)[:3]
    greedy = pipe.batch(requests)
    nucleus = pipe.batch([Request(r.prompt, r.images, options=Options(max_new_tokens=r.options.max_new_tokens,
                                                                      do_sample=True, top_p=1e-6))
                          for r in requests])
    assert [r.text for r in nucleus] == [r.text for r in greedy]
    batch = pipe._collate([(0, requests[0])])[0]
    runs = [pipe.model.generate(batch, max_new_tokens=10, do_sample=True, temperature=5.0,
                                generator=torch.Generator().manual_seed(7)).texts for _ in range(2)]
    assert runs[0] == runs[1]


def test_bad_use_of_the_batcher_says_what_to_do(pipe, tiny_dir, monkeypatch):
    with pytest.raises(ValueError, match="slots must be >= 1"):
        ContinuousBatcher(pipe.model, slots=0)
    requests = _requests(tiny_dir)[:3]
    batch = pipe._collate(list(enumerate(requests)))[0]
    batcher = ContinuousBatcher(pipe.model, slots=2)
    with pytest.raises(ValueError, match="a group of 3 row.* does not fit: 2 of 2 slot"):
        batcher.admit(batch)
    _without_cached_step(monkeypatch, pipe)
    with pytest.raises(ValueError, match="no cached step.*use OneModel.generate"):
        ContinuousBatcher(pipe.model)


def test_hidden_states_and_logits_equal_those_of_the_row_alone(pipe, tiny_dir, monkeypatch):
    """What the decoders read: every row's prompt and answer hidden states and its logits, decoded in a
    running batch beside rows of other lengths, equal transformers' generate on that row alone."""
    model = pipe.model
    requests = _requests(tiny_dir)[:5]
    captured = {}
    real_finish = type(model).finish_generation

    def keep(self, prepared, gen):
        captured[int(prepared.batch.input_ids.shape[1])] = gen
        return real_finish(self, prepared, gen)

    batches = [pipe._collate([(0, r)])[0] for r in requests]
    monkeypatch.setattr(type(model), "finish_generation", keep)
    monkeypatch.setattr(type(model), "wants_logits", property(lambda self: True))
    batcher = ContinuousBatcher(model, slots=3)
    queue = list(zip(batches, requests))
    with torch.no_grad():
        while queue or batcher.busy:
            if queue and batcher.free_slots:
                b, r = queue.pop(0)
                batcher.admit(b, max_new_tokens=r.options.max_new_tokens)
            batcher.step()
    assert len(captured) == len(requests)  # prompt lengths differ
    for b, r in zip(batches, requests):
        got = captured[int(b.input_ids.shape[1])]
        want = model.llm.generate(model.embed_inputs(b.input_ids, b.pixel_values)[0], b.attention_mask,
                                  max_new_tokens=r.options.max_new_tokens + 1, eos_token_id=model.tokenizer.eos_id,
                                  pad_token_id=model.tokenizer.pad_id, return_hidden=True)
        n = int(got.lengths[0])
        assert got.sequences[0, :n].tolist() == want.sequences[0, :n].tolist()
        width = b.input_ids.shape[1] + n - 1  # every fed token (the last is fed only when it is a trigger)
        assert torch.allclose(got.hidden_states[0, :width], want.hidden_states[0, :width], atol=1e-4)
        assert torch.allclose(got.logits[0, :n], want.logits[0, :n], atol=1e-4)


def test_greedy_rows_beside_sampled_rows_stay_greedy(pipe, tiny_dir):
    """Options differ per request: a hot sampled request and one with an answer prefix share the
    running batch with greedy ones, whose answers do not change."""
    requests = _requests(tiny_dir)[:4]
    hot = Request(requests[1].prompt, requests[1].images, options=Options(max_new_tokens=8, do_sample=True,
                                                                          temperature=3.0))
    prefixed = Request(requests[2].prompt, requests[2].images, options=Options(max_new_tokens=4,
                                                                               answer_prefix="<seg>"))
    mixed = pipe.batch([requests[0], hot, prefixed, requests[3]], batch_size=4)
    assert mixed[0].text == pipe.batch([requests[0]])[0].text
    assert mixed[3].text == pipe.batch([requests[3]])[0].text
    _same(mixed[2], pipe.batch([prefixed])[0])
    assert len(mixed[2].masks) == 1


# --- the prefix cache: a conversation's next turn and a second question reuse earlier keys/values -------------
def test_a_conversations_next_turn_reuses_the_first_turn(tiny_dir, monkeypatch):
    """Turn 2 (history = turn 1's question and answer) starts from the keys and values kept when turn 1
    ended: only the new question runs through the LLM, and the answer (text, masks) equals the one
    computed from scratch and the one transformers' generate gives."""
    from omniplug.build import build_model
    from omniplug.data.conversation import Turn

    torch.manual_seed(0)
    model = build_model(tiny_dir / "seg.yaml")
    cached, fresh = Pipeline(model), Pipeline(model, prefix_cache_mb=0)
    assert fresh.prefix_cache is None
    (a,) = _images(tiny_dir, 1)
    first = cached.batch([Request("What is in the image?", [a], options=Options(max_new_tokens=6))])[0]
    raw = model.tokenizer.decode(cached.model.generate(
        cached._collate([(0, Request("What is in the image?", [a], options=Options(max_new_tokens=6)))])[0],
        max_new_tokens=6).token_ids[0], skip_special=False)
    assert cached.prefix_cache.entries and cached.prefix_cache.hits == 0
    history = [Turn("user", "What is in the image?", images=1), Turn("assistant", raw)]
    second = Request("Please segment the red circle.", [a], history=history,
                     options=Options(max_new_tokens=5, answer_prefix="<seg>"))
    states = []
    real_finish = type(model).finish_generation
    monkeypatch.setattr(type(model), "finish_generation",
                        lambda self, prepared, gen: states.append(gen) or real_finish(self, prepared, gen))
    got = cached.batch([second])[0]
    assert cached.prefix_cache.hits == 1
    full = int(cached.collator([cached._sample(0, second)]).attention_mask.sum())
    assert cached.prefix_cache.reused_positions >= full // 2  # the image and the first turn were not run again
    _same(got, fresh.batch([second])[0])
    reused, scratch = states  # what the decoders read: every prompt and answer state, equal to the fresh run's
    assert torch.equal(reused.sequences, scratch.sequences)
    assert torch.allclose(reused.hidden_states, scratch.hidden_states, atol=1e-5)
    monkeypatch.undo()
    _without_cached_step(monkeypatch, cached)
    _same(got, cached.batch([second])[0])
    assert first.text


def test_prefix_cache_keeps_the_longest_and_respects_its_budget():
    from omniplug.infer.engine import PrefixCache, _Prefix

    def entry(values: list[float], width: int = 4) -> _Prefix:
        embeds = torch.tensor(values)[:, None].repeat(1, width)
        kv = [torch.zeros(2, len(values), 8)]
        return _Prefix(embeds=embeds, keys=kv, values=kv, hidden=embeds.clone())

    cache = PrefixCache(max_mb=1)
    cache.put(entry([1, 2, 3]))
    cache.put(entry([1, 2, 3, 4, 5]))  # extends the first: replaces it
    cache.put(entry([7, 8]))
    assert [len(e.embeds) for e in cache.entries] == [5, 2]
    found, common = cache.match(torch.tensor([1.0, 2, 3, 9])[:, None].repeat(1, 4))
    assert common == 3 and len(found.embeds) == 5
    assert cache.match(torch.tensor([5.0])[:, None].repeat(1, 4)) == (None, 0)
    small = PrefixCache(max_mb=2 * entry([1] * 1000).nbytes / 2**20)
    for start in range(3):
        small.put(entry([start + 10.0] * 1000))
    assert [float(e.embeds[0, 0]) for e in small.entries] == [11.0, 12.0]  # the oldest left
    with pytest.raises(ValueError, match="max_mb must be > 0"):
        PrefixCache(max_mb=0)


def test_an_answer_cut_at_a_trigger_gets_its_state_and_others_take_no_extra_step(pipe, tiny_dir, monkeypatch):
    """A row stopped by max_new_tokens runs one more step only when its last token is a trigger (the decoder
    reads that token's hidden state): the mask then equals the teacher-forced one."""
    from tests.forced import force_answers

    (a,) = _images(tiny_dir, 1)
    answer = "It is <seg> and more words"
    ids = pipe.model.tokenizer.encode(answer, special=True)
    k = ids.index(pipe.model.tokenizer.token_id("<seg>")) + 1  # tokens up to and including the trigger
    request = Request("Please segment the red circle.", [a], options=Options(max_new_tokens=k))
    length = int(pipe.collator([pipe._sample(0, request)]).attention_mask.sum())
    force_answers(monkeypatch, pipe.model, {length: answer})
    steps = []
    real_step = ContinuousBatcher.step
    monkeypatch.setattr(ContinuousBatcher, "step", lambda self: steps.append(len(self.rows)) or real_step(self))
    cut_at_trigger = pipe.batch([request])[0]  # "It is <seg>": the trigger is the last kept token
    assert len(cut_at_trigger.masks) == 1 and len(steps) == k  # k - 1 fed tokens + the trigger's own step
    steps.clear()
    cut_before = pipe.batch([Request(request.prompt, [a], options=Options(max_new_tokens=k - 1))])[0]
    assert cut_before.masks == [] and len(steps) == k - 2  # "It is": no extra step for its last token
    monkeypatch.setattr(ContinuousBatcher, "step", real_step)
    _without_cached_step(monkeypatch, pipe)  # transformers' generate + the same decoders
    _same(cut_at_trigger, pipe.batch([request])[0])
