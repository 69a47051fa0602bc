"""Errors vreid raises for bad input.

Every error names where the bad input is (a file and line, a config key, an option) and what was
expected. The command line catches :class:`VreidError`, logs its message and exits non-zero.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


class VreidError(Exception):
    """Base class: bad input a user can fix."""


class ConfigError(VreidError):
    """A configuration file or override is wrong."""


class DatasetError(VreidError):
    """A dataset on disk is missing, malformed or inconsistent."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = None if path is None else Path(path)
        self.line = line


class UnlabelledSplitError(DatasetError):
    """Evaluation was asked of a split whose identities are unknown (e.g. the AIC21 test set)."""


def require_package(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra of vreid installs it (a missing package is bad input too)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VreidError(f"this needs the Python package {module!r}: pip install 'vreid[{extra}]'") from None
