"""Per-camera feature normalisation: take out what each camera adds to every feature it produces.

A model fine-tuned on a few cameras meets other cameras in use. A camera's colour response, its angle and its scene
move all the features it produces in roughly the same direction, and a query camera moved one way and a gallery
camera moved another no longer rank by the vehicle alone. Subtracting each camera's mean feature, estimated from
that camera's own (unlabelled) test images, removes this first-order part before any distance is taken;
``standardize`` also divides each dimension by its spread within the camera. On vehicle-2cam the held-out vehicles
rendered with another colour response per camera fall from 0.975 to 0.642 mAP and standardising brings them back to
0.849, while the untouched ones gain 0.005 (means of 6 runs; docs/benchmarks.md, issue 11).

In offline evaluation it is transductive, like re-ranking: :func:`camera_normalize` fits the statistics on the
test images of each camera together. A gallery fits them once (:class:`CameraStats`), when it is built, and applies
them to every image added later and to every query whose camera is known (vreid.deploy.gallery). A camera with fewer
than ``min_images`` images has no reliable mean of its own and is normalised with the statistics of all images
instead, so a lone query is never reduced to a near-zero vector. Camera ids are only grouping labels; images of
unknown camera (``""``) always use the pooled statistics.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vreid.retrieval.distance import as_feature_matrix, l2_normalize

log = logging.getLogger(__name__)

CAMERA_NORMS = ("none", "center", "standardize")
STATS_FORMAT = "vreid-camera-stats-1"
STD_EPS = 1e-6  # added to each dimension's standard deviation: a constant dimension is centred, not blown up


@dataclass(frozen=True, eq=False)
class CameraStats:
    """Per-camera feature statistics, fitted once and applied to any rows whose cameras are known.

    ``cameras`` are the cameras with at least ``min_images`` fitted rows, each with its own ``means`` / ``scales``
    row; rows of any other camera (a small one, one never fitted, and the unknown camera ``""`` however many rows it
    has) use the pooled statistics of all fitted rows.
    Offline evaluation fits and applies on the same test set (:func:`camera_normalize`); a gallery fits once on its
    images and applies the same statistics to every image added later and to every query (docs/retrieval.md)."""

    mode: str
    min_images: int
    cameras: tuple[str, ...]
    counts: tuple[int, ...]
    means: np.ndarray  # (len(cameras), D) float64
    scales: np.ndarray  # (len(cameras), D) float64; ones for ``center``
    pooled_mean: np.ndarray  # (D,)
    pooled_scale: np.ndarray  # (D,)
    pooled_count: int

    @property
    def dim(self) -> int:
        return int(self.pooled_mean.shape[0])

    @classmethod
    def fit(cls, features: np.ndarray, camera_ids: Sequence, mode: str = "center",
            min_images: int = 10) -> CameraStats:
        """Each camera's mean and per-dimension standard deviation in float64, one camera's rows at a time (the
        float64 copy stays the size of one camera, two passes over it); the pooled ones combined from the cameras'
        moments, without a copy of the whole set."""
        if mode not in CAMERA_NORMS or mode == "none":
            raise ValueError(f"camera statistics need mode center or standardize, got {mode!r}")
        if min_images < 1:
            raise ValueError(f"min_images must be >= 1, got {min_images}")
        x = as_feature_matrix(features, "features", dtype=np.float32, finite=True)
        cams = _camera_array(camera_ids, len(x))
        if len(x) == 0:
            raise ValueError("camera statistics need at least one feature row")
        names, counts, means, m2s = [], [], [], []  # per camera: rows, mean, sum of squared deviations
        for camera in np.unique(cams):
            rows = x[cams == camera].astype(np.float64)
            mean = rows.mean(axis=0)
            rows -= mean  # in place: two passes over the camera's own copy, no E[x^2] - mean^2 cancellation
            names.append(str(camera))
            counts.append(len(rows))
            means.append(mean)
            m2s.append(np.einsum("ij,ij->j", rows, rows))
        dim = x.shape[1]
        n = np.asarray(counts, np.float64)[:, None]
        mean_all = (n * np.asarray(means)).sum(axis=0) / n.sum()
        # the pooled spread from the cameras' (Chan et al.'s combination of partial moments)
        var_all = (np.asarray(m2s) + n * (np.asarray(means) - mean_all) ** 2).sum(axis=0) / n.sum()
        # the unknown camera "" never has statistics of its own: its rows and queries without a camera use the pooled
        own = [i for i, (c, k) in enumerate(zip(names, counts, strict=True)) if k >= min_images and c != ""]
        var_own = (np.asarray(m2s)[own] / n[own]).reshape(len(own), dim)

        def scale(var: np.ndarray) -> np.ndarray:
            return np.sqrt(var) + STD_EPS if mode == "standardize" else np.ones_like(var)

        return cls(mode, min_images, tuple(names[i] for i in own), tuple(counts[i] for i in own),
                   np.asarray(means)[own].reshape(len(own), dim), scale(var_own), mean_all, scale(var_all),
                   int(n.sum()))

    def apply(self, features: np.ndarray, camera_ids: Sequence) -> np.ndarray:
        """``features`` with their camera's statistics (the pooled ones for a camera without its own) removed, rows
        L2-normalised again; float32, one camera's rows at a time."""
        x = as_feature_matrix(features, "features", dtype=np.float32, finite=True)
        cams = _camera_array(camera_ids, len(x))
        if x.shape[1] != self.dim:
            raise ValueError(f"features are {x.shape[1]}-d, the camera statistics {self.dim}-d")
        index = {c: i for i, c in enumerate(self.cameras)}
        out = np.empty_like(x)
        pooled = []
        for camera in np.unique(cams):
            mask = cams == camera
            i = index.get(str(camera))
            mean, scale = (self.means[i], self.scales[i]) if i is not None else (self.pooled_mean, self.pooled_scale)
            if i is None:
                pooled.append(str(camera))
            rows = x[mask].astype(np.float64)
            rows -= mean  # in place on the camera's own copy
            rows /= scale
            out[mask] = rows
        if pooled:
            log.debug("camera normalisation: pooled statistics for camera(s) %s", ", ".join(pooled[:10]))
        out /= np.maximum(np.sqrt(np.einsum("ij,ij->i", out, out))[:, None], 1e-12)  # in place: no second copy
        return out

    def to_json(self) -> str:
        """A JSON text (arrays as base64 float64, exact) for storing beside a gallery."""
        def arr(a: np.ndarray) -> str:
            return base64.b64encode(np.ascontiguousarray(a, "<f8").tobytes()).decode("ascii")

        scales = {"scales": arr(self.scales), "pooled_scale": arr(self.pooled_scale)} if self.mode == "standardize" \
            else {}  # center: the scales are ones, not stored (half the text)
        return json.dumps({"format": STATS_FORMAT, "mode": self.mode, "min_images": self.min_images, "dim": self.dim,
                           "cameras": list(self.cameras), "counts": list(self.counts), "means": arr(self.means),
                           "pooled_mean": arr(self.pooled_mean), "pooled_count": self.pooled_count, **scales})

    @classmethod
    def from_json(cls, text: str, where: str) -> CameraStats:
        """:meth:`to_json`'s text back; ``where`` names its source in the error of a broken text."""
        try:
            d = json.loads(text)
            if d.get("format") != STATS_FORMAT:
                raise ValueError(f"not {STATS_FORMAT}")
            dim, cameras, counts = int(d["dim"]), [str(c) for c in d["cameras"]], [int(c) for c in d["counts"]]

            def arr(key: str, rows: int | None) -> np.ndarray:
                if key not in d and key in ("scales", "pooled_scale") and d.get("mode") == "center":
                    return np.ones(dim if rows is None else (rows, dim))
                a = np.frombuffer(base64.b64decode(d[key], validate=True), "<f8").astype(np.float64)
                return a.reshape(dim) if rows is None else a.reshape(rows, dim)

            stats = cls(str(d["mode"]), int(d["min_images"]), tuple(cameras), tuple(counts),
                        arr("means", len(cameras)), arr("scales", len(cameras)), arr("pooled_mean", None),
                        arr("pooled_scale", None), int(d["pooled_count"]))
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise ValueError(f"{where}: broken camera statistics ({exc})") from None
        if stats.mode not in CAMERA_NORMS[1:] or len(counts) != len(cameras) or not all(
                np.isfinite(a).all() for a in (stats.means, stats.scales, stats.pooled_mean, stats.pooled_scale)):
            raise ValueError(f"{where}: broken camera statistics (mode {stats.mode!r}, {len(cameras)} cameras, "
                             f"{len(counts)} counts, or values that are not finite)")
        return stats

    def summary(self) -> dict:
        """For `vreid index info` and GET /health: the mode and which cameras have statistics of their own."""
        return {"mode": self.mode, "cameras": dict(zip(self.cameras, self.counts, strict=True)),
                "images": self.pooled_count, "min_images": self.min_images}


def _camera_array(camera_ids: Sequence, n: int) -> np.ndarray:
    cams = np.asarray(camera_ids).astype(str)
    if cams.shape != (n,):
        raise ValueError(f"camera_ids must give one camera per feature row: {cams.shape} for {n} rows")
    return cams


def camera_normalize(features: np.ndarray, camera_ids: Sequence, mode: str = "center",
                     min_images: int = 10) -> np.ndarray:
    """``features`` (N, D) with each camera's mean removed (``center``) or each camera's dimensions standardised
    (``standardize``), rows L2-normalised again; ``none`` returns the rows L2-normalised, nothing else changed.

    The statistics are fitted on these same rows (:class:`CameraStats`): a camera with fewer than ``min_images``
    rows uses those of all N rows. Returns float32 (the features are held in float32 throughout)."""
    if mode not in CAMERA_NORMS:
        raise ValueError(f"unknown camera normalisation {mode!r}; expected one of {', '.join(CAMERA_NORMS)}")
    if min_images < 1:
        raise ValueError(f"min_images must be >= 1, got {min_images}")
    x = as_feature_matrix(features, "features", dtype=np.float32, finite=True)
    cams = _camera_array(camera_ids, len(x))
    if mode == "none" or len(x) == 0:
        return l2_normalize(x).astype(np.float32, copy=False)
    stats = CameraStats.fit(x, cams, mode, min_images)
    small = sorted(set(np.unique(cams).tolist()) - set(stats.cameras))
    if small:
        log.info("camera normalisation: %d camera(s) with fewer than %d images use the statistics of all images: %s",
                 len(small), min_images, ", ".join(small[:10]) + (" ..." if len(small) > 10 else ""))
    return stats.apply(x, cams)


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
