"""Data preparation run before ReID training (e.g. UNIT translation of synthetic images, docs/method.md)."""
