"""Where retrieval runs: the user's choice (``auto`` | ``cpu`` | ``cuda[:N]``) -> a torch device string or ``None``.

``None`` is the numpy path on the CPU; a string is a device for :mod:`vreid.retrieval.accel`. This module imports
torch only when the answer depends on it, so commands on saved features start without torch on a machine with
no NVIDIA driver: ``auto`` asks torch for CUDA only where a driver is loaded (``/proc/driver/nvidia/version``,
Linux), or where torch is already imported (after extraction, the question is free).
"""

from __future__ import annotations

import os
import sys

from vreid.errors import VreidError

#: ``--device`` / TEST.RETRIEVAL_DEVICE choices.
RETRIEVAL_DEVICES = ("auto", "cpu", "cuda")
NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _may_have_cuda() -> bool:
    """False only where CUDA is certainly absent: no torch loaded and, on Linux, no NVIDIA driver."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return True
    return os.path.exists(NVIDIA_DRIVER)


def retrieval_device(choice: str = "auto") -> str | None:
    """The torch device retrieval runs on for ``choice`` (``None``: numpy on the CPU)."""
    if choice == "auto":
        return "cuda" if _may_have_cuda() and _cuda_available() else None
    if choice == "cpu":
        return None
    if choice.startswith("cuda"):
        if not _cuda_available():
            raise VreidError(f"retrieval device {choice!r}: no CUDA device is available (use auto or cpu)")
        return choice
    raise VreidError(f"retrieval device {choice!r}: choose from {', '.join(RETRIEVAL_DEVICES)}")
