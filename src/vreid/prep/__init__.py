"""Data preparation run before ReID training (e.g. UNIT translation of synthetic images, method.md 4.7)."""
