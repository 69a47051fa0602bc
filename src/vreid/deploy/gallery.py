"""A gallery index on disk with the model that embeds its queries: `vreid index ...`, `vreid search`, the service.

An index folder holds the :class:`~vreid.retrieval.index.GalleryIndex` files and ``config.yaml``, the config of
the model that extracted the gallery (copied from beside the features file), so that searching embeds queries
with that same model unless another config is given.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from vreid.data.images import read_image
from vreid.data.records import ImageRecord
from vreid.engine.extract import FeatureSet
from vreid.errors import VreidError
from vreid.retrieval.index import MANIFEST, GalleryIndex, Hit

log = logging.getLogger(__name__)

MODEL_CONFIG = "config.yaml"


def build_index(features: str | Path, out: str | Path, overwrite: bool = False, **options: Any) -> GalleryIndex:
    """``vreid index build``: a FeatureSet file (``vreid extract``) -> an index folder."""
    out = Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise VreidError(f"{out} already holds an index: pass --overwrite to replace it")
    gallery = FeatureSet.load(features)
    if len(gallery) == 0:
        raise VreidError(f"{features}: no features to index")
    index = GalleryIndex.from_features(gallery.features, gallery.paths, gallery.vehicle_ids, gallery.camera_ids,
                                       gallery.track_ids, **options)
    index.save(out)
    config = Path(features).with_name(MODEL_CONFIG)
    if config.is_file():
        shutil.copyfile(config, out / MODEL_CONFIG)
    else:
        (out / MODEL_CONFIG).unlink(missing_ok=True)  # an overwritten index must not keep another model's config
        log.warning("no %s beside %s: give --config-file when searching this index", MODEL_CONFIG, features)
    log.info("index %s: %d images, %d-d, %s (%s)", out, len(index), index.dim, index.kind, index.engine)
    return index


def index_config(index_dir: str | Path, config_file: str | None = None, opts: Sequence[str] = ()):
    """The model config for an index: ``config_file`` if given, else the index's own ``config.yaml``."""
    from vreid.config import load_config

    if config_file is None:
        stored = Path(index_dir) / MODEL_CONFIG
        if not stored.is_file():
            raise VreidError(f"{index_dir} has no {MODEL_CONFIG} (the features had none beside them): give the "
                             "model with --config-file F TEST.WEIGHT W")
        config_file = str(stored)
    return load_config(config_file, opts)


def check_model_fits(index: GalleryIndex, embedder, where: str | Path) -> None:
    """The model must give features of the index's size (a different model would mix embedding spaces)."""
    dim = int(embedder.embed([Image.new("RGB", (64, 64))]).shape[1])
    if dim != index.dim:
        raise VreidError(f"{where}: the index holds {index.dim}-d features but the model gives {dim}-d: use the "
                         f"config and weights that extracted the gallery")


def _add(index: GalleryIndex, gallery: FeatureSet) -> list[int]:
    return index.add(gallery.features, gallery.paths, gallery.vehicle_ids, gallery.camera_ids,
                     gallery.track_ids).tolist()


def add_features(index: GalleryIndex, features: str | Path) -> list[int]:
    gallery = FeatureSet.load(features)
    if gallery.features.ndim != 2 or gallery.features.shape[1] != index.dim:
        raise VreidError(f"{features}: features of shape {gallery.features.shape}, the index holds {index.dim}-d")
    return _add(index, gallery)


def add_images(index: GalleryIndex, embedder, records: Sequence[ImageRecord]) -> list[int]:
    """Embed image files (ids from their records) and add them; the files are read batch by batch."""
    return _add(index, embedder.embed_records(records))


def search_files(index: GalleryIndex, embedder, paths: Sequence[str | Path], top_k: int,
                 device: str | None = None) -> list[list[Hit]]:
    """Embed image files and search them (``device``: see :meth:`GalleryIndex.search`)."""
    images = [read_image(p) for p in paths]
    return index.search(embedder.embed(images), top_k, device=device)
