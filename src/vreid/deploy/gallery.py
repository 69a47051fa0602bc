"""A gallery with the model that embeds its queries: `vreid index ...`, `vreid search`, the service.

A gallery (see :mod:`vreid.deploy.store`: a SQLite file or a Milvus collection, named by a URI or a plain path)
stores the config of the model that extracted it (copied from beside the features file), so that searching
embeds queries with that same model unless another config is given.

Per-camera normalisation (``TEST.CAMERA_NORM``, :mod:`vreid.retrieval.camera_norm`) is fitted once, when the gallery
is built: each camera's statistics from the gallery's images (and from calibration features, e.g. unlabelled images of
the query cameras), stored with the gallery and applied to its rows, to every image added later and to every query
whose camera is given (the pooled statistics otherwise). The functions here are the one way rows and queries enter
a gallery, so none of them skips it; rebuilding the gallery is how its statistics are fitted again.
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
from vreid.deploy.backend import CAMERA_STATS_KEY
from vreid.deploy.index import SearchFilter
from vreid.deploy.store import Gallery, Hit, Sighting, create_gallery, open_gallery
from vreid.errors import ConfigError, VreidError
from vreid.features import FeatureSet, check_feature_matrix
from vreid.retrieval.camera_norm import CAMERA_NORMS, CameraStats
from vreid.runfiles import CONFIG_FILE

log = logging.getLogger(__name__)

MODEL_CONFIG = CONFIG_FILE  # written by `vreid extract` beside the features
STORED: Any = object()  # default of ``stats`` below: the gallery's own camera statistics, read from it now


def build_index(features: str | Path, out: str | Path, overwrite: bool = False, camera_norm: str | None = None,
                calibration: Sequence[str | Path] = (), **options: Any) -> Gallery:
    """``vreid index build``: a FeatureSet file (``vreid extract``) -> a new gallery at ``out`` (URI or path).

    ``camera_norm`` (none | center | standardize; default: ``TEST.CAMERA_NORM.MODE`` of the config beside the
    features, none without one) fits per-camera statistics on the gallery's features and the ``calibration``
    FeatureSets, and stores the gallery's rows normalised with them."""
    gallery = FeatureSet.load(features)
    if len(gallery) == 0 or gallery.features.ndim != 2:
        raise VreidError(f"{features}: no features to index")
    check_feature_matrix(gallery.features, features)  # NaN / inf named with the file, before any statistics
    config = Path(features).with_name(MODEL_CONFIG)
    stats = _fit_camera_stats(gallery, features, config if config.is_file() else None, camera_norm, calibration)
    store = create_gallery(out, int(gallery.features.shape[1]), overwrite=overwrite, **options)
    try:
        if stats is not None:  # before the rows: a gallery with rows always knows how they were normalised
            store.set_metadata(CAMERA_STATS_KEY, stats.to_json())
        _add(store, gallery, stats=stats)
        if config.is_file():
            store.set_model_config(config.read_text())
        else:
            log.warning("no %s beside %s: give --config-file when searching this gallery", MODEL_CONFIG, features)
    except BaseException:
        store.close()
        raise
    log.info("gallery %s: %d images, %d-d", out, len(gallery), store.dim)
    return store


def _fit_camera_stats(gallery: FeatureSet, features: str | Path, config: Path | None, mode: str | None,
                      calibration: Sequence[str | Path]) -> CameraStats | None:
    """The gallery's per-camera statistics, or None when the mode is none."""
    min_images = 10
    if config is not None:
        cfg = load_config(str(config))
        mode = cfg.TEST.CAMERA_NORM.MODE if mode is None else mode
        min_images = int(cfg.TEST.CAMERA_NORM.MIN_IMAGES)
    mode = mode or "none"
    if mode not in CAMERA_NORMS:
        raise ConfigError(f"camera normalisation {mode!r}: expected one of {', '.join(CAMERA_NORMS)}")
    if mode == "none":
        if calibration:
            raise VreidError("--calibration is only used with camera normalisation (--camera-norm center|standardize)")
        return None
    sets = [gallery]
    for path in calibration:
        extra = FeatureSet.load(path)
        check_feature_matrix(extra.features, path, int(gallery.features.shape[1]))
        sets.append(extra)
    stats = CameraStats.fit(np.concatenate([np.asarray(f.features) for f in sets]),
                            np.concatenate([np.asarray(f.camera_ids).astype(str) for f in sets]), mode, min_images)
    log.info("camera normalisation %s fitted on %d images (%s and %d calibration set(s)): %d camera(s) with their "
             "own statistics%s", mode, stats.pooled_count, features, len(calibration), len(stats.cameras),
             "" if len(stats.cameras) > 1 else "; queries of any other camera use the pooled statistics")
    return stats


def camera_stats(store: Gallery) -> CameraStats | None:
    """The per-camera statistics a gallery's rows were normalised with (None: raw features)."""
    text = store.metadata(CAMERA_STATS_KEY)
    if text is None:
        return None
    try:
        stats = CameraStats.from_json(text, f"{store.uri}: {CAMERA_STATS_KEY}")
    except ValueError as exc:
        raise VreidError(str(exc)) from None
    if stats.dim != store.dim:
        raise VreidError(f"{store.uri}: camera statistics are {stats.dim}-d, the gallery {store.dim}-d")
    return stats


def normalize_rows(stats: CameraStats | None, features: np.ndarray, cameras: Sequence[str]) -> np.ndarray:
    """Rows (gallery images or queries) as the gallery compares them: normalised with their camera's statistics
    (a camera without its own, or ``""``, uses the pooled ones); unchanged without statistics."""
    return features if stats is None else stats.apply(features, list(cameras))


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
    if cfg.TEST.CAMERA_NORM.BN:
        log.warning("TEST.CAMERA_NORM.BN is not applied to gallery search: queries are embedded with the model's own "
                    "batch-norm statistics (offline evaluation only, docs/retrieval.md)")
    stats = camera_stats(gallery)
    if stats is not None:  # say it once, where a user would expect it to apply
        log.info("%s: queries are normalised with the gallery's per-camera statistics (%s, %d cameras; the pooled "
                 "ones for a query without a known camera)", gallery.uri, stats.mode, len(stats.cameras))
    elif cfg.TEST.CAMERA_NORM.MODE != "none":
        log.warning("%s was built without camera statistics: TEST.CAMERA_NORM.MODE %s does not apply to its search "
                    "(rebuild it with `vreid index build --camera-norm %s`)", gallery.uri, cfg.TEST.CAMERA_NORM.MODE,
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
         attributes: Mapping[str, Any] | None = None, stats: CameraStats | None = STORED) -> list[int]:
    return add_rows(store, np.asarray(gallery.features), _sightings(gallery, captured_at, attributes), stats)


def add_rows(store: Gallery, features: np.ndarray, sightings: Sequence[Sighting],
             stats: CameraStats | None = STORED) -> list[int]:
    """Embedded rows and their sightings into the gallery, normalised with ``stats`` (default: the gallery's own,
    read now; the service passes those it read once)."""
    stats = camera_stats(store) if stats is STORED else stats
    features = check_feature_matrix(features, store.uri, store.dim)  # a VreidError, before any normalisation
    return store.add(normalize_rows(stats, features, [s.camera_id for s in sightings]), sightings)


def search_rows(store: Gallery, queries: np.ndarray, top_k: int, where: SearchFilter | None = None,
                cameras: Sequence[str] | None = None, device: str | None = None,
                stats: CameraStats | None = STORED) -> list[list[Hit]]:
    """Search embedded queries, each normalised with its camera's statistics (``cameras``: one per query; None:
    unknown, the pooled statistics) when the gallery has them."""
    stats = camera_stats(store) if stats is STORED else stats
    cameras = [""] * len(queries) if cameras is None else list(cameras)
    queries = check_feature_matrix(queries, "queries", store.dim)
    return store.search(normalize_rows(stats, queries, cameras), top_k, where, device=device)


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
                 where: SearchFilter | None = None, device: str | None = None, camera: str = "") -> list[list[Hit]]:
    """Embed image files and search them (``device``: a torch device for exact in-memory search, see
    :meth:`vreid.deploy.index.GalleryIndex.search`; ``camera``: the camera that took the query images, for a
    gallery with camera statistics)."""
    images = [read_image(p) for p in paths]
    return search_rows(store, embedder.embed(images), top_k, where, [camera] * len(images), device)


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
    stats = camera_stats(store)
    return {**store.settings(), "identities": len(identities - {""}), "cameras": len(cameras - {""}),
            "model_config": store.model_config is not None,
            "camera_norm": stats.summary() if stats is not None else None}


def search_features(store: Gallery, features: str | Path, top_k: int, where: SearchFilter | None = None,
                    device: str | None = None) -> tuple[list[str], list[list[Hit]]]:
    """Search the queries of a saved FeatureSet (``vreid extract`` with the gallery's model): no model, no torch.
    Each query is normalised with its own camera's statistics when the gallery has them. Returns the query paths
    and their hits."""
    queries = FeatureSet.load(features)
    check_feature_matrix(queries.features, features, store.dim)
    return [str(p) for p in queries.paths], search_rows(store, np.asarray(queries.features), top_k, where,
                                                        [str(c) for c in queries.camera_ids], device)


__all__ = ["add_features", "add_images", "add_rows", "build_index", "camera_stats", "check_model_fits",
           "gallery_info", "index_config", "normalize_rows", "open_gallery", "parse_time", "remove_sightings",
           "search_features", "search_files", "search_filter", "search_rows"]
