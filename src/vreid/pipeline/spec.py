"""The pipeline file: which models, which preparation, which post-processing, where the run goes.

A pipeline file is YAML (docs/pipeline.md shows a full one)::

    run_dir: output/aic21          # every stage writes into its own folder under it (relative to the cwd)
    opts: [DATASETS.ROOT_DIR, datasets]   # config overrides for every model
    nproc_per_node: 1              # training processes per model; > 1 launches torchrun
    translate: {opts: [UNIT.ITERATIONS, 200000]}            # optional: UNIT synthetic -> real
    masks: {weights: maskrcnn.pth, prob: 0.6}               # optional: background swap of the members
    members:                       # the ReID models whose distances are ensembled
      resnext101_ibn_a: {config: resnext101_ibn_a.yml, opts: [MODEL.PRETRAIN_PATH, w/x101.pth]}
    orientation: {config: orientation.yml}                  # optional: fused into every member's distance
    camera: {config: camera.yml}                            # optional
    ensemble: {normalize: none}
    submission: {top_k: 100}       # the AI City track2.txt; `submission: false` for any other dataset

Config paths are relative to the pipeline file (as ``_BASE_`` is to a config); every other path is
relative to the working directory (as ``OUTPUT_DIR`` and ``DATASETS.ROOT_DIR`` are).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vreid.errors import ConfigError
from vreid.retrieval.ensemble import NORMALIZATIONS
from vreid.retrieval.submission import AIC_TOP_K

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a model name is also a folder name
AUX_MODELS = ("orientation", "camera")
TOP_LEVEL = ("run_dir", "opts", "nproc_per_node", "translate", "masks", "members", *AUX_MODELS, "ensemble",
             "submission")
MODEL_KEYS = ("config", "opts")
TRANSLATE_KEYS = ("opts", "source", "target", "batch_size")
MASK_KEYS = ("weights", "mask_folder", "prob", "device", "batch_size")
OFFICIAL_SWAP_PROB = 0.6  # the official code swaps backgrounds with probability 0.6


@dataclass(frozen=True)
class ModelSpec:
    """One model to train: a config file and overrides on top of the pipeline's."""

    name: str
    config: Path
    opts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TranslateSpec:
    """UNIT translation of the synthetic training images (``source`` -> the look of ``target``)."""

    opts: tuple[str, ...] = ()
    source: str = ""  # "" = the aic21_synthetic images of DATASETS.ROOT_DIR
    target: str = ""  # "" = the aic21 real training images of DATASETS.ROOT_DIR
    batch_size: int = 16


@dataclass(frozen=True)
class MaskSpec:
    """Foreground masks of the real training images for the members' background swap."""

    weights: str = ""
    mask_folder: str = ""
    prob: float = OFFICIAL_SWAP_PROB
    device: str = "cpu"
    batch_size: int = 4


@dataclass(frozen=True)
class PipelineSpec:
    path: Path
    run_dir: Path
    opts: tuple[str, ...]
    nproc_per_node: int
    members: tuple[ModelSpec, ...]
    orientation: ModelSpec | None = None
    camera: ModelSpec | None = None
    translate: TranslateSpec | None = None
    masks: MaskSpec | None = None
    normalize: str = "none"
    ensemble_weights: tuple[float, ...] | None = None
    top_k: int | None = AIC_TOP_K  # None: no track2.txt (``submission: false``)
    overrides: tuple[str, ...] = ()  # KEY VALUE pairs from the command line: applied last, to every model

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """Every model to train: the members, then the orientation and camera models."""
        return (*self.members, *(m for m in (self.orientation, self.camera) if m is not None))


def _check_keys(where: str, tree: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in tree:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}; expected one of {', '.join(allowed)}")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _opts(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) % 2:
        raise ConfigError(f"{where}: opts must be a list of KEY, VALUE pairs (an even number of items), got "
                          f"{value!r}")
    return tuple(str(v) for v in value)


def _model(path: Path, name: str, tree: Any, section: str = "") -> ModelSpec:
    where = f"{path}: {section}{name}"
    tree = _mapping(where, tree)
    _check_keys(where, tree, MODEL_KEYS)
    if not NAME.match(name):
        raise ConfigError(f"{where}: a model name must be letters, digits, '_', '.' or '-' (it names a folder)")
    if not tree.get("config"):
        raise ConfigError(f"{where}: 'config' (a vreid config file) is required")
    config = (path.parent / str(tree["config"])).resolve()
    if not config.is_file():
        raise ConfigError(f"{where}: config file {config} not found")
    return ModelSpec(name, config, _opts(f"{where}.opts", tree.get("opts")))


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                  run_dir: str | Path | None = None) -> PipelineSpec:
    """Read and check a pipeline file; every problem is a ConfigError naming the file and the key.

    ``overrides`` (``KEY VALUE`` pairs, e.g. the data folder) go after every model's own opts; ``run_dir``
    replaces the file's: one pipeline file serves several datasets or runs without being edited.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    tree = _mapping(str(path), tree)
    _check_keys(str(path), tree, TOP_LEVEL)
    if run_dir is not None:
        tree["run_dir"] = str(run_dir)
    if not tree.get("run_dir"):
        raise ConfigError(f"{path}: run_dir (the folder of the run) is required")
    members_tree = _mapping(f"{path}: members", tree.get("members"))
    if not members_tree:
        raise ConfigError(f"{path}: members must name at least one ReID model")
    members = tuple(_model(path, str(n), t, "members.") for n, t in members_tree.items())
    aux = {k: _model(path, k, tree[k]) if tree.get(k) else None for k in AUX_MODELS}
    names = [m.name for m in members]
    for k in AUX_MODELS:
        if k in names:
            raise ConfigError(f"{path}: members.{k}: the name {k!r} is taken by the {k} model")
    # the aux models are named by their role, whatever their section says
    aux = {k: ModelSpec(k, m.config, m.opts) if m is not None else None for k, m in aux.items()}

    nproc = tree.get("nproc_per_node", 1)
    if not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1:
        raise ConfigError(f"{path}: nproc_per_node must be an integer >= 1, got {nproc!r}")

    translate = None
    if tree.get("translate") is not None:
        t = _mapping(f"{path}: translate", tree["translate"])
        _check_keys(f"{path}: translate", t, TRANSLATE_KEYS)
        translate = TranslateSpec(_opts(f"{path}: translate.opts", t.get("opts")), str(t.get("source") or ""),
                                  str(t.get("target") or ""), int(t.get("batch_size", 16)))
    masks = None
    if tree.get("masks") is not None:
        m = _mapping(f"{path}: masks", tree["masks"])
        _check_keys(f"{path}: masks", m, MASK_KEYS)
        if bool(m.get("weights")) == bool(m.get("mask_folder")):
            raise ConfigError(f"{path}: masks needs exactly one of weights (Mask R-CNN file) or mask_folder")
        prob = float(m.get("prob", OFFICIAL_SWAP_PROB))
        if not 0.0 < prob <= 1.0:
            raise ConfigError(f"{path}: masks.prob must be in (0, 1], got {prob}")
        masks = MaskSpec(str(m.get("weights") or ""), str(m.get("mask_folder") or ""), prob,
                         str(m.get("device", "cpu")), int(m.get("batch_size", 4)))

    ensemble = _mapping(f"{path}: ensemble", tree.get("ensemble"))
    _check_keys(f"{path}: ensemble", ensemble, ("normalize", "weights"))
    normalize = str(ensemble.get("normalize", "none"))
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"{path}: ensemble.normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")
    weights = ensemble.get("weights")
    if weights is not None:
        if not isinstance(weights, list) or len(weights) != len(members):
            raise ConfigError(f"{path}: ensemble.weights must list one weight per member ({len(members)})")
        weights = tuple(float(w) for w in weights)
    top_k: int | None = None
    if tree.get("submission") is not False:  # absent: the AI City submission, as before
        submission = _mapping(f"{path}: submission", tree.get("submission"))
        _check_keys(f"{path}: submission", submission, ("top_k",))
        top_k = submission.get("top_k", AIC_TOP_K)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ConfigError(f"{path}: submission.top_k must be an integer >= 1, got {top_k!r}")

    return PipelineSpec(path=path.resolve(), run_dir=Path(str(tree["run_dir"])),
                        opts=_opts(f"{path}: opts", tree.get("opts")), nproc_per_node=nproc, members=members,
                        orientation=aux["orientation"], camera=aux["camera"], translate=translate, masks=masks,
                        normalize=normalize, ensemble_weights=weights, top_k=top_k,
                        overrides=_opts("command line", list(overrides)))
