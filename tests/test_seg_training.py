"""A short hand-written training run on the synthetic shapes set: the mask loss must fall by half.

(The shared training loop is tested elsewhere; this checks that gradients reach SAM's mask
decoder and the output projector through the whole tiny model and that they learn.)"""

from __future__ import annotations

import torch


def test_mask_loss_halves_in_30_steps(tiny_dir):
    from omniplug.build import build_entry, build_model
    from omniplug.config import load_config
    from omniplug.data.collate import Collator

    torch.manual_seed(0)
    cfg = load_config(tiny_dir / "seg.yaml", ["one_model.conv_type=plain"])
    model = build_model(cfg)
    model.train()
    ds = build_entry(cfg.entry("dataset", "shapes_train", where="test"))
    batch = Collator(model, max_length=cfg.data.max_length)([ds[i] for i in (0, 10, 20, 30)])  # 4 images
    head = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith(("decoders.", "out_projectors."))]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(("decoders.", "out_projectors."))]
    assert head and rest
    opt = torch.optim.AdamW([{"params": head, "lr": 1e-2}, {"params": rest, "lr": 1e-3}], weight_decay=0.0)
    mask_losses = []
    for _ in range(30):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        mask_losses.append(float(out.decoder_losses["seg/bce"].detach() + out.decoder_losses["seg/dice"].detach()))
    start, end = mask_losses[0], sum(mask_losses[-5:]) / 5
    print(f"mask loss (2*bce + 0.5*dice): step 0 {start:.3f} -> last 5 steps {end:.3f}")
    assert end <= 0.5 * start, mask_losses
