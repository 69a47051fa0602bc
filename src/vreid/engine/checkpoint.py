"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, so that
``torch.load(weights_only=True)`` reads it: model, optimizer, AMP scaler, loss-weight (MALW) and EMA
states, the position (epoch, batch) and the RNG states needed to continue exactly.
"""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path
from typing import Any

import torch

from vreid.errors import VreidError
from vreid.fileio import atomic_write_bytes
from vreid.models.backbones.weights import read_state_dict
from vreid.runfiles import FINAL_WEIGHTS

log = logging.getLogger(__name__)

__all__ = ["FINAL_WEIGHTS", "NonFiniteWeights", "load_checkpoint", "model_weights", "non_finite_tensors",
           "rng_state", "save_checkpoint", "save_final_weights", "set_rng_state"]


class NonFiniteWeights(VreidError):
    """Weights (parameters or buffers) hold NaN or infinity: such a state is never written over a good one."""


# parts of a training checkpoint that are not weights: an optimizer's or scaler's state may hold inf legitimately
_NOT_WEIGHTS = frozenset({"optimizer", "scaler", "rng", "criterion"})


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in ``state`` (nested dicts/lists, optimizer and RNG state skipped)
    that hold NaN or infinity."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix or "tensor"] if bad else []
    if isinstance(state, dict):
        return [name for key, value in state.items() if key not in _NOT_WEIGHTS
                for name in non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(state, (list, tuple)):
        return [name for i, value in enumerate(state) for name in non_finite_tensors(value, f"{prefix}[{i}]")]
    return []


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Serialise to memory, then write to a temporary file and rename: a kill leaves the old file intact.

    Refused (:class:`NonFiniteWeights`, the old file kept) when any weight, parameter or buffer, is not finite:
    a diverged step must never replace the last good checkpoint.
    """
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteWeights(f"{path}: not written, the weights hold NaN or infinity ({', '.join(bad[:5])}"
                               f"{', ...' if len(bad) > 5 else ''}); the previous file, if any, is kept")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise VreidError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        raise VreidError(f"{path}: not a readable vreid checkpoint ({type(exc).__name__}: {exc})") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights in a final-weights file (plain state_dict), a training checkpoint or safetensors: the
    one weight-file reader, :func:`vreid.models.backbones.weights.read_state_dict`."""
    return read_state_dict(path)


def save_final_weights(state_dict: dict[str, torch.Tensor], out_dir: Path) -> tuple[Path, Path]:
    """``model_final.pth`` (plain state_dict) and ``model_final.safetensors`` beside it."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    pth = save_checkpoint(tensors, out_dir / f"{FINAL_WEIGHTS}.pth")  # refuses non-finite weights before either file
    st = atomic_write_bytes(out_dir / f"{FINAL_WEIGHTS}.safetensors", save(tensors))
    return pth, st
