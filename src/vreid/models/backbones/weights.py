"""Load ImageNet (or any) pretrained weights from a local file into a backbone.

Nothing here downloads: the brief of the toolkit is that weights come from a path the user gives. Files are read
with ``torch.load(weights_only=True)`` so that a checkpoint can never run code while being unpickled.

Accepted layouts (all seen in the wild for the backbones we support):

- a plain state_dict (torchvision ``*.pth``, IBN-Net v1.0 releases such as ``resnet50_ibn_a-d9d0bb7b.pth``);
- a dict with the weights under ``state_dict`` or ``model`` (the old IBN-Net ``*.pth.tar`` files, training
  checkpoints with optimizer state beside them);
- keys prefixed ``module.`` (saved from ``nn.DataParallel`` / DDP).

Classifier keys (``fc.``, ``classifier.``, ``head.`` by default) are dropped because a backbone has no classifier.
A backbone whose parameter names differ from its checkpoint's in a systematic way may define
``adapt_state_dict(state) -> state``; it is called after prefix stripping and classifier dropping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vreid.errors import VreidError

__all__ = ["LoadReport", "load_pretrained", "read_state_dict"]

logger = logging.getLogger(__name__)

_NESTED_KEYS = ("state_dict", "model")
_DP_PREFIX = "module."
# BatchNorm fills a missing counter itself (checkpoints from before PyTorch 0.4.1 lack it); not worth a warning.
_TOLERATED_MISSING_SUFFIX = "num_batches_tracked"


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: names, so that a silent partial load cannot go unnoticed."""

    missing: list[str]
    unexpected: list[str]
    loaded: int
    dropped: list[str] = field(default_factory=list)


def _names(keys: list[str], limit: int = 20) -> str:
    """Key names for an error message, capped so that a wholly wrong file gives a readable error."""
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely and return its flat ``name -> tensor`` mapping (``module.`` stripped).

    The one reader of weight files: ImageNet releases, vreid's ``model_final.pth`` / ``.safetensors``, training
    checkpoints (weights under ``model``), Mask R-CNN weights.
    """
    path = Path(path)
    if not path.is_file():
        raise VreidError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError, ValueError... for a corrupt or cut file
            raise VreidError(f"{path}: not a readable safetensors file ({type(exc).__name__})") from None
        return {k[len(_DP_PREFIX):] if k.startswith(_DP_PREFIX) else k: v for k, v in obj.items()}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VreidError(f"{path}: not a loadable PyTorch weights file ({reason})") from None
    if not isinstance(obj, Mapping):
        raise VreidError(f"{path}: expected a state_dict (a mapping of names to tensors), found {type(obj).__name__}")
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    tensors: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, value in obj.items():
        if isinstance(value, torch.Tensor):
            name = str(name)
            tensors[name[len(_DP_PREFIX):] if name.startswith(_DP_PREFIX) else name] = value
        else:
            skipped.append(str(name))
    if not tensors:
        raise VreidError(f"{path}: no tensors found; top-level keys: {sorted(map(str, obj))[:10]}")
    if skipped:
        logger.warning("%s: ignoring %d non-tensor entries: %s", path, len(skipped), ", ".join(skipped[:10]))
    return tensors


def load_pretrained(
    module: nn.Module,
    path: str | Path,
    drop_prefixes: Sequence[str] = ("fc.", "classifier.", "head."),
    strict: bool = False,
) -> LoadReport:
    """Copy the weights in ``path`` into ``module``, dropping classifier keys.

    A shape mismatch is always an error (it means the wrong architecture or file). Missing and unexpected keys are
    logged as warnings and returned in the report; with ``strict=True`` they are an error, raised before anything is
    copied, so a failed load leaves ``module`` untouched.
    """
    path = Path(path)
    state = read_state_dict(path)
    prefixes = tuple(drop_prefixes)
    dropped = [name for name in state if prefixes and name.startswith(prefixes)]
    for name in dropped:
        del state[name]
    adapt = getattr(module, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state)

    expected = module.state_dict()
    mismatched = [
        f"{name}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[name].shape)}"
        for name, tensor in state.items()
        if name in expected and tensor.shape != expected[name].shape
    ]
    if mismatched:
        raise VreidError(f"{path}: shape mismatch for {len(mismatched)} key(s): " + "; ".join(mismatched[:20]))
    missing = [n for n in expected if n not in state and not n.endswith(_TOLERATED_MISSING_SUFFIX)]
    unexpected = [n for n in state if n not in expected]
    if strict and (missing or unexpected):
        raise VreidError(
            f"{path}: does not match {type(module).__name__} (strict): "
            f"missing keys {_names(missing)}, unexpected keys {_names(unexpected)}"
        )
    if missing:
        logger.warning("%s: %d model key(s) missing from the checkpoint: %s", path, len(missing), ", ".join(missing))
    if unexpected:
        logger.warning("%s: %d checkpoint key(s) unused by the model: %s", path, len(unexpected), ", ".join(unexpected))

    module.load_state_dict(state, strict=False)
    loaded = len(state) - len(unexpected)
    logger.info("%s: loaded %d tensors into %s (%d classifier keys dropped)", path, loaded, type(module).__name__,
                len(dropped))
    return LoadReport(missing=missing, unexpected=unexpected, loaded=loaded, dropped=dropped)
