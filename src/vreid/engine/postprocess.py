"""From saved FeatureSets to a final distance, ranking and metrics, as ``cfg.TEST`` describes (docs/method.md).

Order: per-camera feature normalisation -> gallery track averaging -> query expansion / database augmentation ->
distance (k-reciprocal re-ranking, with the orientation/camera fusion D = Dv - w_o*Do - w_c*Dc inside it, or the plain
squared Euclidean distance of the paper's code) -> ranking (optionally whole tracks together).
This is the only module that maps the post-processing keys of ``cfg.TEST`` (METRIC, CAMERA_NORM, RERANK, FUSION, QE,
DBA, TRACK_*, RETRIEVAL_DEVICE) onto the pure functions of :mod:`vreid.retrieval`; the extraction keys (WEIGHT, BACKEND,
FLIP, THREADS, IMS_PER_BATCH) are :mod:`vreid.engine.inference`'s.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from vreid.config import check_choice
from vreid.errors import ConfigError, VreidError
from vreid.features import FeatureSet, load_pair
from vreid.fileio import atomic_write_text
from vreid.retrieval import evaluate, evaluate_aic, k_reciprocal_rerank, pairwise_distance
from vreid.retrieval.camera_norm import CAMERA_NORMS, camera_normalize_pair
from vreid.retrieval.device import RETRIEVAL_DEVICES, retrieval_device
from vreid.retrieval.distance import METRICS, smallest_k
from vreid.retrieval.query_expansion import average_query_expansion, database_augmentation
from vreid.retrieval.submission import AIC_TOP_K
from vreid.retrieval.tracks import average_track_features, track_rerank

log = logging.getLogger(__name__)


def _fusion_terms(cfg, query: FeatureSet, gallery: FeatureSet) -> list[tuple[np.ndarray, float]]:
    terms = []
    for folder, weight, what in ((cfg.TEST.FUSION.ORIENTATION_DIR, cfg.TEST.FUSION.WEIGHTS[0], "orientation"),
                                 (cfg.TEST.FUSION.CAMERA_DIR, cfg.TEST.FUSION.WEIGHTS[1], "camera")):
        if not folder:
            continue
        q, g = load_pair(folder)
        # The fused distances must describe the same images in the same order (the official code never checks).
        if not (np.array_equal(q.paths, query.paths) and np.array_equal(g.paths, gallery.paths)):
            raise VreidError(f"TEST.FUSION: the {what} features in {folder} are not of the same query/gallery "
                             "images in the same order as the vehicle features (extract them from the same data)")
        terms.append((np.concatenate([q.features, g.features]), -float(weight)))
    return terms


def check_test_config(cfg) -> None:
    """The post-processing keys of TEST with a fixed set of choices, each error naming its key."""
    check_choice(cfg, "TEST.METRIC", METRICS)  # retrieval.distance's: euclidean, sqeuclidean, cosine
    check_choice(cfg, "TEST.RETRIEVAL_DEVICE", RETRIEVAL_DEVICES)
    check_choice(cfg, "TEST.CAMERA_NORM.MODE", CAMERA_NORMS)
    if cfg.TEST.CAMERA_NORM.MIN_IMAGES < 1:
        raise ConfigError(f"TEST.CAMERA_NORM.MIN_IMAGES must be >= 1, got {cfg.TEST.CAMERA_NORM.MIN_IMAGES}")
    if not 0.0 < cfg.TEST.CAMERA_NORM.BN_WEIGHT <= 1.0:
        raise ConfigError(f"TEST.CAMERA_NORM.BN_WEIGHT must be in (0, 1], got {cfg.TEST.CAMERA_NORM.BN_WEIGHT}")


def with_rerank(cfg):
    """``cfg`` with k-reciprocal re-ranking switched on (``vreid rerank``), the rest unchanged."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.RERANK.ENABLED = True
    cfg.freeze()
    return cfg


def final_distance(cfg, query: FeatureSet, gallery: FeatureSet) -> np.ndarray:
    """The (query, gallery) distance after the post-processing configured in ``cfg.TEST``."""
    check_test_config(cfg)
    t = cfg.TEST
    q_feat, g_feat = query.features, gallery.features
    if t.CAMERA_NORM.MODE != "none":
        q_feat, g_feat = camera_normalize_pair(q_feat, g_feat, query.camera_ids, gallery.camera_ids,
                                               t.CAMERA_NORM.MODE, t.CAMERA_NORM.MIN_IMAGES)
    if t.TRACK_AVERAGE.ENABLED:
        g_feat = average_track_features(g_feat, gallery.track_ids, window=t.TRACK_AVERAGE.WINDOW or None)
    if t.DBA:
        g_feat = database_augmentation(g_feat, t.QE.TOP_K, t.QE.ALPHA)
    if t.QE.ENABLED:
        q_feat, g_feat = average_query_expansion(q_feat, g_feat, t.QE.TOP_K, t.QE.ALPHA)
    fusion = _fusion_terms(cfg, query, gallery)
    if fusion and not t.RERANK.ENABLED:
        raise VreidError("TEST.FUSION needs TEST.RERANK.ENABLED True: the fused distance lives inside re-ranking "
                         "(as in the paper's pipeline)")
    if t.RERANK.ENABLED:
        log.info("k-reciprocal re-ranking (k1 %d, k2 %d, lambda %.2f%s)", t.RERANK.K1, t.RERANK.K2, t.RERANK.LAMBDA,
                 ", fused with " + ", ".join(f"{w:+.2f}" for _, w in fusion) if fusion else "")
        return k_reciprocal_rerank(q_feat, g_feat, t.RERANK.K1, t.RERANK.K2, t.RERANK.LAMBDA,
                                   extra_distance=fusion or None, device=retrieval_device(t.RETRIEVAL_DEVICE))
    return pairwise_distance(q_feat, g_feat, metric=t.METRIC)


def ranking(cfg, dist: np.ndarray, gallery: FeatureSet, top_k: int = AIC_TOP_K) -> np.ndarray:
    """Top-k gallery indices per query; with ``TEST.TRACK_RERANK`` whole tracks stay together."""
    if cfg.TEST.TRACK_RERANK:
        return track_rerank(dist, gallery.track_ids, top_k=top_k)
    return smallest_k(dist, top_k)


def ranking_distance(ranked: np.ndarray, num_gallery: int) -> np.ndarray:
    """A distance matrix that orders each query's gallery as ``ranked`` (rank r -> r; unranked -> after all)."""
    dist = np.full((len(ranked), num_gallery), float(num_gallery), dtype=np.float32)
    np.put_along_axis(dist, ranked, np.arange(ranked.shape[1], dtype=np.float32)[None, :], axis=1)
    return dist


def protocol_cameras(query: FeatureSet, gallery: FeatureSet) -> tuple[Any, Any]:
    """The camera arrays for the same-camera junk rule. An unknown camera ("") never makes an image junk, image by
    image (:data:`vreid.retrieval.metrics.UNKNOWN_CAMERAS`), as in the rank-list pictures; all unknown (VehicleID)
    is no camera rule at all."""
    return query.camera_ids, gallery.camera_ids


def metrics_from_distance(cfg, dist: np.ndarray, query: FeatureSet, gallery: FeatureSet) -> dict[str, Any]:
    """VeRi/Market-protocol mAP, CMC, mINP over the full ranking, and the AIC rank-100 mAP of the ranked list."""
    device = retrieval_device(cfg.TEST.RETRIEVAL_DEVICE)
    full = evaluate(dist, query.vehicle_ids, gallery.vehicle_ids, *protocol_cameras(query, gallery), device=device)
    ranked = ranking(cfg, dist, gallery)
    aic = evaluate_aic(ranking_distance(ranked, len(gallery)), query.vehicle_ids, gallery.vehicle_ids,
                       top_k=min(AIC_TOP_K, len(gallery)), device=device)
    metrics = {"mAP": float(full["mAP"]), "mINP": float(full["mINP"]), "rank1": float(full["cmc"][0]),
               "rank5": float(full["cmc"][4]), "rank10": float(full["cmc"][9]),
               "num_query": int(full["num_query"]), "num_skipped": int(full["num_skipped"]),
               "num_gallery": len(gallery), "aic_mAP@100": float(aic["mAP"]), "aic_rank1": float(aic["rank1"])}
    metrics["_per_query"] = full
    return metrics


def per_query_csv(query: FeatureSet, per_query: dict[str, Any]) -> str:
    """One row per query: image, id, camera, AP, INP and the rank of its first true match (1-based)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["query", "vehicle_id", "camera_id", "ap", "inp", "first_match_rank"])
    for i in range(len(query)):
        first = int(per_query["first_match_rank"][i])
        writer.writerow([Path(query.paths[i]).name, query.vehicle_ids[i], query.camera_ids[i],
                         f"{per_query['ap'][i]:.6f}", f"{per_query['inp'][i]:.6f}", first + 1 if first >= 0 else ""])
    return buffer.getvalue()


def write_per_query(path: Path, query: FeatureSet, per_query: dict[str, Any]) -> Path:
    return atomic_write_text(path, per_query_csv(query, per_query))
