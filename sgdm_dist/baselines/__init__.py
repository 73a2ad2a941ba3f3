"""Decoding baselines and the scoring every decoder is compared by (docs/decoding.md)."""
