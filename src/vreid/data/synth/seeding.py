"""Keyed random streams: every random decision is drawn from an RNG named by what it decides.

Naming each stream by a tuple such as ``(seed, "real", "frame", vehicle, camera, frame)`` makes the output
independent of rendering order, of the number of worker processes and of how many other identities exist.
"""

from __future__ import annotations

import zlib

import numpy as np


def _entropy_word(key: int | str) -> int:
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise TypeError(f"RNG keys are ints or strings, got {key!r}")
    if isinstance(key, str):
        # crc32 is stable across processes and Python versions (unlike hash()).
        return zlib.crc32(key.encode("utf-8"))
    if key < 0:
        raise ValueError(f"RNG keys must be non-negative, got {key}")
    return key


def make_rng(*keys: int | str) -> np.random.Generator:
    """A generator determined only by ``keys`` (ints >= 0 or strings)."""
    return np.random.default_rng([_entropy_word(k) for k in keys])
