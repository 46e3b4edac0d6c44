"""Training-only heads that are not task decoders: no trigger token, never run at inference
(:mod:`.dense`: per-pixel class supervision of a feature map)."""
