"""Using gallery tracklets at test time: feature averaging along a track and track-level re-ranking.

AIC21 gallery images come in tracklets (consecutive crops of one vehicle from one camera, docs/datasets.md), so
images of a track should be retrieved together. The paper (§3.4) speaks of "feature averaging of consecutive frames";
the official code instead averaged over the whole tracklet (off in all scripts) and, for the submission, re-ordered
each top-100 list so that every tracklet with a member in it appears as one block (docs/method.md). Differences from
that code: images inside a track block are sorted by distance (the official code kept track-file order);
images without a track are singleton tracks instead of a KeyError; and tracks are ranked over the whole gallery,
not only among those with a member in the image-level top-100 (with ``reduce="min"`` this changes nothing: a track
whose best image is outside the top-100 can never rank before one whose best image is inside it).

Track ids are any hashable labels; ``""`` and ``None`` mean "no track" (FeatureSet uses ``""``). Track order is
the order in which images appear in the arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence

import numpy as np

from vreid.retrieval.distance import as_feature_matrix, l2_normalize
from vreid.retrieval.metrics import stable_argsort_rows
from vreid.retrieval.submission import AIC_TOP_K

log = logging.getLogger(__name__)

REDUCTIONS = ("min", "mean")
BLOCK_ELEMENTS = 1 << 21  # distance entries handled per block of queries: a few tens of MiB of temporaries


def _track_codes(track_ids: Sequence[Hashable] | np.ndarray, n: int, singletons: bool) -> np.ndarray:
    """int64 code per image, numbered by first appearance; untracked images get -1, or their own code."""
    values = track_ids.tolist() if isinstance(track_ids, np.ndarray) else list(track_ids)
    if len(values) != n:
        raise ValueError(f"got {len(values)} track ids for {n} images")
    table: dict[Hashable, int] = {}
    codes = np.empty(n, dtype=np.int64)
    next_code = 0
    for i, v in enumerate(values):
        if v is None or v == "":
            if not singletons:
                codes[i] = -1
                continue
            codes[i] = next_code
        elif v in table:
            codes[i] = table[v]
            continue
        else:
            codes[i] = table[v] = next_code
        next_code += 1
    return codes


def _segments(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns grouped by code (stable, so gallery order inside a track), segment starts and sizes."""
    perm = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    return perm, starts, sizes


def average_track_features(
    features: np.ndarray,
    track_ids: Sequence[Hashable] | np.ndarray,
    window: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Replace each tracked image's feature by the mean over its track, smoothing out single bad crops.

    ``window=None`` averages the whole track (what the official ``track_aug`` intended, without its distance
    weights); ``window=w`` averages the ``w`` consecutive frames centred on the image — ``(w-1)//2`` before and
    ``w//2`` after it in track order — cut short at the ends of the track (the paper's "consecutive frames").
    Features are averaged as given (``extract_features`` has already L2-normalised them); with ``normalize`` the
    averaged rows are L2-normalised again so that distances stay on the usual scale. Images without a track are
    returned unchanged. Returns a new array of the input's float dtype.
    """
    x = as_feature_matrix(features, "features")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None (whole track), got {window}")
    codes = _track_codes(track_ids, len(x), singletons=False)
    out = x.copy()
    tracked = np.flatnonzero(codes >= 0)
    if len(tracked) == 0:
        log.warning("no image has a track id: features returned unchanged")
        return out
    members = np.split(tracked[np.argsort(codes[tracked], kind="stable")], np.cumsum(np.bincount(codes[tracked]))[:-1])
    before, after = (0, 0) if window is None else ((window - 1) // 2, window // 2)
    for idx in members:
        track = x[idx].astype(np.float64)
        if window is None:
            out[idx] = track.mean(axis=0)
            continue
        csum = np.zeros((len(idx) + 1, x.shape[1]))
        np.cumsum(track, axis=0, out=csum[1:])
        pos = np.arange(len(idx))
        lo, hi = np.maximum(pos - before, 0), np.minimum(pos + after + 1, len(idx))
        out[idx] = (csum[hi] - csum[lo]) / (hi - lo)[:, None]
    if normalize:
        out[tracked] = l2_normalize(out[tracked])
    log.debug("averaged %d images over %d tracks (window %s)", len(tracked), len(members), window)
    return out


def _check_distmat(
    distmat: np.ndarray, gallery_track_ids: Sequence[Hashable] | np.ndarray, reduce: str
) -> tuple[np.ndarray, np.ndarray]:
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must have shape (num_query, num_gallery), got {distmat.shape}")
    if distmat.dtype.kind not in "biuf":
        raise ValueError(f"distmat must hold real numbers, got dtype {distmat.dtype}")
    if distmat.dtype.kind != "f":
        distmat = distmat.astype(np.float64)
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown track reduction {reduce!r}; expected one of {', '.join(REDUCTIONS)}")
    codes = _track_codes(gallery_track_ids, distmat.shape[1], singletons=True)
    return distmat, codes


def _track_scores(
    block: np.ndarray, perm: np.ndarray, starts: np.ndarray, sizes: np.ndarray, reduce: str
) -> np.ndarray:
    """(rows, tracks) distance of each track: its best image's, or the mean of its images' (kept in float64, so
    that rounding to float32 cannot create ties that reorder tracks)."""
    grouped = block[:, perm]
    if reduce == "min":
        return np.minimum.reduceat(grouped, starts, axis=1)
    return np.add.reduceat(grouped, starts, axis=1, dtype=np.float64) / sizes


def _block_rows(num_gallery: int, block_rows: int | None) -> int:
    rows = max(1, BLOCK_ELEMENTS // max(num_gallery, 1)) if block_rows is None else block_rows
    if rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {rows}")
    return rows


def track_distance(
    distmat: np.ndarray,
    gallery_track_ids: Sequence[Hashable] | np.ndarray,
    reduce: str = "min",
    *,
    block_rows: int | None = None,
) -> np.ndarray:
    """(q, g) matrix in which every gallery image takes its track's distance (``min`` or ``mean`` over the track).

    This is the track-level ranking as a distance matrix, so :func:`~vreid.retrieval.metrics.evaluate` can score it.
    Images of one track tie, and a stable sort lists them in gallery order rather than by distance; mAP does not
    notice, because a track holds a single vehicle (use :func:`track_rerank` for the exact submission order).
    Images without a track keep their own distance.
    """
    distmat, codes = _check_distmat(distmat, gallery_track_ids, reduce)
    perm, starts, sizes = _segments(codes)
    out = np.empty_like(distmat)
    rows = _block_rows(distmat.shape[1], block_rows)
    for start in range(0, distmat.shape[0], rows):
        out[start : start + rows] = _track_scores(distmat[start : start + rows], perm, starts, sizes, reduce)[:, codes]
    return out


def track_rerank(
    distmat: np.ndarray,
    gallery_track_ids: Sequence[Hashable] | np.ndarray,
    top_k: int | None = AIC_TOP_K,
    reduce: str = "min",
    *,
    block_rows: int | None = None,
) -> np.ndarray:
    """(q, top_k) int64 gallery indices: whole tracks in order of track distance, each track's images by distance.

    The paper's "track-rank" submission step (docs/method.md): for each query, tracks are ranked by the distance of
    their best image (``reduce="min"``, the official behaviour) or by their mean distance (``"mean"``), ties going to
    the track that appears first in the gallery; all images of a track are listed together, nearest first (ties by
    gallery index); images without a track are singleton tracks. The list is cut at ``top_k`` (the last track may be
    cut short), or at the gallery size if that is smaller; ``top_k=None`` ranks the whole gallery.
    """
    distmat, codes = _check_distmat(distmat, gallery_track_ids, reduce)
    num_query, num_gallery = distmat.shape
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    k = num_gallery if top_k is None else min(top_k, num_gallery)
    if top_k is not None and k < top_k:
        log.warning("gallery has only %d images: rankings have %d columns, not top_k=%d", num_gallery, k, top_k)
    out = np.empty((num_query, k), dtype=np.int64)
    if num_query == 0 or k == 0:
        return out
    perm, starts, sizes = _segments(codes)
    num_tracks = len(sizes)
    rows = _block_rows(num_gallery, block_rows)
    for start in range(0, num_query, rows):
        block = distmat[start : start + rows]
        track_order = stable_argsort_rows(_track_scores(block, perm, starts, sizes, reduce))
        # how many leading tracks are needed to fill k places
        needed = np.minimum(np.count_nonzero(np.cumsum(sizes[track_order], axis=1) < k, axis=1) + 1, num_tracks)
        track_rank = np.empty_like(track_order)
        np.put_along_axis(track_rank, track_order, np.arange(num_tracks)[None, :], axis=1)
        image_rank = track_rank[:, codes]
        for r in range(len(block)):
            sel = np.flatnonzero(image_rank[r] < needed[r])
            # lexsort is stable and sel ascends, so equal distances inside a track keep gallery order
            order = np.lexsort((block[r, sel], image_rank[r, sel]))
            out[start + r] = sel[order[:k]]
    log.debug("track re-ranking of %d queries over %d tracks (%s)", num_query, num_tracks, reduce)
    return out
