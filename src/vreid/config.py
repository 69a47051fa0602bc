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

_C.DATASETS.LABEL = "vehicle"  # what a class is: vehicle (ReID), orientation (Ori-ReID) or camera (Cam-ReID)
_C.DATASETS.ORIENTATION_BIN = 10.0  # degrees per orientation class (paper: 36 bins of 10 degrees)

_C.DATALOADER = CN()
_C.DATALOADER.SKIP_UNREADABLE = False  # skip (count and report) images that fail to decode, instead of stopping

_C.INPUT = CN()
_C.INPUT.SIZE_TEST = (320, 320)  # (height, width) of test images; the paper uses 320x320

_C.MODEL = CN()
_C.MODEL.BACKBONE = "resnet50_ibn_a"  # resnet50_ibn_a | resnet101_ibn_a | resnext101_ibn_a | any torchvision name
_C.MODEL.LAST_STRIDE = 1  # stride of the last stage: 1 doubles the feature map (paper), 2 is ImageNet's
_C.MODEL.PRETRAIN_PATH = ""  # local ImageNet weights file for the backbone ("" = random init); never downloaded
_C.MODEL.POOLING = "gem"  # gem | avg | max
_C.MODEL.GEM = CN()
_C.MODEL.GEM.P = 3.0  # GeM exponent (paper: 3, fixed)
_C.MODEL.GEM.LEARNABLE = False  # learn p instead of fixing it
_C.MODEL.MIXSTYLE = CN()
_C.MODEL.MIXSTYLE.ENABLED = False  # MixStyle in training (the paper's main model: on)
_C.MODEL.MIXSTYLE.P = 0.5  # probability of mixing, per batch and position
_C.MODEL.MIXSTYLE.ALPHA = 0.1  # Beta(alpha, alpha) for the mixing weight
_C.MODEL.MIXSTYLE.AFTER = (1, 2)  # insert after these backbone stages (1-based)
_C.MODEL.MIXSTYLE.MIX = "random"  # partner: random (shuffle) or domain (a sample of the other domain)
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = "none"  # none | multihead (GroupFace-style multi-head with attention)
_C.MODEL.HEAD.GROUPS = 32  # number of group heads G
_C.MODEL.HEAD.DIM = 0  # output width of the heads (0 = the backbone's channels)
_C.MODEL.HEAD.GDN_HIDDEN = 256  # hidden width of the group decision network
_C.MODEL.HEAD.RANK = 0  # 0 = full group FCs (paper, ~134M params); r > 0 = rank-r group FCs (light)
_C.MODEL.NECK_FEAT = "after"  # test-time embedding: after or before the BNNeck
_C.MODEL.CLASSIFIER = CN()
_C.MODEL.CLASSIFIER.NAME = "linear"  # linear (paper) | arcface | cosface | circle (official config)
_C.MODEL.CLASSIFIER.SCALE = 64.0  # logit scale s of the margin classifiers
_C.MODEL.CLASSIFIER.MARGIN = 0.35  # margin m of the margin classifiers

_C.LOSSES = CN()
_C.LOSSES.NAMES = ("ce", "supcon")  # any of ce, triplet, supcon, circle (paper: ce + supcon)
_C.LOSSES.METRIC_FEAT = "before"  # metric losses on the feature before (BoT) or after (official) the BNNeck
_C.LOSSES.CE = CN()
_C.LOSSES.CE.EPSILON = 0.1  # label smoothing (paper Eq. 4-5); 0 = plain cross-entropy
_C.LOSSES.CE.WEIGHT = 1.0  # fixed weight (the starting ID weight under MALW)
_C.LOSSES.TRIPLET = CN()
_C.LOSSES.TRIPLET.MARGIN = 0.3  # batch-hard margin; 0 = soft margin
_C.LOSSES.TRIPLET.NORMALIZE = False  # L2-normalise features first
_C.LOSSES.TRIPLET.WEIGHT = 1.0  # fixed weight
_C.LOSSES.SUPCON = CN()
_C.LOSSES.SUPCON.TEMPERATURE = 0.07  # tau (paper)
_C.LOSSES.SUPCON.NORMALIZE = True  # L2-normalise (standard SupCon); False = the official un-normalised version
_C.LOSSES.SUPCON.WEIGHT = 1.0  # fixed weight
_C.LOSSES.CIRCLE = CN()
_C.LOSSES.CIRCLE.MARGIN = 0.25  # relaxation margin m
_C.LOSSES.CIRCLE.GAMMA = 128.0  # scale gamma
_C.LOSSES.CIRCLE.WEIGHT = 1.0  # fixed weight
_C.LOSSES.GROUP_WEIGHT = 0.0  # GroupFace group loss on the multi-head's self-distributed labels (0 = off)
_C.LOSSES.MALW = CN()
_C.LOSSES.MALW.ENABLED = True  # adapt the ID weight against the metric losses (paper Algorithm 1)
_C.LOSSES.MALW.INTERVAL = 500  # K: iterations between updates
_C.LOSSES.MALW.MOMENTUM = 0.9  # alpha
_C.LOSSES.MALW.RECORD = "raw"  # record raw (official code) or weighted (paper text) losses
_C.LOSSES.MALW.UPDATE = "convex"  # convex: a*w + (1-a)*r (ours); paper: a*w + r (as printed)


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


def _get(cfg: CN, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def validate(cfg: CN) -> None:
    """Check values that have a fixed set of choices, naming the key."""
    from vreid.data.formats import DATASET_NAMES
    from vreid.data.records import LABEL_KINDS
    from vreid.losses.compose import FEATURE_KEYS, LOSS_NAMES
    from vreid.losses.malw import RECORD_MODES, UPDATE_RULES
    from vreid.models.build import HEADS, NECK_FEATS
    from vreid.models.classifiers import CLASSIFIERS
    from vreid.models.layers import MIX_DOMAIN, MIX_RANDOM, POOLINGS

    for name in cfg.DATASETS.TRAIN:
        if name not in DATASET_NAMES:
            raise ConfigError(f"DATASETS.TRAIN: unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    if cfg.DATASETS.TEST not in DATASET_NAMES:
        raise ConfigError(f"DATASETS.TEST: unknown dataset {cfg.DATASETS.TEST!r}; "
                          f"choose from {', '.join(DATASET_NAMES)}")
    choices = {
        "DATASETS.LABEL": LABEL_KINDS,
        "MODEL.POOLING": tuple(POOLINGS),
        "MODEL.MIXSTYLE.MIX": (MIX_RANDOM, MIX_DOMAIN),
        "MODEL.HEAD.NAME": HEADS,
        "MODEL.NECK_FEAT": NECK_FEATS,
        "MODEL.CLASSIFIER.NAME": tuple(CLASSIFIERS),
        "LOSSES.METRIC_FEAT": tuple(FEATURE_KEYS),
        "LOSSES.MALW.RECORD": RECORD_MODES,
        "LOSSES.MALW.UPDATE": UPDATE_RULES,
    }
    for key, allowed in choices.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")
    for name in cfg.LOSSES.NAMES:
        if name not in LOSS_NAMES:
            raise ConfigError(f"LOSSES.NAMES: unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
    if cfg.MODEL.LAST_STRIDE not in (1, 2):
        raise ConfigError(f"MODEL.LAST_STRIDE must be 1 or 2, got {cfg.MODEL.LAST_STRIDE}")
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
