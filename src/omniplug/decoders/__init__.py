"""Task decoders. Each module registers itself with DECODERS."""
