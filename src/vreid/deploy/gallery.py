"""A gallery with the model that embeds its queries: `vreid index ...`, `vreid search`, the service.

A gallery (see :mod:`vreid.deploy.store`: a SQLite file or a Milvus collection, named by a URI or a plain path)
stores the config of the model that extracted it (copied from beside the features file), so that searching
embeds queries with that same model unless another config is given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vreid.config import load_config
from vreid.data.images import read_image
from vreid.data.records import ImageRecord
from vreid.deploy.index import SearchFilter
from vreid.deploy.store import Gallery, Hit, Sighting, create_gallery, open_gallery
from vreid.errors import VreidError
from vreid.features import FeatureSet, check_feature_matrix
from vreid.runfiles import CONFIG_FILE

log = logging.getLogger(__name__)

MODEL_CONFIG = CONFIG_FILE  # written by `vreid extract` beside the features


def build_index(features: str | Path, out: str | Path, overwrite: bool = False, **options: Any) -> Gallery:
    """``vreid index build``: a FeatureSet file (``vreid extract``) -> a new gallery at ``out`` (URI or path)."""
    gallery = FeatureSet.load(features)
    if len(gallery) == 0 or gallery.features.ndim != 2:
        raise VreidError(f"{features}: no features to index")
    store = create_gallery(out, int(gallery.features.shape[1]), overwrite=overwrite, **options)
    try:
        _add(store, gallery)
        config = Path(features).with_name(MODEL_CONFIG)
        if config.is_file():
            store.set_model_config(config.read_text())
        else:
            log.warning("no %s beside %s: give --config-file when searching this gallery", MODEL_CONFIG, features)
    except BaseException:
        store.close()
        raise
    log.info("gallery %s: %d images, %d-d", out, len(gallery), store.dim)
    return store


def index_config(gallery: Gallery, config_file: str | None = None, opts: Sequence[str] = ()):
    """The model config for a gallery: ``config_file`` if given, else the one stored in the gallery."""
    import tempfile

    if config_file is not None:
        cfg = load_config(config_file, opts)
    else:
        stored = gallery.model_config
        if stored is None:
            raise VreidError(f"{gallery.uri} has no model config (the features had no {MODEL_CONFIG} beside them): "
                             "give the model with --config-file F TEST.WEIGHT W")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / MODEL_CONFIG
            path.write_text(stored)
            cfg = load_config(str(path), opts)
    if cfg.TEST.CAMERA_NORM.MODE != "none":  # say it once, where a user would expect it to apply
        log.info("TEST.CAMERA_NORM.MODE %s is not applied to gallery search: it needs each camera's test images "
                 "together (offline evaluation, docs/retrieval.md); queries are ranked on their own features",
                 cfg.TEST.CAMERA_NORM.MODE)
    return cfg


def check_model_fits(gallery: Gallery, embedder, where: str | Path) -> None:
    """The model must give features of the gallery's size (a different model would mix embedding spaces)."""
    dim = int(embedder.embed([Image.new("RGB", (64, 64))]).shape[1])
    if dim != gallery.dim:
        raise VreidError(f"{where}: the index holds {gallery.dim}-d features but the model gives {dim}-d: use the "
                         f"config and weights that extracted the gallery")


def parse_time(text: str | float | None, what: str) -> float | None:
    """A capture time: seconds since the epoch, or ISO 8601 (UTC unless it names a zone) -> epoch seconds."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        try:
            moment = datetime.fromisoformat(str(text))
        except ValueError:
            raise VreidError(f"{what}: {text!r} is not a time (seconds since the epoch, or ISO 8601 such as "
                             "2026-12-01T08:30:00)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    if not math.isfinite(value):
        raise VreidError(f"{what}: {text!r} is not a finite time")
    return value


def search_filter(cameras: Sequence[str] = (), tracks: Sequence[str] = (), time_from: str | float | None = None,
                  time_to: str | float | None = None) -> SearchFilter:
    """The filter of `vreid search` options and POST /search parameters (times as :func:`parse_time`)."""
    return SearchFilter(tuple(cameras), tuple(tracks), parse_time(time_from, "time from"),
                        parse_time(time_to, "time to"))


def _sightings(gallery: FeatureSet, captured_at: float | None = None,
               attributes: Mapping[str, Any] | None = None) -> list[Sighting]:
    return [Sighting(str(p), str(v), str(c), str(t), captured_at, dict(attributes or {})) for p, v, c, t in
            zip(gallery.paths, gallery.vehicle_ids, gallery.camera_ids, gallery.track_ids, strict=True)]


def _add(store: Gallery, gallery: FeatureSet, captured_at: float | None = None,
         attributes: Mapping[str, Any] | None = None) -> list[int]:
    return store.add(np.asarray(gallery.features), _sightings(gallery, captured_at, attributes))


def add_features(store: Gallery, features: str | Path, captured_at: float | None = None,
                 attributes: Mapping[str, Any] | None = None) -> list[int]:
    gallery = FeatureSet.load(features)
    check_feature_matrix(gallery.features, features, store.dim)
    return _add(store, gallery, captured_at, attributes)


def add_images(store: Gallery, embedder, records: Sequence[ImageRecord], captured_at: float | None = None,
               attributes: Mapping[str, Any] | None = None) -> list[int]:
    """Embed image files (ids from their records) and add them in one transaction."""
    return _add(store, embedder.embed_records(records), captured_at, attributes)


def search_files(store: Gallery, embedder, paths: Sequence[str | Path], top_k: int,
                 where: SearchFilter | None = None, device: str | None = None) -> list[list[Hit]]:
    """Embed image files and search them (``device``: a torch device for exact in-memory search, see
    :meth:`vreid.deploy.index.GalleryIndex.search`)."""
    images = [read_image(p) for p in paths]
    return store.search(embedder.embed(images), top_k, where, device=device)


def remove_sightings(store: Gallery, ids: Sequence[int] = (), paths: Sequence[str] = ()) -> int:
    """``vreid index remove``: remove the images with these ids and/or paths (every path must be in the gallery)."""
    bad = [i for i in ids if not 0 <= i < 2**63]
    if bad:
        raise VreidError(f"--ids {bad[0]}: not a gallery id (ids are 0 .. 2^63-1)")
    found = store.ids_of_paths(paths) if paths else {}
    missing = [p for p in paths if p not in found]
    if missing:
        raise VreidError(f"not in the gallery: {missing[:5]}")
    every = [*ids, *(i for p in paths for i in found[p])]
    if not every:
        raise VreidError("index remove: give --ids and/or --paths")
    return store.remove(every)


def gallery_info(store: Gallery) -> dict[str, Any]:
    """``vreid index info``: the gallery's settings, its size in identities and cameras, whether it holds a model
    config."""
    identities, cameras = set(), set()
    for batch in store.batches():
        identities.update(s.vehicle_id for s in batch.sightings)
        cameras.update(s.camera_id for s in batch.sightings)
    return {**store.settings(), "identities": len(identities - {""}), "cameras": len(cameras - {""}),
            "model_config": store.model_config is not None}


def search_features(store: Gallery, features: str | Path, top_k: int, where: SearchFilter | None = None,
                    device: str | None = None) -> tuple[list[str], list[list[Hit]]]:
    """Search the queries of a saved FeatureSet (``vreid extract`` with the gallery's model): no model, no torch.
    Returns the query paths and their hits."""
    queries = FeatureSet.load(features)
    check_feature_matrix(queries.features, features, store.dim)
    return [str(p) for p in queries.paths], store.search(queries.features, top_k, where, device=device)


__all__ = ["add_features", "add_images", "build_index", "check_model_fits", "index_config", "open_gallery",
           "parse_time", "remove_sightings", "gallery_info", "search_features", "search_files", "search_filter"]
