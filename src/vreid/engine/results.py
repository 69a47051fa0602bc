"""The files of an evaluation, and the commands that work on saved features: re-rank, submit.

``vreid test`` embeds and then calls :func:`write_test_results`; ``vreid rerank`` and ``vreid submit`` start
from a folder of saved FeatureSets. Nothing here needs the model, so nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from vreid.engine.postprocess import final_distance, metrics_from_distance, ranking, with_rerank, write_per_query
from vreid.errors import VreidError
from vreid.features import FeatureSet, load_distance, load_pair
from vreid.fileio import atomic_save_npy, atomic_write_text
from vreid.retrieval.submission import AIC_TOP_K, check_track2, write_track2
from vreid.runfiles import DISTANCE_FILE, METRICS_FILE, PER_QUERY_FILE, RANKLIST_FILE

log = logging.getLogger(__name__)


def write_test_results(cfg, query: FeatureSet, gallery: FeatureSet, out: Path) -> dict[str, Any]:
    """Post-process, evaluate and write the distance, metrics, per-query table and rank lists of a test."""
    from vreid.viz import draw_ranklists, rank_rows  # PIL and fonts: only for the picture

    dist = final_distance(cfg, query, gallery)
    atomic_save_npy(out / DISTANCE_FILE, dist)
    metrics = metrics_from_distance(cfg, dist, query, gallery)
    per_query = metrics.pop("_per_query")
    metrics.update(dataset=cfg.DATASETS.TEST, test_split=cfg.DATASETS.TEST_SPLIT, weights=str(cfg.TEST.WEIGHT),
                   rerank=bool(cfg.TEST.RERANK.ENABLED))
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    write_per_query(out / PER_QUERY_FILE, query, per_query)
    log.info("%s (%s): mAP %.4f rank-1 %.4f rank-5 %.4f mINP %.4f, AIC mAP@100 %.4f over %d queries",
             cfg.DATASETS.TEST, cfg.DATASETS.TEST_SPLIT or "standard", metrics["mAP"], metrics["rank1"],
             metrics["rank5"], metrics["mINP"], metrics["aic_mAP@100"], metrics["num_query"])
    if cfg.TEST.RANKLIST_QUERIES:
        picture = draw_ranklists(rank_rows(query, gallery, dist, cfg.TEST.RANKLIST_QUERIES), out / RANKLIST_FILE)
        log.info("rank lists: %s", picture)
    return metrics


def rerank_saved(cfg, features_dir: str | Path, out_dir: str | Path) -> Path:
    """``vreid rerank``: k-reciprocal re-ranking (with what else ``cfg.TEST`` asks) of saved query/gallery features.

    Labelled features are evaluated as ``vreid test`` does; unlabelled ones (the AIC21 test set) give the distance
    alone, for an ensemble or a submission. Returns the distance file.
    """
    cfg = with_rerank(cfg)
    query, gallery = load_pair(features_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if all(query.vehicle_ids) and all(gallery.vehicle_ids):
        write_test_results(cfg, query, gallery, out)
    else:
        atomic_save_npy(out / DISTANCE_FILE, final_distance(cfg, query, gallery))
    return out / DISTANCE_FILE


def check_submission(path: str | Path, aic_root: str | Path, top_k: int = AIC_TOP_K, shown: int = 50) -> int:
    """``vreid submit --check``: validate a ``track2.txt`` against the AIC21 query/gallery lists under ``aic_root``;
    logs the first ``shown`` problems and raises if there is any; returns the number of queries."""
    from vreid.data.formats import aic21
    from vreid.data.formats.common import find_root, read_name_list

    base = find_root(aic_root, (aic21.REAL_FOLDER,), "name_test.txt")
    num_query = len(read_name_list(base / "name_query.txt"))
    num_gallery = len(read_name_list(base / "name_test.txt"))
    problems = check_track2(path, num_query, num_gallery, top_k)
    for problem in problems[:shown]:
        log.error("%s", problem)
    if problems:
        raise VreidError(f"{path}: {len(problems)} problems (first {min(shown, len(problems))} listed above)")
    log.info("%s is a valid submission: %d queries x %d gallery ids", path, num_query, top_k)
    return num_query


def write_submission(cfg, distance_file: str | Path, features_dir: str | Path, out: str | Path,
                     top_k: int = AIC_TOP_K) -> Path:
    """``vreid submit``: a saved distance and the features it describes -> an AI City ``track2.txt``."""
    _, gallery = load_pair(features_dir)
    dist = load_distance(distance_file)
    if dist.ndim != 2 or dist.shape[1] != len(gallery):
        raise VreidError(f"{distance_file}: shape {dist.shape}, but {features_dir} has {len(gallery)} gallery "
                         "images (expected queries x gallery)")
    if not np.isfinite(dist).all():
        raise VreidError(f"{distance_file}: the distances contain NaN or infinity")
    ranked = ranking(cfg, dist, gallery, top_k)
    path = write_track2(ranked, [Path(p).name for p in gallery.paths], out, top_k)
    log.info("submission: %s (%d queries)", path, len(ranked))
    return path
