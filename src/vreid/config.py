"""Configuration: every option vreid has, with its default and a one-line comment.

YAML files override these defaults and may inherit from others with ``_BASE_`` (a path, or a list
of paths, relative to the file); ``KEY VALUE`` pairs on the command line override both (the
reid-strong-baseline / fast-reid convention). An unknown key is an error naming the key, where it
came from and the closest valid keys. Only options that the code implements exist here: a key
that does nothing is a bug (the paper's code had many).
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from yacs.config import CfgNode as CN

from vreid.errors import ConfigError
from vreid.fileio import atomic_write_text
from vreid.runfiles import CONFIG_FILE

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
# aic21_synthetic image folder ("" = sys_image_train), e.g. a UNIT-translated copy; relative to the synthetic set
_C.DATASETS.SYNTHETIC_IMAGES = ""
_C.DATASETS.FOLDER_PATTERN = r"^(?P<vehicle_id>[^_/]+)_c?(?P<camera_id>[^_/.]+)"  # `folder` format file names
_C.DATASETS.LOCAL_SPLIT = CN()
_C.DATASETS.LOCAL_SPLIT.NUM_IDS = 0  # >0: hold out this many training ids as a labelled query/gallery
_C.DATASETS.LOCAL_SPLIT.QUERIES_PER_ID = 2  # queries per held-out id, each from a different camera

_C.DATASETS.VAL_IDS = 0  # hold out this many training ids as the validation set that picks the best checkpoint
_C.DATASETS.LABEL = "vehicle"  # what a class is: vehicle (ReID), orientation (Ori-ReID) or camera (Cam-ReID)
_C.DATASETS.ORIENTATION_BIN = 10.0  # degrees per orientation class (paper: 36 bins of 10 degrees)

_C.DATALOADER = CN()
_C.DATALOADER.SKIP_UNREADABLE = False  # skip (count and report) images that fail to decode, instead of stopping

_C.DATALOADER.SAMPLER = "pk"  # pk (P ids x K images), pk_domain (real and synthetic ids in fixed halves), random
# pk_domain epoch: official (as many batches as pk over both domains; a domain that runs out starts again) | shortest
_C.DATALOADER.DOMAIN_EPOCH = "official"
_C.DATALOADER.NUM_INSTANCE = 8  # K: images per identity in a P x K batch (paper: 8)
_C.DATALOADER.NUM_WORKERS = 2  # loader processes per training process

_C.INPUT = CN()
_C.INPUT.SIZE_TRAIN = (320, 320)  # (height, width) of training images; the paper uses 320x320
_C.INPUT.SIZE_TEST = (320, 320)  # (height, width) of test images; the paper uses 320x320
_C.INPUT.PIXEL_MEAN = (0.485, 0.456, 0.406)  # normalisation mean (ImageNet, RGB in [0, 1])
_C.INPUT.PIXEL_STD = (0.229, 0.224, 0.225)  # normalisation std
_C.INPUT.RESIZE_MODE = "stretch"  # to the input size: stretch (aspect not kept; the paper) | pad (aspect kept)
_C.INPUT.RANDOM_RESOLUTION = CN()
_C.INPUT.RANDOM_RESOLUTION.PROB = 0.0  # probability of downscaling a training image before the resize (camera scale)
_C.INPUT.RANDOM_RESOLUTION.MIN_SCALE = 0.5  # smallest downscaling factor of a side, drawn uniformly in [MIN_SCALE, 1]
_C.INPUT.FLIP_PROB = 0.5  # horizontal flip (0 for orientation models: a flip changes the orientation)
_C.INPUT.PADDING = 10  # zero padding before a random crop back to SIZE_TRAIN (0 = no pad-and-crop)
_C.INPUT.COLOR_JITTER = CN()
_C.INPUT.COLOR_JITTER.PROB = 0.25  # probability of colour jitter
_C.INPUT.COLOR_JITTER.BRIGHTNESS = 0.2  # brightness factor range (1 +- b)
_C.INPUT.COLOR_JITTER.CONTRAST = 0.15  # contrast factor range
_C.INPUT.COLOR_JITTER.SATURATION = 0.0  # saturation factor range
_C.INPUT.COLOR_JITTER.HUE = 0.0  # hue shift range
_C.INPUT.AUGMIX_PROB = 0.25  # probability of AugMix (severity 1, width 3, depth 1, as the official code)
_C.INPUT.RANDOM_PATCH_PROB = 0.25  # probability of pasting a patch cut from an earlier image (occlusion)
_C.INPUT.BLUR_PROB = 0.25  # probability of a 5x5 Gaussian blur, sigma 1.3
_C.INPUT.BACKGROUND_SWAP = CN()
_C.INPUT.BACKGROUND_SWAP.PROB = 0.0  # paste the vehicle onto another image's background (official: 0.6); needs masks
_C.INPUT.BACKGROUND_SWAP.MASK_DIR = ""  # mask cache of `vreid prep masks` ("" = DATASETS.ROOT_DIR/masks)
_C.INPUT.BACKGROUND_SWAP.FILL = "blur"  # how the other image's vehicle hole is filled: blur (in-painting) | mean
_C.INPUT.ERASING = CN()
_C.INPUT.ERASING.PROB = 0.5  # probability of random erasing
_C.INPUT.ERASING.MAX_AREA = 0.4  # largest erased fraction of the image
_C.INPUT.ERASING.VALUE = "random"  # fill: random (per-pixel noise), zero (the mean after normalisation)

_C.MODEL = CN()
_C.MODEL.BACKBONE = "resnet50_ibn_a"  # resnet50_ibn_a | resnet101_ibn_a | resnext101_ibn_a | any torchvision name
_C.MODEL.LAST_STRIDE = 1  # stride of the last stage: 1 doubles the feature map (paper), 2 is ImageNet's
_C.MODEL.PRETRAIN = True  # start the backbone from MODEL.PRETRAIN_PATH (training refuses to start without it)
_C.MODEL.PRETRAIN_PATH = ""  # local ImageNet weights file of the backbone; never downloaded
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
_C.MODEL.IBN_STAGES = 0  # IBN-a on a torchvision block trunk (MobileNet...): half-InstanceNorm in its first N stages
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

_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "adam"  # adam (paper) | sgd (momentum 0.9, nesterov)
_C.SOLVER.BASE_LR = 3.5e-4  # learning rate after warm-up (paper: 3.5e-4 with Adam)
_C.SOLVER.HEAD_LR_FACTOR = 1.0  # learning-rate multiplier for everything but the backbone
_C.SOLVER.WEIGHT_DECAY = 5e-4  # L2 weight decay of weights
_C.SOLVER.WEIGHT_DECAY_NORM_BIAS = 0.0  # weight decay of biases and norm-layer parameters
_C.SOLVER.MOMENTUM = 0.9  # SGD momentum
_C.SOLVER.IMS_PER_BATCH = 64  # global batch size, over all processes (paper: 128 = 16 ids x 8)
_C.SOLVER.MAX_EPOCHS = 12  # training length (paper: 12)
_C.SOLVER.SCHEDULER = "cosine"  # cosine | cosine_step (the official: cosine, then x GAMMA per epoch) | step
_C.SOLVER.WARMUP_EPOCHS = 0.0  # linear warm-up length in epochs (fractions allowed; per iteration)
_C.SOLVER.WARMUP_FACTOR = 0.01  # warm-up starts at BASE_LR x this
_C.SOLVER.ETA_MIN_LR = 0.0  # cosine floor
_C.SOLVER.STEPS = (40, 70)  # step: epochs at which the lr is multiplied by GAMMA
_C.SOLVER.GAMMA = 0.1  # step: decay factor at each of STEPS
_C.SOLVER.STEP_TAIL_EPOCHS = 2  # cosine_step: the last epochs that decay by STEP_TAIL_GAMMA each
_C.SOLVER.STEP_TAIL_GAMMA = 0.3  # cosine_step: decay factor of each tail epoch (the official CosineStepLR: 0.3)
_C.SOLVER.FREEZE_BACKBONE_EPOCHS = 0  # train only the head for this many first epochs (paper: 1), BN stats frozen
_C.SOLVER.CLIP_GRAD_NORM = 0.0  # clip the global gradient norm to this (0 = off)
_C.SOLVER.EMA_DECAY = 0.0  # exponential moving average of the weights (0 = off; e.g. 0.999)
_C.SOLVER.AMP = "auto"  # precision: auto (GPU bf16/fp16; CPU bf16 if native else float32) | bf16 | fp16 | off/fp32
_C.SOLVER.CHANNELS_LAST = True  # channels-last memory format (faster convolutions on CPU and GPU)
_C.SOLVER.LOG_PERIOD = 20  # iterations between log lines
_C.SOLVER.CHECKPOINT_ITERS = 200  # also checkpoint every this many iterations inside an epoch (0 = epoch ends only)
_C.SOLVER.EVAL_PERIOD = 1  # epochs between validation runs (0 = only after the last epoch)

_C.TEST = CN()
_C.TEST.WEIGHT = ""  # trained weights for test/extract (a model_final.pth or a checkpoint)
_C.TEST.IMS_PER_BATCH = 64  # batch size of feature extraction
_C.TEST.FLIP = False  # average the features of the image and its mirror image
_C.TEST.BACKEND = "auto"  # inference backend: auto (onnxruntime for an .onnx TEST.WEIGHT) | torch | onnxruntime
_C.TEST.THREADS = 0  # CPU threads for inference (0 = the library's default)
_C.TEST.RETRIEVAL_DEVICE = "auto"  # re-ranking and evaluation: auto (CUDA when available, else numpy) | cpu | cuda
_C.TEST.METRIC = "euclidean"  # distance between L2-normalised features: euclidean | sqeuclidean | cosine
_C.TEST.RANKLIST_QUERIES = 8  # queries drawn in the rank-list picture of `vreid test` (0 = none)
_C.TEST.CAMERA_NORM = CN()
_C.TEST.CAMERA_NORM.MODE = "none"  # per-camera feature normalisation before distances: none | center | standardize
_C.TEST.CAMERA_NORM.MIN_IMAGES = 10  # a camera with fewer test images uses the statistics of all images
_C.TEST.CAMERA_NORM.BN = False  # re-estimate batch-norm statistics on each camera's test images before embedding them
_C.TEST.CAMERA_NORM.BN_WEIGHT = 1.0  # (0, 1]: share of the camera's statistics, the rest the model's own
_C.TEST.QE = CN()
_C.TEST.QE.ENABLED = False  # alpha query expansion with the top gallery neighbours
_C.TEST.QE.TOP_K = 5  # neighbours averaged into each query
_C.TEST.QE.ALPHA = 3.0  # weight = similarity^alpha (0 = plain average)
_C.TEST.DBA = False  # database-side augmentation of the gallery with the same TOP_K and ALPHA
_C.TEST.TRACK_AVERAGE = CN()
_C.TEST.TRACK_AVERAGE.ENABLED = False  # replace each gallery feature by its track's mean (paper 3.4)
_C.TEST.TRACK_AVERAGE.WINDOW = 0  # average over this many consecutive frames (0 = the whole track)
_C.TEST.RERANK = CN()
_C.TEST.RERANK.ENABLED = False  # k-reciprocal re-ranking (paper: on, k1 50, k2 15, lambda 0.5)
_C.TEST.RERANK.K1 = 20  # k-reciprocal neighbourhood size
_C.TEST.RERANK.K2 = 6  # local query expansion size
_C.TEST.RERANK.LAMBDA = 0.3  # weight of the original distance
_C.TEST.FUSION = CN()
_C.TEST.FUSION.ORIENTATION_DIR = ""  # folder with query.npz/gallery.npz of an orientation-ReID model ("" = none)
_C.TEST.FUSION.CAMERA_DIR = ""  # folder with query.npz/gallery.npz of a camera-ReID model ("" = none)
_C.TEST.FUSION.WEIGHTS = (0.1, 0.1)  # D = Dv - w_o * Do - w_c * Dc (paper: 0.1, 0.1), inside re-ranking
_C.TEST.TRACK_RERANK = False  # list whole gallery tracks together in the ranking (paper's track re-ranking)

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


_C.UNIT = CN()  # synthetic-to-real image translation (vreid prep translate); docs/method.md
_C.UNIT.IMAGE_SIZE = 256  # square training/translation size (official crop 256)
_C.UNIT.WIDTH = 64  # generator channels after the stem
_C.UNIT.N_DOWNSAMPLE = 2  # stride-2 convolutions in each encoder
_C.UNIT.N_RES = 4  # residual blocks per encoder and per generator
_C.UNIT.N_SHARED = 1  # of which shared between the domains (the shared latent space)
_C.UNIT.DIS_WIDTH = 64  # discriminator channels of the first layer
_C.UNIT.DIS_LAYERS = 4  # stride-2 convolutions per discriminator scale
_C.UNIT.DIS_SCALES = 3  # scales of the multi-scale discriminator
_C.UNIT.BATCH_SIZE = 1  # images per domain per iteration (official: 1)
_C.UNIT.ITERATIONS = 200000  # training iterations (official: 1,000,000)
_C.UNIT.TIME_LIMIT = 0.0  # seconds: stop early (checkpoint + translator written, --resume continues); 0 = none
_C.UNIT.LR = 1e-4  # Adam learning rate, halved every 100k iterations
_C.UNIT.GAN_W = 1.0  # weight of the adversarial losses
_C.UNIT.RECON_X_W = 10.0  # weight of the image reconstruction (VAE) loss
_C.UNIT.RECON_KL_W = 0.01  # weight of the KL term of the VAE
_C.UNIT.RECON_X_CYC_W = 10.0  # weight of the cycle reconstruction loss
_C.UNIT.RECON_KL_CYC_W = 0.01  # weight of the KL term of the cycle
_C.UNIT.SAMPLE_PERIOD = 1000  # iterations between sample grids (PNG) in OUTPUT_DIR/samples
_C.UNIT.CHECKPOINT_PERIOD = 10000  # iterations between checkpoints (atomic; --resume continues exactly)
_C.UNIT.AMP = "off"  # off | fp32 (same as off) | bf16 | fp16 (GPU only)


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


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")  # text a YAML problem message quotes from the file
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _keys_look_like_options(tree: dict) -> bool:
    """Every key, at every depth, an identifier: else the file is not a config, and its keys must not be echoed."""
    return all(isinstance(k, str) and _OPTION_NAME.fullmatch(k) and (not isinstance(v, dict)
               or _keys_look_like_options(v)) for k, v in tree.items())


def load_yaml_with_base(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict, with its ``_BASE_`` files merged underneath it (recursively)."""
    path = Path(path).resolve()
    if path in _chain:
        raise ConfigError(f"{path}: _BASE_ cycle: {' -> '.join(map(str, (*_chain, path)))}")
    if not path.is_file():
        where = f" (named by _BASE_ in {_chain[-1]})" if _chain else ""
        raise ConfigError(f"{path}: config file not found{where}")
    # the errors below never quote the file: _BASE_ may name any file the process can read (/etc/shadow)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = _QUOTED.sub("...", str(getattr(exc, "problem", None) or type(exc).__name__))
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys, got {type(tree).__name__}")
    if not _keys_look_like_options(tree):
        raise ConfigError(f"{path}: not a vreid config file (its keys are not option names like MODEL or SOLVER)")
    bases = tree.pop(BASE_KEY, [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, load_yaml_with_base(path.parent / base, (*_chain, path)))
    return _deep_merge(merged, tree)


def _as_text(value: Any) -> str:
    """Quote a value for a string option: yacs literal-evaluates strings, so "800" would become 800."""
    if isinstance(value, str):
        try:
            if isinstance(ast.literal_eval(value), str):
                return value  # already a quoted string literal
        except (ValueError, SyntaxError):
            pass
    return repr(str(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(tree: dict[str, Any], defaults: CN) -> dict[str, Any]:
    """Quote values of string options and widen integers given for float options (yacs rejects ``8`` for 8.0)."""
    out = {}
    for k, v in tree.items():
        if isinstance(defaults[k], CN):
            out[k] = _coerce(v, defaults[k])
        elif isinstance(defaults[k], str) and isinstance(v, (str, int, float)) and not isinstance(v, bool):
            out[k] = _as_text(v)
        elif isinstance(defaults[k], float) and _is_int(v):
            out[k] = float(v)
        else:
            out[k] = v
    return out


def merge_file(cfg: CN, path: str | Path) -> None:
    tree = load_yaml_with_base(path)
    _check_keys(tree, cfg, str(path))
    tree = _coerce(tree, cfg)
    try:
        cfg.merge_from_other_cfg(CN(tree))
    except (ValueError, KeyError, AssertionError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def merge_overrides(cfg: CN, opts: Sequence[str]) -> None:
    """Apply ``KEY VALUE`` pairs from the command line (values parsed as Python literals where possible)."""
    if len(opts) % 2:
        raise ConfigError(f"command line: overrides come in KEY VALUE pairs; {opts[-1]!r} has no value")
    valid = set(_flat_keys(cfg))
    pairs = []
    for key, value in zip(opts[0::2], opts[1::2], strict=True):
        if key not in valid:
            raise _unknown_key_error(key, "command line", sorted(valid))
        default = _get(cfg, key)
        if isinstance(default, str):
            value = _as_text(value)
        elif isinstance(default, float) and isinstance(value, str):
            try:
                if _is_int(ast.literal_eval(value)):
                    value = repr(float(ast.literal_eval(value)))
            except (ValueError, SyntaxError):
                pass
        pairs += [key, value]
    try:
        cfg.merge_from_list(pairs)
    except (ValueError, KeyError, AssertionError) as exc:
        raise ConfigError(f"command line: {exc}") from None


def _get(cfg: CN, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def check_choice(cfg: CN, key: str, allowed: Iterable[str]) -> None:
    """Raise a ConfigError naming ``key`` if its value is not one of ``allowed``.

    Each builder checks the keys of its own section with this (``vreid.models.build.check_model_config`` and its
    siblings), so reading a config never imports the packages that give the choices.
    """
    allowed = tuple(allowed)
    value = _get(cfg, key)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if v not in allowed:
            raise ConfigError(f"{key}: {v!r} is not one of {', '.join(map(str, allowed))}")


def load_config(config_file: str | Path | None = None, opts: Iterable[str] = ()) -> CN:
    """Defaults <- config file (with its bases) <- command-line overrides; keys and types checked, frozen.

    Values with a fixed set of choices are checked by the builder that reads them (``check_*_config``).
    """
    cfg = get_defaults()
    if config_file:
        merge_file(cfg, config_file)
    merge_overrides(cfg, list(opts))
    cfg.freeze()
    return cfg


def describe_options() -> list[tuple[str, str, str]]:
    """(key, default as written, comment) for every option, read from this file's definitions.

    The comments beside the defaults are the documentation; ``vreid config docs`` prints them as
    the table of docs/configuration.md, so the two cannot drift apart.
    """
    import inspect
    import re

    rows = []
    previous = ""
    for line in inspect.getsource(inspect.getmodule(describe_options)).splitlines():
        m = re.match(r"^_C\.([A-Z0-9_.]+) = (.+?)(?:\s+#\s*(.*))?$", line)
        if m and "CN()" not in m.group(2):
            comment = m.group(3) or (previous.strip()[1:].strip() if previous.strip().startswith("#") else "")
            rows.append((m.group(1), m.group(2).strip(), comment))
        previous = line
    return rows


def options_markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | `{d}` | {c.replace('|', chr(92) + '|')} |" for k, d, c in describe_options()]
    return "\n".join(lines) + "\n"


def save_config(cfg: CN, out_dir: str | Path) -> Path:
    """Write the resolved config next to a run's outputs, so the run can be repeated exactly."""
    return atomic_write_text(Path(out_dir) / CONFIG_FILE, cfg.dump())
