"""Running a pipeline: stages in order, each in its own folder, finished ones skipped, interrupted ones resumed.

Stages (docs/pipeline.md): ``translate`` (optional UNIT) -> ``masks`` (optional) -> ``train_<model>`` for
every member and the orientation/camera models -> ``extract_<model>`` (features of the test query and
gallery) -> ``post_<member>`` (re-ranking with the orientation/camera fusion, per member) -> ``ensemble``
-> ``final`` (track re-ranking, ``track2.txt`` and its check unless ``submission: false``; on a labelled split
the table of the metrics after every post-processing step).

A stage is finished when its folder holds ``DONE.json``, written atomically as its last act. The file
records a fingerprint of everything the stage's result depends on (its resolved config and the
fingerprints of the stages it reads). When the fingerprint no longer matches, the cheap stages
(extraction and after) run again; the expensive ones (translation, masks, training) refuse, naming
their folder, rather than overwrite hours of work or silently reuse stale results. An unfinished
training stage with a checkpoint continues with ``vreid train --resume``; translation and masks
continue from their own caches; the other stages are short and simply run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vreid.config import load_config
from vreid.engine.checks import check_inference_config, check_training_config
from vreid.engine.postprocess import final_distance, metrics_from_distance, ranking
from vreid.errors import ConfigError, VreidError
from vreid.features import FeatureSet, load_pair
from vreid.fileio import atomic_save_npy, atomic_write_text
from vreid.pipeline.spec import ModelSpec, PipelineSpec
from vreid.prep.unit.train import check_unit_config
from vreid.runfiles import (
    CHECKPOINT_DIR,
    DISTANCE_FILE,
    FINAL_WEIGHTS,
    LAST_CHECKPOINT,
    LOG_FILE,
    METRICS_FILE,
    TRANSLATOR_FILE,
)

log = logging.getLogger(__name__)

FINAL_WEIGHTS_FILE = f"{FINAL_WEIGHTS}.pth"

DONE = "DONE.json"
EXIT_BAD_INPUT = 2  # the exit status of `vreid train` for bad input (vreid.cli)
# The keys that decide which query and gallery images a model is tested on: copied from the first member
# into the orientation/camera extraction, so that all fused and ensembled distances describe the same images.
TEST_SET_KEYS = ("DATASETS.ROOT_DIR", "DATASETS.TEST", "DATASETS.TEST_SPLIT", "DATASETS.SPLIT_SEED",
                 "DATASETS.FOLDER_PATTERN", "DATASETS.LOCAL_SPLIT.NUM_IDS", "DATASETS.LOCAL_SPLIT.QUERIES_PER_ID")
STEP_SINGLE, STEP_RERANK, STEP_FUSION, STEP_TRACK, STEP_ENSEMBLE = (
    "single model", "+ re-ranking", "+ orientation/camera fusion", "+ track re-ranking", "+ ensemble")


class StageFailed(VreidError):
    """A stage stopped on bad input (exit status 2); the message names the stage."""


class StageCrashed(RuntimeError):
    """A stage's subprocess ended with an unexpected status (not bad input); the message names the stage."""


@dataclass(frozen=True)
class Stage:
    name: str  # also its folder under the run directory
    action: Callable[[Path], dict[str, Any] | None] = field(compare=False, repr=False)
    fingerprint: Callable[[], str] = field(compare=False, repr=False)
    precious: bool = False  # expensive: never redone automatically when its settings change


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _get(cfg, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _with(cfg, **changes: Any):
    """A frozen copy of ``cfg`` with ``{"TEST.RERANK.ENABLED": True, ...}``-style changes (dots as __)."""
    out = cfg.clone()
    out.defrost()
    for key, value in changes.items():
        *path, leaf = key.split("__")
        node = out
        for part in path:
            node = node[part]
        node[leaf] = value
    out.freeze()
    return out


def train_command(config: Path, opts: Sequence[str], resume: bool, nproc_per_node: int,
                  python: str = sys.executable) -> list[str]:
    """The ``vreid train`` command line of a training stage; under torchrun when ``nproc_per_node`` > 1."""
    if nproc_per_node > 1:
        launcher = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
                    "-m", "vreid.cli"]
    else:
        launcher = [python, "-m", "vreid.cli"]
    return [*launcher, "train", *(["--resume"] if resume else []), "--config-file", str(config), *opts]


def _run_logged(cmd: list[str], stage: str, log_file: Path) -> None:
    """Run ``cmd``, passing its stderr through; the last error line it printed goes into the failure."""
    log.info("stage %s: %s", stage, " ".join(cmd))
    last_error = ""
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, bufsize=1, env=os.environ.copy()) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            if " ERROR " in line or line.startswith("ERROR"):
                last_error = line.strip().split(": ", 1)[-1]
        status = proc.wait()
    if status == 0:
        return
    why = last_error or f"see {log_file}"
    if status == EXIT_BAD_INPUT:
        raise StageFailed(f"stage {stage}: {why}")
    raise StageCrashed(f"stage {stage}: `{' '.join(cmd[:6])} ...` ended with status {status}: {why}")


class Pipeline:
    """The stages of one pipeline file, ready to run; configs are resolved (and so checked) up front."""

    def __init__(self, spec: PipelineSpec, python: str = sys.executable):
        self.spec, self.python = spec, python
        self.run_dir = spec.run_dir
        self._fingerprints: dict[str, str] = {}
        self.train_opts = {m.name: self._train_opts(m) for m in spec.models}
        self.train_cfgs = {m.name: self._load(m, self.train_opts[m.name], f"train_{m.name}") for m in spec.models}
        self.extract_cfgs = {m.name: self._load(m, self._extract_opts(m), f"extract_{m.name}") for m in spec.models}
        first = self.extract_cfgs[spec.members[0].name]
        for member in spec.members[1:]:
            other = self.extract_cfgs[member.name]
            for key in TEST_SET_KEYS:
                if _get(other, key) != _get(first, key):
                    raise ConfigError(f"{spec.path}: members.{member.name}: {key} is {_get(other, key)!r} but "
                                      f"{_get(first, key)!r} for members.{spec.members[0].name}; an ensemble needs "
                                      "the same query and gallery")
        if spec.translate:
            try:
                check_unit_config(self._unit_cfg())
            except VreidError as exc:
                raise ConfigError(f"{spec.path}: stage translate: {exc}") from None
        self.stages = self._stages()

    # ---------------------------------------------------------------------------------------------- configs

    def folder(self, stage: str) -> Path:
        return self.run_dir / stage

    def _abs(self, stage: str, *parts: str) -> str:
        return str(self.folder(stage).joinpath(*parts).resolve())

    def _train_opts(self, model: ModelSpec) -> list[str]:
        opts = [*self.spec.opts, *model.opts, *self.spec.overrides]
        if model in self.spec.members:
            if self.spec.translate is not None:
                opts += ["DATASETS.SYNTHETIC_IMAGES", self._abs("translate", "images")]
            if self.spec.masks is not None:
                opts += ["INPUT.BACKGROUND_SWAP.MASK_DIR", self._abs("masks"),
                         "INPUT.BACKGROUND_SWAP.PROB", str(self.spec.masks.prob)]
        return [*opts, "OUTPUT_DIR", self._abs(f"train_{model.name}")]

    def _extract_opts(self, model: ModelSpec) -> list[str]:
        opts = [*self.train_opts[model.name]]
        if model not in self.spec.members:  # the same query/gallery as the members
            member = self.spec.members[0]
            ref = load_config(member.config, self.train_opts[member.name])
            for key in TEST_SET_KEYS:
                value = _get(ref, key)
                opts += [key, value if isinstance(value, str) else repr(value)]
        return [*opts, "TEST.WEIGHT", self._abs(f"train_{model.name}", FINAL_WEIGHTS_FILE),
                "OUTPUT_DIR", self._abs(f"extract_{model.name}")]

    def _load(self, model: ModelSpec, opts: list[str], stage: str):
        """The config of a train/extract stage, every section its builders read checked now: a bad value stops
        the pipeline before the long stages (UNIT, masks) run, naming the stage and the key."""
        try:
            cfg = load_config(model.config, opts)
            (check_training_config if stage.startswith("train_") else check_inference_config)(cfg)
            return cfg
        except VreidError as exc:
            raise ConfigError(f"{self.spec.path}: stage {stage} ({model.config.name}): {exc}") from None

    # ---------------------------------------------------------------------------------------------- stages

    def _stages(self) -> list[Stage]:
        spec = self.spec
        stages: list[Stage] = []

        def add(name: str, action, *parts: Any, deps: Sequence[str] = (), precious: bool = False) -> None:
            def fingerprint(parts=parts, deps=tuple(deps)) -> str:
                return _hash(name, parts, [self._fingerprints[d] for d in deps])
            stages.append(Stage(name, action, fingerprint, precious))

        prep = []
        if spec.translate is not None:
            add("translate", self._translate, spec.translate, self._unit_cfg().UNIT.dump(), precious=True)
            prep.append("translate")
        if spec.masks is not None:
            add("masks", self._masks, spec.masks, deps=prep, precious=True)
            prep.append("masks")
        for m in spec.models:
            uses_prep = prep if m in spec.members else []
            add(f"train_{m.name}", lambda d, m=m: self._train(m, d), _training_settings(self.train_cfgs[m.name]),
                deps=uses_prep, precious=True)
        for m in spec.models:
            add(f"extract_{m.name}", lambda d, m=m: self._extract(m, d), self.extract_cfgs[m.name].dump(),
                deps=[f"train_{m.name}"])
        aux = [f"extract_{m.name}" for m in (spec.orientation, spec.camera) if m is not None]
        for m in spec.members:
            add(f"post_{m.name}", lambda d, m=m: self._postprocess(m, d), deps=[f"extract_{m.name}", *aux])
        add("ensemble", self._ensemble, spec.normalize, spec.ensemble_weights,
            deps=[f"post_{m.name}" for m in spec.members])
        add("final", self._final, spec.top_k, deps=["ensemble"])
        return stages

    def status(self) -> list[tuple[str, str]]:
        """(stage, "done" | "changed" | "partial" | "todo") for every stage, without running anything."""
        out = []
        for stage in self.stages:
            fp = self._fingerprints[stage.name] = stage.fingerprint()
            marker = self.folder(stage.name) / DONE
            if marker.is_file():
                out.append((stage.name, "done" if _read_done(marker).get("fingerprint") == fp else "changed"))
            else:
                out.append((stage.name, "partial" if self.folder(stage.name).exists() else "todo"))
        return out

    def run(self) -> dict[str, Any]:
        """Run every unfinished stage in order; returns the final stage's summary."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {}
        for i, stage in enumerate(self.stages, 1):
            fp = self._fingerprints[stage.name] = stage.fingerprint()
            folder = self.folder(stage.name)
            marker = folder / DONE
            if marker.is_file():
                done = _read_done(marker)
                if done.get("fingerprint") == fp:
                    log.info("[%d/%d] stage %s: done earlier, skipped", i, len(self.stages), stage.name)
                    result = done.get("summary") or {}
                    continue
                if stage.precious:
                    raise StageFailed(f"stage {stage.name}: finished earlier with other settings (a config, an "
                                      f"override or an earlier stage changed); delete {folder} to run it again, "
                                      "or use another run_dir")
                log.info("[%d/%d] stage %s: its settings or inputs changed, running it again", i,
                         len(self.stages), stage.name)
                marker.unlink()
            log.info("[%d/%d] stage %s: %s", i, len(self.stages), stage.name,
                     "continuing" if folder.exists() else "starting")
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            try:
                summary = stage.action(folder) or {}
            except (StageFailed, StageCrashed):
                raise
            except (VreidError, ValueError) as exc:
                raise StageFailed(f"stage {stage.name}: {exc}") from None
            seconds = time.perf_counter() - start
            atomic_write_text(marker, json.dumps({"stage": stage.name, "fingerprint": fp, "seconds": round(seconds, 1),
                                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                  "summary": summary}, indent=1) + "\n")
            log.info("[%d/%d] stage %s: finished in %.0f s", i, len(self.stages), stage.name, seconds)
            result = summary
        return result

    # ---------------------------------------------------------------------------------------------- actions

    def _unit_cfg(self):
        return load_config(None, [*self.spec.opts, *(self.spec.translate.opts if self.spec.translate else ()),
                                  *self.spec.overrides])

    def _translate(self, folder: Path) -> dict[str, Any]:
        from vreid.data.formats import aic21
        from vreid.data.formats.common import find_root
        from vreid.prep.unit import train_unit, translate_folder
        t = self.spec.translate
        assert t is not None
        root = self.train_cfgs[self.spec.members[0].name].DATASETS.ROOT_DIR
        source = Path(t.source) if t.source else \
            find_root(root, (aic21.SYNTHETIC_FOLDER,), "sys_image_train") / "sys_image_train"
        target = Path(t.target) if t.target else \
            find_root(root, (aic21.REAL_FOLDER, f"{aic21.REAL_FOLDER}/{aic21.REAL_FOLDER}"), "name_train.txt") / \
            "image_train"
        unit_dir, trained = folder / "unit", folder / "unit" / "TRAINED"
        cfg = self._unit_cfg()
        if not trained.is_file():
            resume = (unit_dir / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
            result = train_unit(source, target, unit_dir, check_unit_config(cfg), resume=resume)
            atomic_write_text(trained, json.dumps({"iteration": result["iteration"]}) + "\n")
        count = translate_folder(unit_dir / TRANSLATOR_FILE, source, folder / "images",
                                 batch_size=t.batch_size, skip_existing=True)
        return {"source": str(source), "target": str(target), "translated": count}

    def _masks(self, folder: Path) -> dict[str, Any]:
        from vreid.data.loader import prepare_training_data
        from vreid.data.records import SYNTHETIC
        from vreid.prep.masks import FolderMaskSource, MaskRCNNSource, compute_masks

        m = self.spec.masks
        assert m is not None
        cfg = self.train_cfgs[self.spec.members[0].name]
        root = Path(cfg.DATASETS.ROOT_DIR).resolve()
        # the real images under the dataset root: synthetic (translated) copies keep their own backgrounds
        paths = [r.path for r in prepare_training_data(cfg).records
                 if r.domain != SYNTHETIC and Path(r.path).resolve().is_relative_to(root)]
        source = MaskRCNNSource(m.weights) if m.weights else FolderMaskSource(m.mask_folder)
        masks = compute_masks(paths, folder, source, batch_size=m.batch_size, device=m.device, root=root,
                              progress=False)
        return {"images": len(paths), "with_mask": len(masks)}

    def _train(self, model: ModelSpec, folder: Path) -> dict[str, Any]:
        resume = (folder / CHECKPOINT_DIR / LAST_CHECKPOINT).is_file()
        cmd = train_command(model.config, self.train_opts[model.name], resume, self.spec.nproc_per_node, self.python)
        _run_logged(cmd, f"train_{model.name}", folder / LOG_FILE)
        if not (folder / FINAL_WEIGHTS_FILE).is_file():
            raise StageCrashed(f"stage train_{model.name}: training ended without {folder / 'model_final.pth'}")
        return {"weights": str(folder / FINAL_WEIGHTS_FILE)}

    def _extract(self, model: ModelSpec, folder: Path) -> dict[str, Any]:
        from vreid.engine.tester import run_extract

        paths = run_extract(self.extract_cfgs[model.name])
        query, gallery = load_pair(folder)
        return {"query": len(query), "gallery": len(gallery), "files": {k: str(v) for k, v in paths.items()}}

    def _fusion_dirs(self) -> dict[str, str]:
        return {"TEST__FUSION__ORIENTATION_DIR": self._abs("extract_orientation") if self.spec.orientation else "",
                "TEST__FUSION__CAMERA_DIR": self._abs("extract_camera") if self.spec.camera else ""}

    def _postprocess(self, member: ModelSpec, folder: Path) -> dict[str, Any]:
        """The member's distance after each post-processing step (labelled split) or its final distance."""
        cfg = self.extract_cfgs[member.name]
        query, gallery = load_pair(self.folder(f"extract_{member.name}"))
        fusion = self._fusion_dirs()
        no_fusion = dict.fromkeys(fusion, "")
        has_aux = any(fusion.values())
        labelled = _labelled(query, gallery)
        steps: list[tuple[str, Any]] = []
        if labelled:
            steps.append((STEP_SINGLE, _with(cfg, TEST__RERANK__ENABLED=False, TEST__TRACK_RERANK=False, **no_fusion)))
            steps.append((STEP_RERANK, _with(cfg, TEST__RERANK__ENABLED=True, TEST__TRACK_RERANK=False, **no_fusion)))
            if has_aux:
                steps.append((STEP_FUSION, _with(cfg, TEST__RERANK__ENABLED=True, TEST__TRACK_RERANK=False,
                                                 **fusion)))
        rerank = cfg.TEST.RERANK.ENABLED
        final_step = STEP_FUSION if rerank and has_aux else STEP_RERANK if rerank else STEP_SINGLE
        rows, dists = [], {}
        for name, step_cfg in steps:
            dists[name] = final_distance(step_cfg, query, gallery)
            atomic_save_npy(folder / f"distance_{_slug(name)}.npy", dists[name])
            rows.append(_row(member.name, name, metrics_from_distance(step_cfg, dists[name], query, gallery),
                             track=False))
        # the distance the ensemble uses: the member's config's post-processing, with the fusion when possible
        final_cfg = _with(cfg, **(fusion if rerank else no_fusion))
        dist = dists[final_step] if final_step in dists else final_distance(final_cfg, query, gallery)
        if labelled and _has_tracks(gallery):
            track_cfg = _with(final_cfg, TEST__TRACK_RERANK=True)
            rows.append(_row(member.name, STEP_TRACK, metrics_from_distance(track_cfg, dist, query, gallery),
                             track=True))
        atomic_save_npy(folder / DISTANCE_FILE, dist)
        atomic_write_text(folder / METRICS_FILE, json.dumps(rows, indent=1) + "\n")
        return {"labelled": labelled, "rows": rows}

    def _ensemble(self, folder: Path) -> dict[str, Any]:
        from vreid.retrieval.ensemble import ensemble_distances

        mats = [np.load(self.folder(f"post_{m.name}") / DISTANCE_FILE, allow_pickle=False)
                for m in self.spec.members]
        dist = ensemble_distances(mats, weights=self.spec.ensemble_weights, normalize=self.spec.normalize)
        atomic_save_npy(folder / DISTANCE_FILE, dist.astype(np.float32))
        return {"members": [m.name for m in self.spec.members], "normalize": self.spec.normalize}

    def _final(self, folder: Path) -> dict[str, Any]:
        member = self.spec.members[0]
        cfg = self.extract_cfgs[member.name]
        query, gallery = load_pair(self.folder(f"extract_{member.name}"))
        dist = np.load(self.folder("ensemble") / DISTANCE_FILE, allow_pickle=False)
        summary: dict[str, Any] = {"queries": len(query)}
        if self.spec.top_k is not None:
            summary.update(self._submission(folder, cfg, dist, query, gallery, self.spec.top_k))
        if _labelled(query, gallery):
            rows = [row for m in self.spec.members
                    for row in json.loads((self.folder(f"post_{m.name}") / METRICS_FILE).read_text())]
            # whole tracks listed together where the gallery has tracks (the AIC list); a gallery without tracks
            # keeps the members' own ranking, and its full-ranking mAP is meaningful
            tracks = _has_tracks(gallery)
            final_cfg = _with(cfg, TEST__TRACK_RERANK=True) if tracks else cfg
            label = "ensemble" if len(self.spec.members) > 1 else member.name
            rows.append(_row(label, STEP_ENSEMBLE, metrics_from_distance(final_cfg, dist, query, gallery),
                             track=tracks))
            atomic_write_text(folder / METRICS_FILE, json.dumps(rows, indent=1) + "\n")
            table = metrics_table(rows)
            atomic_write_text(folder / "metrics.md", table)
            log.info("metrics after each post-processing step (%s):\n%s", folder / "metrics.md", table)
            summary["rows"] = rows
        return summary

    @staticmethod
    def _submission(folder: Path, cfg, dist: np.ndarray, query: FeatureSet, gallery: FeatureSet,
                    top_k: int) -> dict[str, Any]:
        """``track2.txt`` of the ensemble's ranking (tracks together if the config says so), checked."""
        from vreid.retrieval.submission import check_track2, gallery_image_ids, write_track2

        top_k = min(top_k, len(gallery))
        names = [Path(p).name for p in gallery.paths]
        ranked = ranking(cfg, dist, gallery, top_k)
        track2 = write_track2(ranked, names, folder / "track2.txt", top_k)
        # entries are the numbers in the gallery file names: 1..31,238 on the AIC21 test set
        problems = check_track2(track2, len(query), int(gallery_image_ids(names).max()), top_k)
        if problems:
            raise StageFailed(f"stage final: {track2} fails its check: {problems[0]} ({len(problems)} problems)")
        log.info("%s: %d queries x %d gallery ids, checked", track2, len(query), top_k)
        return {"track2": str(track2), "top_k": top_k}


# ------------------------------------------------------------------------------------------------------ helpers


def _training_settings(cfg) -> str:
    """What a trained model depends on: the config without its TEST section (test settings need no retraining)."""
    settings = cfg.clone()
    settings.defrost()
    settings.pop("TEST")
    return settings.dump()


def _read_done(marker: Path) -> dict[str, Any]:
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}


def _labelled(query: FeatureSet, gallery: FeatureSet) -> bool:
    return bool(all(query.vehicle_ids) and all(gallery.vehicle_ids))


def _has_tracks(gallery: FeatureSet) -> bool:
    """Whether any gallery image belongs to a track (AIC21, the city); VeRi-style lists and vehicle-2cam have none."""
    return bool(any(gallery.track_ids))


def _slug(step: str) -> str:
    return step.strip("+ ").split("/")[0].split()[0]


def _row(model: str, step: str, metrics: dict[str, Any], track: bool) -> dict[str, Any]:
    """One table row; full-ranking figures are left out where track re-ranking reorders the list only."""
    row = {"model": model, "step": step, "aic_mAP@100": metrics["aic_mAP@100"], "aic_rank1": metrics["aic_rank1"]}
    if not track:
        row.update(mAP=metrics["mAP"], rank1=metrics["rank1"], mINP=metrics["mINP"])
    return row


def metrics_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the rows: mAP/rank-1 over the full ranking and of the AI City top-100 list."""
    def pct(row: dict[str, Any], key: str) -> str:
        return f"{100 * row[key]:.1f}" if key in row else "-"

    lines = ["| model | step | mAP | rank-1 | mAP@100 (AIC list) | rank-1 (AIC list) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['step']} | {pct(r, 'mAP')} | {pct(r, 'rank1')} | {pct(r, 'aic_mAP@100')} | "
              f"{pct(r, 'aic_rank1')} |" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = ["DONE", "Pipeline", "StageCrashed", "StageFailed", "metrics_table", "train_command"]
