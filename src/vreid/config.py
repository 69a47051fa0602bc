"""Configuration: every option vreid has, with its default and a one-line comment.

YAML files override these defaults and may inherit from others with ``_BASE_`` (a path, or a list
of paths, relative to the file); ``KEY VALUE`` pairs on the command line override both (the
reid-strong-baseline / fast-reid convention). An unknown key is an error naming the key, where it
came from and the closest valid keys. Only options that the code implements exist here: a key
that does nothing is a bug (the paper's code had many).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from vreid.errors import ConfigError
from vreid.fileio import atomic_write_text

BASE_KEY = "_BASE_"

_C = CN()
_C.OUTPUT_DIR = "output"  # where the resolved config.yaml, logs and results are written
_C.SEED = 0  # global random seed

_C.DATASETS = CN()
_C.DATASETS.ROOT_DIR = "datasets"  # folder holding the datasets (or one dataset's own folder)
_C.DATASETS.TRAIN = ("aic21",)  # training datasets; each keeps its own identity space
_C.DATASETS.TEST = "aic21"  # dataset whose query/gallery are evaluated
# Which test list: vehicle2cam val|test, vehicleid 800|1600|2400|..., veriwild 3000|5000|10000; "" = standard
_C.DATASETS.TEST_SPLIT = ""
_C.DATASETS.SPLIT_SEED = 0  # seed of random protocols: VehicleID gallery draw (= trial), local split
_C.DATASETS.FOLDER_PATTERN = r"^(?P<vehicle_id>[^_/]+)_c?(?P<camera_id>[^_/.]+)"  # `folder` format file names
_C.DATASETS.LOCAL_SPLIT = CN()
_C.DATASETS.LOCAL_SPLIT.NUM_IDS = 0  # >0: hold out this many training ids as a labelled query/gallery
_C.DATASETS.LOCAL_SPLIT.QUERIES_PER_ID = 2  # queries per held-out id, each from a different camera

_C.DATALOADER = CN()
_C.DATALOADER.SKIP_UNREADABLE = False  # skip (count and report) images that fail to decode, instead of stopping


def get_defaults() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


def _flat_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.extend(_flat_keys(v, full + ".") if isinstance(v, CN) else [full])
    return keys


def _unknown_key_error(key: str, source: str, valid: Sequence[str]) -> ConfigError:
    # Match the whole dotted key, and the last part alone (a right name under the wrong section).
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    by_leaf = [v for v in valid if difflib.SequenceMatcher(None, leaf, v.rsplit(".", 1)[-1]).ratio() >= 0.75]
    suggestions = list(dict.fromkeys(close + by_leaf))[:5]
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


def _check_keys(tree: dict[str, Any], defaults: CN, source: str, prefix: str = "") -> None:
    valid = _flat_keys(_C)
    for k, v in tree.items():
        full = f"{prefix}{k}"
        if k not in defaults:
            raise _unknown_key_error(full, source, valid)
        if isinstance(defaults[k], CN):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: {full} is a section; expected a mapping of its keys, got {v!r}")
            _check_keys(v, defaults[k], source, full + ".")
        elif isinstance(v, dict):
            raise ConfigError(f"{source}: {full} is a single value, not a section (got a mapping)")


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml_with_base(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict, with its ``_BASE_`` files merged underneath it (recursively)."""
    path = Path(path).resolve()
    if path in _chain:
        raise ConfigError(f"{path}: _BASE_ cycle: {' -> '.join(map(str, (*_chain, path)))}")
    if not path.is_file():
        where = f" (named by _BASE_ in {_chain[-1]})" if _chain else ""
        raise ConfigError(f"{path}: config file not found{where}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(tree).__name__}")
    bases = tree.pop(BASE_KEY, [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, load_yaml_with_base(path.parent / base, (*_chain, path)))
    return _deep_merge(merged, tree)


def merge_file(cfg: CN, path: str | Path) -> None:
    tree = load_yaml_with_base(path)
    _check_keys(tree, cfg, str(path))
    try:
        cfg.merge_from_other_cfg(CN(tree))
    except (ValueError, KeyError, AssertionError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def merge_overrides(cfg: CN, opts: Sequence[str]) -> None:
    """Apply ``KEY VALUE`` pairs from the command line (values parsed as Python literals where possible)."""
    if len(opts) % 2:
        raise ConfigError(f"command line: overrides come in KEY VALUE pairs; {opts[-1]!r} has no value")
    valid = set(_flat_keys(cfg))
    for key in opts[0::2]:
        if key not in valid:
            raise _unknown_key_error(key, "command line", sorted(valid))
    try:
        cfg.merge_from_list(list(opts))
    except (ValueError, KeyError, AssertionError) as exc:
        raise ConfigError(f"command line: {exc}") from None


def validate(cfg: CN) -> None:
    """Check values that have a fixed set of choices, naming the key."""
    from vreid.data.formats import DATASET_NAMES

    for name in cfg.DATASETS.TRAIN:
        if name not in DATASET_NAMES:
            raise ConfigError(f"DATASETS.TRAIN: unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    if cfg.DATASETS.TEST not in DATASET_NAMES:
        raise ConfigError(f"DATASETS.TEST: unknown dataset {cfg.DATASETS.TEST!r}; "
                          f"choose from {', '.join(DATASET_NAMES)}")
    if cfg.DATASETS.LOCAL_SPLIT.NUM_IDS < 0:
        raise ConfigError("DATASETS.LOCAL_SPLIT.NUM_IDS must be >= 0")
    if cfg.DATASETS.LOCAL_SPLIT.QUERIES_PER_ID < 1:
        raise ConfigError("DATASETS.LOCAL_SPLIT.QUERIES_PER_ID must be >= 1")


def load_config(config_file: str | Path | None = None, opts: Iterable[str] = ()) -> CN:
    """Defaults <- config file (with its bases) <- command-line overrides; validated and frozen."""
    cfg = get_defaults()
    if config_file:
        merge_file(cfg, config_file)
    merge_overrides(cfg, list(opts))
    validate(cfg)
    cfg.freeze()
    return cfg


def save_config(cfg: CN, out_dir: str | Path) -> Path:
    """Write the resolved config next to a run's outputs, so the run can be repeated exactly."""
    return atomic_write_text(Path(out_dir) / "config.yaml", cfg.dump())
