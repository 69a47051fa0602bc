"""Per-camera feature normalisation: take out what each camera adds to every feature it produces.

A model fine-tuned on a few cameras meets other cameras in use. A camera's colour response, its angle and its scene
move all the features it produces in roughly the same direction, and a query camera moved one way and a gallery
camera moved another no longer rank by the vehicle alone. Subtracting each camera's mean feature, estimated from
that camera's own (unlabelled) test images, removes this first-order part before any distance is taken;
``standardize`` also divides each dimension by its spread within the camera. On vehicle-2cam the held-out vehicles
rendered with another colour response per camera fall from 0.975 to 0.642 mAP and standardising brings them back to
0.849, while the untouched ones gain 0.005 (means of 6 runs; docs/benchmarks.md, issue 11).

Like re-ranking it is transductive: it needs the test images of each camera together, so it belongs to offline
evaluation (``vreid test``, pipelines), not to a service that embeds one query at a time. A camera with fewer than
``min_images`` images has no reliable mean of its own and is normalised with the statistics of all images instead,
so a lone query is never reduced to a near-zero vector. Camera ids are only grouping labels; an unknown camera
(``""``) is one more group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from vreid.retrieval.distance import as_feature_matrix, l2_normalize

log = logging.getLogger(__name__)

CAMERA_NORMS = ("none", "center", "standardize")
STD_EPS = 1e-6  # added to each dimension's standard deviation: a constant dimension is centred, not blown up


def camera_normalize(features: np.ndarray, camera_ids: Sequence, mode: str = "center",
                     min_images: int = 10) -> np.ndarray:
    """``features`` (N, D) with each camera's mean removed (``center``) or each camera's dimensions standardised
    (``standardize``), rows L2-normalised again; ``none`` returns the rows L2-normalised, nothing else changed.

    Statistics are computed in float64 per group of ``camera_ids``; a camera with fewer than ``min_images`` rows
    uses those of all N rows. Returns float32 (the features are held in float32 throughout)."""
    if mode not in CAMERA_NORMS:
        raise ValueError(f"unknown camera normalisation {mode!r}; expected one of {', '.join(CAMERA_NORMS)}")
    if min_images < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    x = as_feature_matrix(features, "features", dtype=np.float32, finite=True)
    cams = np.asarray(camera_ids).astype(str)
    if cams.shape != (len(x),):
        raise ValueError(f"camera_ids must give one camera per feature row: {cams.shape} for {len(x)} rows")
    if mode == "none" or len(x) == 0:
        return l2_normalize(x).astype(np.float32, copy=False)

    def stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = rows.mean(axis=0)
        scale = rows.std(axis=0) + STD_EPS if mode == "standardize" else np.ones_like(mean)
        return mean, scale

    pooled: tuple[np.ndarray, np.ndarray] | None = None  # all rows' statistics, only if a camera is too small
    out = np.empty_like(x)
    small = []
    for camera in np.unique(cams):
        mask = cams == camera
        rows = x[mask].astype(np.float64)  # one camera at a time: the float64 copy stays the size of one camera
        if len(rows) >= min_images:
            mean, scale = stats(rows)
        else:
            pooled = pooled or stats(x.astype(np.float64))
            mean, scale = pooled
            small.append(camera)
        rows -= mean  # in place on the camera's own copy
        rows /= scale
        out[mask] = rows
    if small:
        log.info("camera normalisation: %d camera(s) with fewer than %d images use the statistics of all images: %s",
                 len(small), min_images, ", ".join(small[:10]) + (" ..." if len(small) > 10 else ""))
    out /= np.maximum(np.sqrt(np.einsum("ij,ij->i", out, out))[:, None], 1e-12)  # in place: no second copy
    return out


def camera_normalize_pair(query: np.ndarray, gallery: np.ndarray, query_cameras: Sequence, gallery_cameras: Sequence,
                          mode: str = "center", min_images: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """:func:`camera_normalize` over the query and gallery rows together (a camera's statistics come from all its
    test images, whichever side they are on), split back into (query, gallery)."""
    query = as_feature_matrix(query, "query")
    gallery = as_feature_matrix(gallery, "gallery")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {query.shape[1]} vs {gallery.shape[1]}")
    both = camera_normalize(np.concatenate([query, gallery]),
                            np.concatenate([np.asarray(query_cameras).astype(str),
                                            np.asarray(gallery_cameras).astype(str)]), mode, min_images)
    return both[: len(query)], both[len(query):]
