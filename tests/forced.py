"""Make a real LLM 'say' chosen answers, so that tests of everything after the LLM (decoders, markers,
labels, batching) do not depend on what random weights generate.

``force_answers`` patches the LLM class's two decoding entry points: ``generate`` (the path of LLMs
without a cached step) and ``forward_cached`` (continuous batching). The forward pass stays real (the
hidden states the decoders read are computed over the forced tokens); only the choice of the next token
is overridden. A row is recognised by its prompt length: at ``c`` real positions it is choosing token
``c - L`` of the answer for prompt length ``L`` (prompt lengths must be far enough apart that no two
answers claim the same count; with one answer for every prompt, the newest prompt wins).
"""

from __future__ import annotations

import torch

from omniplug.types import GenerateOutput


def force_answers(monkeypatch, model, answers: dict[int, str] | str) -> None:
    """``answers``: prompt length -> answer text, or one text for every prompt (each answer ends with EOS)."""
    tok = model.tokenizer
    llm_class = type(model.llm)
    by_length: dict[int, list[int]] = {}
    single = None
    if isinstance(answers, str):
        single = tok.encode(answers, special=True) + [tok.eos_id]
    else:
        by_length = {int(n): tok.encode(text, special=True) + [tok.eos_id] for n, text in answers.items()}

    def ids_for(length: int) -> list[int]:
        return single if single is not None else by_length[length]

    def fake_generate(self, inputs_embeds, attention_mask, *, max_new_tokens, **options):
        rows = [ids_for(int(n))[:max_new_tokens] for n in attention_mask.sum(1).tolist()]
        width = max(len(r) for r in rows)
        seq = torch.tensor([r + [tok.pad_id] * (width - len(r)) for r in rows], device=inputs_embeds.device)
        return GenerateOutput(sequences=seq, lengths=torch.tensor([len(r) for r in rows], device=seq.device))

    real_cached = llm_class.forward_cached

    def fake_forward_cached(self, inputs_embeds, attention_mask, position_ids, cache):
        fresh = cache.get_seq_length() == 0 or inputs_embeds.shape[1] > 1  # a prefill (decode steps feed one token)
        logits, hidden = real_cached(self, inputs_embeds, attention_mask, position_ids, cache)
        counts = attention_mask.sum(1).tolist()
        if single is not None and fresh:  # a prefill: these rows' prompt lengths, the newest last
            for n in counts:
                by_length.pop(int(n), None)
                by_length[int(n)] = single
        logits = logits.clone()
        for row, c in enumerate(counts):
            valid = [n for n in by_length if 0 <= int(c) - n < len(by_length[n])]
            if single is not None:
                valid = valid[-1:]  # one answer for all: the newest prompt that fits
            choices = {by_length[n][int(c) - n] for n in valid}
            if len(choices) > 1:
                raise AssertionError(f"forced answers are ambiguous at {c} positions: give the prompts lengths "
                                     f"further apart ({sorted(by_length)})")
            if choices:
                logits[row] = float("-inf")
                logits[row, choices.pop()] = 0.0
        return logits, hidden

    monkeypatch.setattr(llm_class, "generate", fake_generate)
    monkeypatch.setattr(llm_class, "forward_cached", fake_forward_cached)
