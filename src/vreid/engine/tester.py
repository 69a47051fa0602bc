"""``vreid test``: trained weights -> features of the test query/gallery -> metrics, features, rank lists.

``vreid test`` and ``vreid extract`` also run under ``torchrun`` (N processes per node, several nodes): each
process embeds every N-th image, rank 0 gathers the features in the original order and writes the outputs,
so the files equal those of a single process.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vreid.config import save_config
from vreid.data.loader import load_test_dataset
from vreid.data.records import GALLERY, QUERY, ImageRecord
from vreid.engine.distributed import DistInfo, cleanup, gather_shards, init_distributed, shard
from vreid.engine.extract import FeatureSet
from vreid.engine.inference import Embedder
from vreid.engine.postprocess import (
    GALLERY_FILE,
    QUERY_FILE,
    final_distance,
    metrics_from_distance,
    write_per_query,
)
from vreid.errors import VreidError
from vreid.fileio import atomic_save_npy, atomic_write_text

log = logging.getLogger(__name__)


def rank_row(query: FeatureSet, gallery: FeatureSet, dist: np.ndarray, qi: int, top_k: int = 10):
    """Rank-list row of query ``qi``: true matches green, false red, junk (same id, same camera) grey.

    One function for ``vreid test``'s ranklist.png and ``vreid report``'s page, so both draw the same ranking.
    """
    from vreid.viz import RankListRow

    order = np.argsort(dist[qi], kind="stable")[:top_k]
    same_id = gallery.vehicle_ids[order] == query.vehicle_ids[qi]
    junk = same_id & (gallery.camera_ids[order] == query.camera_ids[qi]) & (query.camera_ids[qi] != "")
    matches = [None if j else bool(m) for m, j in zip(same_id, junk, strict=True)]
    return RankListRow(query.paths[qi], list(gallery.paths[order]), matches,
                       query_label=query.vehicle_ids[qi], labels=[f"d={dist[qi, g]:.3f}" for g in order])


def rank_rows(query: FeatureSet, gallery: FeatureSet, dist: np.ndarray, num_queries: int, top_k: int = 10):
    """Rank-list rows of the first ``num_queries`` queries (see :func:`rank_row`)."""
    return [rank_row(query, gallery, dist, qi, top_k) for qi in range(min(num_queries, len(query)))]


def embed_sharded(embedder: Embedder, records: Sequence[ImageRecord], info: DistInfo) -> FeatureSet | None:
    """FeatureSet of ``records``, each process of a distributed job embedding its shard; the whole set, in the
    order of ``records``, on rank 0 (``None`` on the others)."""
    if not info.distributed:
        return embedder.embed_records(records)
    part = embedder.embed_records(shard(records, info))
    features = gather_shards(part.features, len(records), info)
    return None if features is None else FeatureSet.from_records(features, records)


def extract_splits(
    cfg, splits: Sequence[str] = (QUERY, GALLERY), require_labels: bool = False, info: DistInfo | None = None
) -> dict[str, FeatureSet]:
    """FeatureSets of the test dataset's splits with the model of ``TEST.WEIGHT`` (empty on the ranks other than 0
    of a distributed job)."""
    dataset = load_test_dataset(cfg)
    records = {s: dataset.require_labels(s) if require_labels else dataset[s] for s in splits}
    for split, recs in records.items():
        if not recs:
            raise VreidError(f"dataset {dataset.name!r} at {dataset.root} has no {split} images for test split "
                             f"{cfg.DATASETS.TEST_SPLIT!r}")
    embedder = Embedder(cfg)
    info = info or DistInfo(0, 1, 0, embedder.setup.device)
    out = {split: embed_sharded(embedder, recs, info) for split, recs in records.items()}
    return {split: fs for split, fs in out.items() if fs is not None}


def _distributed(run):
    """Run ``run(cfg, ..., info=...)`` inside the process group torchrun describes (a plain call otherwise)."""

    @functools.wraps(run)
    def wrapper(cfg, *args, **kwargs):
        info = init_distributed()
        try:
            return run(cfg, *args, info=info, **kwargs)
        finally:
            cleanup(info)

    return wrapper


@_distributed
def run_extract_folder(cfg, folder: str | Path, name: str = GALLERY, *, info: DistInfo) -> Path | None:
    """``vreid extract --images DIR``: every image under DIR -> ``OUTPUT_DIR/<name>.npz`` (ids from the file names
    when ``DATASETS.FOLDER_PATTERN`` matches them, else empty). Rank 0 writes and returns the path."""
    from vreid.data.formats.folder import image_records

    records = image_records(folder, cfg.DATASETS.FOLDER_PATTERN)
    out = Path(cfg.OUTPUT_DIR)
    features = embed_sharded(Embedder(cfg), records, info)
    if features is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    path = features.save(out / f"{name}.npz")
    log.info("%d images of %s embedded: %s", len(features), folder, path)
    return path


@_distributed
def run_extract(cfg, splits: Sequence[str] = (QUERY, GALLERY), *, info: DistInfo) -> dict[str, Path]:
    """``vreid extract``: one FeatureSet file per split, ``OUTPUT_DIR/<split>.npz`` (written by rank 0)."""
    out = Path(cfg.OUTPUT_DIR)
    features = extract_splits(cfg, splits, info=info)
    if not info.is_main:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    paths = {split: fs.save(out / f"{split}.npz") for split, fs in features.items()}
    for split, path in paths.items():
        log.info("%s features: %s", split, path)
    return paths


def report(cfg, query: FeatureSet, gallery: FeatureSet, out: Path) -> dict[str, Any]:
    """Post-process, evaluate and write ``distance.npy``, ``metrics.json``, ``per_query.csv`` and ``ranklist.png``."""
    from vreid.viz import draw_ranklists

    dist = final_distance(cfg, query, gallery)
    atomic_save_npy(out / "distance.npy", dist)
    metrics = metrics_from_distance(cfg, dist, query, gallery)
    per_query = metrics.pop("_per_query")
    metrics.update(dataset=cfg.DATASETS.TEST, test_split=cfg.DATASETS.TEST_SPLIT, weights=str(cfg.TEST.WEIGHT),
                   rerank=bool(cfg.TEST.RERANK.ENABLED))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_per_query(out / "per_query.csv", query, per_query)
    log.info("%s (%s): mAP %.4f rank-1 %.4f rank-5 %.4f mINP %.4f, AIC mAP@100 %.4f over %d queries",
             cfg.DATASETS.TEST, cfg.DATASETS.TEST_SPLIT or "standard", metrics["mAP"], metrics["rank1"],
             metrics["rank5"], metrics["mINP"], metrics["aic_mAP@100"], metrics["num_query"])
    if cfg.TEST.RANKLIST_QUERIES:
        picture = draw_ranklists(rank_rows(query, gallery, dist, cfg.TEST.RANKLIST_QUERIES), out / "ranklist.png")
        log.info("rank lists: %s", picture)
    return metrics


@_distributed
def run_test(cfg, *, info: DistInfo) -> dict[str, Any]:
    """``vreid test``: extract the labelled query/gallery, post-process, evaluate, report (rank 0; the other ranks
    of a distributed job only extract and return an empty dict)."""
    out = Path(cfg.OUTPUT_DIR)
    features = extract_splits(cfg, require_labels=True, info=info)
    if not info.is_main:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    query, gallery = features[QUERY], features[GALLERY]
    query.save(out / QUERY_FILE)
    gallery.save(out / GALLERY_FILE)
    return report(cfg, query, gallery, out)
