"""``vreid test``: trained weights -> features of the test query/gallery -> metrics, features, rank lists.

``vreid test`` and ``vreid extract`` also run under ``torchrun`` (N processes per node, several nodes): each
process embeds every N-th image, rank 0 gathers the features in the original order and writes the outputs,
so the files equal those of a single process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vreid.config import save_config
from vreid.data.formats.folder import image_records
from vreid.data.loader import load_test_dataset
from vreid.data.records import GALLERY, QUERY, ImageRecord
from vreid.engine.camera_bn import embed_per_camera
from vreid.engine.distributed import DistInfo, cleanup, gather_shards, init_distributed, shard
from vreid.engine.inference import Embedder
from vreid.engine.results import write_test_results
from vreid.errors import ConfigError, VreidError
from vreid.features import FeatureSet
from vreid.runfiles import FINAL_WEIGHTS, GALLERY_FILE, QUERY_FILE

log = logging.getLogger(__name__)


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
    if cfg.TEST.CAMERA_NORM.BN:  # every camera's images of all splits together: one process does it all
        if info.distributed:
            raise ConfigError("TEST.CAMERA_NORM.BN is not supported under torchrun: run `vreid test` in one process")
        return embed_per_camera(embedder, records, cfg.TEST.CAMERA_NORM.MIN_IMAGES, cfg.TEST.CAMERA_NORM.BN_WEIGHT)
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

    records = image_records(folder, cfg.DATASETS.FOLDER_PATTERN)
    if cfg.TEST.CAMERA_NORM.BN:
        log.warning("TEST.CAMERA_NORM.BN does not apply to `vreid extract --images`: a gallery and its queries are "
                    "embedded with the model's own batch-norm statistics (docs/retrieval.md)")
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


def test_config_of_run(cfg):
    """``vreid train --test``: the config that tests a finished training run's final weights into OUTPUT_DIR/test."""
    out = Path(cfg.OUTPUT_DIR)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.TEST.WEIGHT, cfg.OUTPUT_DIR = str(out / f"{FINAL_WEIGHTS}.pth"), str(out / "test")
    cfg.freeze()
    return cfg


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
    return write_test_results(cfg, query, gallery, out)
