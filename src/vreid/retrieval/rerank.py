"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) without any dense (q+g) x (q+g) matrix.

The usual implementation (Luo Hao's port used by BoT/VOC, docs/method.md) holds several dense (q+g)² matrices and
loops over rows in Python: ~22 GiB at CityFlowV2-test scale (each dense 32,341² float32 matrix is 4.2 GB). This one
computes the same numbers from

* one pass of square distance tiles over the upper triangle (the matrix is symmetric, so each GEMM serves two row
  blocks), keeping per row only its maximum and its nearest neighbours: a row's kept maximum bounds its final
  k-th neighbour, so only the few tile entries under it are merged (:class:`_SmallestLists`), which keeps the
  pass near the cost of its GEMMs (about 0.6 of the F F^T product every exact re-ranking needs),
* vectorised k-reciprocal sets and their expansion on those neighbour lists,
* V, its query expansion and the Jaccard distance as hand-built CSR/CSC arrays (the reference's "min-sum over
  the nonzeros" inverted index, vectorised per block of queries).

Peak memory is the features, O((q+g)·k1) neighbour lists, O((q+g)·|expanded set|·k2) sparse entries, one tile and
the (q, g) output. :mod:`vreid.retrieval.accel` runs the neighbour pass and the Jaccard stage on a GPU.

Notation and equation numbers of the paper (arXiv 1701.08398): d(p, x) the "original" distance, N(p, k) the
k-nearest neighbours (Eq. 1; the code takes k+1 entries, p itself included), R(p, k) the k-reciprocal neighbours
(Eq. 2), R*(p, k) the expanded set (Eq. 3), V_p the k-reciprocal feature with Gaussian weights (Eq. 7), the Jaccard
distance by min/max of V (Eq. 8-10), local query expansion (Eq. 11), the final distance d* (Eq. 12).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import DTypeLike

from vreid.retrieval.distance import as_feature_matrix

log = logging.getLogger(__name__)

#: ``extra_distance(rows, cols)``: the additive term for the rows x cols block (indices into the q+g order).
ExtraDistanceFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: A callable, or ``(features, weight)`` pairs (one pair alone is accepted too).
ExtraDistance = ExtraDistanceFn | Sequence[tuple[np.ndarray, float]] | tuple[np.ndarray, float]

# Scratch bounds of the chunked stages: rows per chunk (a (rows, q+g) bool membership mask is 32 MiB at
# CityFlow scale) and elements per chunk of gathered sparse entries.
_CHUNK_ROWS = 1024
_CHUNK_ELEMENTS = 1 << 26
# Neighbour-list entries kept beyond the ones the algorithm reads (see the tie check in k_reciprocal_rerank).
_MARGIN = 8


def k_reciprocal_rerank(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    extra_distance: ExtraDistance | None = None,
    block: int = 2048,
    dtype: DTypeLike = np.float32,
    device: str | None = None,
) -> np.ndarray:
    """Re-ranked (q, g) float32 distances d* (Eq. 12) between ``query_features`` (q, d) and ``gallery_features`` (g, d).

    Computes what the reference code (Luo Hao's ``re_ranking(probFea, galFea, k1, k2, lambda_value)``) computes:

    1. Original distance over all N = q+g images (query first): d(i, j) = |x_i|² + |x_j|² - 2 x_i·x_j, the SQUARED
       Euclidean distance (= 2 - 2 cos for L2-normalised features; normalising is the caller's job), plus the
       ``extra_distance`` term (below). Cancellation negatives of each squared term are clamped to 0 and its
       self-distance is exactly 0, as in exact arithmetic; the matrix is exactly symmetric by construction.
    2. Normalisation as the reference does it: ``np.transpose(D / np.max(D, axis=0))``, i.e. every COLUMN j is divided
       by its maximum over all rows and then the matrix is transposed; as D is symmetric, row i of the result is
       d(i, ·) / max_k d(i, k). Every max must be > 0.
    3. ``initial_rank`` = each row's ascending order. Ties are broken by the lower index (a stable sort; the
       reference's unstable ``np.argsort`` leaves them unspecified).
    4. N(i, k1) = the first k1+1 of row i (i itself normally first); R(i, k1) = {c in N(i, k1) : i in N(c, k1)}
       (Eq. 2), in rank order. For each candidate c in R(i, k1), R(c, k1h) with k1h = int(np.around(k1 / 2)) (round
       half to even: 25 for k1=50, 2 for k1=5) is added when |R(c, k1h) ∩ R(i, k1)| > 2/3 |R(c, k1h)| (Eq. 3 says
       >=; the code's float test ``count > 2 / 3 * size`` is used); R*(i) = the union.
    5. V[i, j] = exp(-d(i, j)) / sum_{j' in R*(i)} exp(-d(i, j')) for j in R*(i), 0 elsewhere (Eq. 7, normalised to
       sum 1 as the code does).
    6. Local query expansion, for EVERY row (queries and gallery) unless k2 == 1: V[i] <- mean of V[r] over the first
       k2 entries r of initial_rank[i] (i itself normally included) (Eq. 11 with k = k2).
    7. Jaccard distance of query i and gallery image g: 1 - S / (2 - S) with S = sum_k min(V[i, k], V[g, k]) over
       all N columns k (Eq. 8-10; rows of V sum to 1, so sum max = 2 - S).
    8. d* = (1 - lambda_value) * d_J + lambda_value * d / max (Eq. 12), rows = queries, columns = gallery.

    Differences from the reference: V is float32 (the reference stores V, V_qe and d_J in float16), sums run in
    float64, and the distances come from tiled float32 GEMMs, so results agree with a dense float32 implementation to
    ~1e-6 whenever no two distances of a row are within rounding of each other at a neighbour-list boundary.

    ``extra_distance`` adds a term to d BEFORE normalisation and the neighbour search, as VOC-ReID's fused distance
    D = Dv - λ1·Do - λ2·Dc does inside its re-ranking (docs/method.md); the fused matrix is then both the basis of
    the neighbour sets and the original-distance term of Eq. 12. Either

    * ``[(features, weight), ...]``: each ``features`` is (N, d') in the same query-then-gallery order and adds
      ``weight`` times its squared Euclidean distance (clamped, zero self-distance), in list order:
      ``[(orientation, -0.1), (camera, -0.1)]`` gives Dv - 0.1·Do - 0.1·Dc; or
    * a callable ``f(rows, cols) -> (len(rows), len(cols))`` returning the (already weighted) term for those index
      arrays into the q+g order. It must be symmetric, f(a, b) = f(b, a).T: it is called for tiles of the upper
      triangle (mirrored to the lower) and for small scattered blocks. Its values are added as returned, also on
      the diagonal.

    ``block`` is the tile edge (rows and columns per GEMM); ``dtype`` the arithmetic of the distances (float32;
    float64 for checks). Memory never holds an N x N array; see the module docstring.

    ``device``: a torch device ("cuda") to run the neighbour pass and the Jaccard stage on (float32; see
    :mod:`vreid.retrieval.accel`); ``None``, the default, is this numpy implementation.
    """
    start_time = time.perf_counter()
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    query_features = as_feature_matrix(query_features, "query_features", dtype, finite=True)
    gallery_features = as_feature_matrix(gallery_features, "gallery_features", dtype, finite=True)
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(
            f"query and gallery dimensions differ: {query_features.shape[1]} vs {gallery_features.shape[1]}"
        )
    num_query = query_features.shape[0]
    if num_query == 0 or gallery_features.shape[0] == 0:
        raise ValueError("need at least one query and one gallery image")
    feats = np.concatenate([query_features, gallery_features])
    n = feats.shape[0]
    terms, extra_fn = _parse_extra(extra_distance, n, dtype)
    terms.insert(0, (feats, 1.0))
    terms = [(x, np.einsum("ij,ij->i", x, x), w) for x, w in terms]

    half = int(np.around(k1 / 2))
    need = min(max(k1 + 1, half + 1, k2), n)  # longest prefix of initial_rank the algorithm reads
    # a few more: a tie of normalised distances across the boundary (rare, then those rows are recomputed)
    keep = min(need + _MARGIN, n)

    # Pass 1: neighbour lists, row maxima and the raw query x gallery distances, one tile at a time.
    if device is not None:
        from vreid.retrieval import accel

        if dtype != np.float32:
            raise ValueError(f"dtype {dtype} needs the numpy path (device=None); torch devices compute in float32")
        ranks, dists, row_max, raw_qg, exact_rows = accel.rerank_neighbours(terms, extra_fn, n, num_query, keep,
                                                                           device)
    else:
        ranks, dists, row_max, raw_qg = _neighbours(terms, extra_fn, n, num_query, keep, block, dtype)

        def exact_rows(rows: np.ndarray, row_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return _exact_rows(rows, terms, extra_fn, n, keep, block, row_max, dtype)

    if not np.all(row_max > 0):
        raise ValueError("the (fused) original distance has a row whose maximum is <= 0; cannot normalise it")
    dists /= row_max[:, None]
    ranks, dists = _sort_rows(ranks.astype(np.int32), dists)
    if keep < n:
        ties = np.flatnonzero(dists[:, need - 1] == dists[:, keep - 1])
        if ties.size:
            log.info("%d rows have ties at the neighbour-list boundary: recomputing them in full", ties.size)
            ranks[ties], dists[ties] = exact_rows(ties, row_max)
    t_pass1 = time.perf_counter()

    # k-reciprocal sets (Eq. 2) and the expanded sets R* (Eq. 3).
    recip = _reciprocal_mask(ranks[:, : min(k1 + 1, n)])
    recip_half = _reciprocal_mask(ranks[:, : min(half + 1, n)])
    rows, cols = _expanded_sets(ranks[:, : min(k1 + 1, n)], recip, ranks[:, : min(half + 1, n)], recip_half)
    t_sets = time.perf_counter()

    # V (Eq. 7): Gaussian kernel of the normalised original distance over R*(i), normalised per row.
    d = _lookup_distances(rows, cols, ranks, dists, terms, extra_fn, row_max, dtype)
    weight = np.exp(-d).astype(np.float64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    v_data = (weight / np.bincount(rows, weights=weight, minlength=n)[rows]).astype(np.float32)
    v_indices = cols.astype(np.int32)
    del d, weight, rows, cols
    nnz_v = v_data.size
    if k2 != 1:  # local query expansion over the k2 nearest neighbours, every row
        indptr, v_indices, v_data = _query_expansion(indptr, v_indices, v_data, ranks[:, : min(k2, n)])
    t_v = time.perf_counter()

    if device is not None:
        jaccard = accel.jaccard_query_gallery(indptr, v_indices, v_data, num_query, device)
    else:
        jaccard = _jaccard_query_gallery(indptr, v_indices, v_data, num_query)
    raw_qg /= row_max[:num_query, None]  # the reference's original_dist[:query_num, query_num:]
    final = jaccard * np.float32(1 - lambda_value)
    final += raw_qg * np.float32(lambda_value)
    log.debug(
        "re-ranking %d x %d (k1=%d k2=%d lambda=%g): neighbours %.2fs, sets %.2fs, V %.2fs, jaccard %.2fs; "
        "nnz(V)=%d nnz(V_qe)=%d",
        num_query, n - num_query, k1, k2, lambda_value, t_pass1 - start_time, t_sets - t_pass1, t_v - t_sets,
        time.perf_counter() - t_v, nnz_v, v_data.size,
    )
    return final


# ----------------------------------------------------------------------------------------------------------------
# inputs


def _parse_extra(
    extra: ExtraDistance | None, n: int, dtype: np.dtype
) -> tuple[list[tuple[np.ndarray, float]], ExtraDistanceFn | None]:
    """Split ``extra_distance`` into (features, weight) terms and an optional callable."""
    if extra is None:
        return [], None
    if callable(extra):
        return [], extra
    if isinstance(extra, tuple) and len(extra) == 2 and np.isscalar(extra[1]):
        extra = [extra]
    terms = []
    for k, item in enumerate(extra):
        try:
            x, w = item
        except (TypeError, ValueError):
            raise ValueError(f"extra_distance[{k}] must be a (features, weight) pair") from None
        x = as_feature_matrix(x, f"extra_distance[{k}] features", dtype, finite=True)
        if x.shape[0] != n:
            raise ValueError(f"extra_distance[{k}] features have {x.shape[0]} rows, expected q+g = {n}")
        terms.append((x, float(w)))
    return terms, None


# ----------------------------------------------------------------------------------------------------------------
# distances


def _row_operand(x: np.ndarray, sq: np.ndarray, w: float, rows: slice) -> np.ndarray:
    """``w * [-2 x_r, 1, |x_r|²]``: the left GEMM operand of a term's rows (see :func:`_fused_block`)."""
    out = np.empty((rows.stop - rows.start, x.shape[1] + 2), dtype=x.dtype)
    np.multiply(x[rows], x.dtype.type(-2 * w), out=out[:, :-2])
    out[:, -2] = w
    np.multiply(sq[rows], x.dtype.type(w), out=out[:, -1])
    return out


def _col_operand(x: np.ndarray, sq: np.ndarray, cols: slice) -> np.ndarray:
    """``[x_c, |x_c|², 1]``: the right GEMM operand of a term's columns."""
    out = np.empty((cols.stop - cols.start, x.shape[1] + 2), dtype=x.dtype)
    out[:, :-2] = x[cols]
    out[:, -2] = sq[cols]
    out[:, -1] = 1
    return out


def _fused_block(
    terms: list[tuple[np.ndarray, np.ndarray, float]],
    extra_fn: ExtraDistanceFn | None,
    rows: slice,
    cols: slice,
    diagonal: bool,
    row_ops: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Raw fused distance block: sum of weight * clamped squared Euclidean terms (+ callable).

    Each term is ONE GEMM of augmented operands, ``w [-2 x_r, 1, |x_r|²] @ [x_c, |x_c|², 1]^T`` =
    ``w (|x_r|² + |x_c|² - 2 x_r·x_c)``: the norms ride along as two extra columns, so no pass over the tile adds
    them, and only the clamp of cancellation negatives (towards 0 from the weight's side) remains. ``row_ops`` are
    the left operands of the terms when the caller reuses them across tiles. ``diagonal``: rows and cols are the
    same range, the self-distances are 0.
    """
    out = None
    for k, (x, sq, w) in enumerate(terms):
        a = row_ops[k] if row_ops is not None else _row_operand(x, sq, w, rows)
        d = a @ _col_operand(x, sq, cols).T
        (np.maximum if w >= 0 else np.minimum)(d, 0, out=d)
        if out is None:
            out = d
        else:
            out += d
    if diagonal:
        np.fill_diagonal(out, 0)
    if extra_fn is not None:
        e = np.asarray(extra_fn(np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop)))
        if e.shape != out.shape:
            raise ValueError(f"extra_distance callable returned shape {e.shape}, expected {out.shape}")
        out += e.astype(out.dtype, copy=False)
    return out


def _mirror_upper(d: np.ndarray, step: int = 256) -> None:
    """Copy the upper triangle of the square ``d`` onto its lower one (in place), panel by panel."""
    m = d.shape[0]
    for i in range(0, m, step):
        sub = d[i : i + step, i : i + step]
        sub[...] = np.triu(sub) + np.triu(sub, 1).T
        for j in range(i + step, m, step):
            d[j : j + step, i : i + step] = d[i : i + step, j : j + step].T


def _tile(terms, extra_fn, n: int, block: int, bi: int, bj: int, row_ops=None) -> np.ndarray:
    """Tile (bi, bj), bi <= bj, of the raw fused distance; diagonal tiles mirrored so the matrix is symmetric."""
    rows = slice(bi * block, min(n, (bi + 1) * block))
    cols = slice(bj * block, min(n, (bj + 1) * block))
    d = _fused_block(terms, extra_fn, rows, cols, diagonal=bi == bj, row_ops=row_ops)
    if bi == bj:
        _mirror_upper(d)
    return d


def _order_keys(values: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """uint64 keys that sort float32 ``values`` ascending and ties by column: the stable-sort order in one integer.

    The float's bits are made monotone (sign bit flipped for values >= 0, all bits for negatives; -0.0 is first
    turned into 0.0, which compares equal to it) and the column fills the low 32 bits.
    """
    bits = (values + np.float32(0)).view(np.uint32)
    bits = bits ^ np.where(bits >> np.uint32(31), np.uint32(0xFFFFFFFF), np.uint32(0x80000000))
    return (bits.astype(np.uint64) << np.uint64(32)) | (cols.astype(np.uint64) & np.uint64(0xFFFFFFFF))


def _first_in_order(vals: np.ndarray, idx: np.ndarray, keep: int) -> np.ndarray:
    """Positions (per row, unordered) of the ``keep`` first entries in (value, index) order."""
    if keep >= vals.shape[1]:
        return np.broadcast_to(np.arange(vals.shape[1]), vals.shape)
    if vals.dtype == np.float32:
        return np.argpartition(_order_keys(vals, idx), keep - 1, axis=1)[:, :keep]
    return np.lexsort((idx, vals), axis=1)[:, :keep]  # float64 (checks): a full sort


class _SmallestLists:
    """The ``keep`` first (value, column) pairs in stable-sort order seen so far in every row, fed tile by tile.

    A row's largest kept value bounds its final keep-th smallest from above (the keep-th smallest of any subset is
    at least that of the whole row), so only tile entries <= it can still enter: one comparison pass and
    ``np.nonzero`` find them and only those few are merged, instead of a partial sort of every tile row. Ties are
    resolved by the column, so the kept set is exactly the first ``keep`` of the row's stable order.
    """

    def __init__(self, n: int, keep: int, dtype: np.dtype):
        self.keep = keep
        self.vals = np.full((n, keep), np.inf, dtype=dtype)
        self.idx = np.full((n, keep), np.iinfo(np.int32).max, dtype=np.int64)
        self.bound = np.full(n, np.inf, dtype=dtype)

    def seed(self, tile: np.ndarray, r0: int, c0: int) -> None:
        """First tile of rows r0.. (their lists are empty): a partial sort of every row."""
        cols = np.broadcast_to(np.arange(c0, c0 + tile.shape[1]), tile.shape)
        sel = _first_in_order(tile, cols, self.keep)
        rows = slice(r0, r0 + tile.shape[0])
        width = sel.shape[1]
        self.vals[rows, :width] = np.take_along_axis(tile, sel, axis=1)
        self.idx[rows, :width] = np.take_along_axis(cols, sel, axis=1)
        self.bound[rows] = self.vals[rows].max(axis=1)

    def offer_rows(self, tile: np.ndarray, r0: int, c0: int) -> None:
        """Entries of ``tile`` (rows r0.., columns c0..) for its rows."""
        rr, cc = np.nonzero(tile <= self.bound[r0 : r0 + tile.shape[0], None])
        self._merge(rr + r0, cc + c0, tile[rr, cc])

    def offer_columns(self, tile: np.ndarray, r0: int, c0: int) -> None:
        """Entries of ``tile`` for the rows its columns stand for (the mirrored tile of a symmetric matrix)."""
        rr, cc = np.nonzero(tile <= self.bound[None, c0 : c0 + tile.shape[1]])
        order = np.argsort(cc, kind="stable")
        rr, cc = rr[order], cc[order]
        self._merge(cc + c0, rr + r0, tile[rr, cc])

    def _merge(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        """Merge candidates (rows sorted) into the lists of their rows."""
        if rows.size == 0:
            return
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
        uniq = rows[starts]
        counts = np.diff(np.append(starts, rows.size))
        keep, width = self.keep, self.keep + int(counts.max())
        all_v = np.full((uniq.size, width), np.inf, dtype=self.vals.dtype)
        all_i = np.full((uniq.size, width), np.iinfo(np.int32).max, dtype=np.int64)
        all_v[:, :keep] = self.vals[uniq]
        all_i[:, :keep] = self.idx[uniq]
        group = np.repeat(np.arange(uniq.size), counts)
        slot = keep + np.arange(rows.size) - np.repeat(starts, counts)
        all_v[group, slot] = values
        all_i[group, slot] = cols
        sel = _first_in_order(all_v, all_i, keep)
        self.vals[uniq] = np.take_along_axis(all_v, sel, axis=1)
        self.idx[uniq] = np.take_along_axis(all_i, sel, axis=1)
        self.bound[uniq] = self.vals[uniq].max(axis=1)


def _neighbours(terms, extra_fn, n: int, num_query: int, keep: int, block: int, dtype: np.dtype):
    """Pass over the upper-triangle tiles: the ``keep`` smallest raw distances per row (unordered), row maxima,
    and the raw query x gallery block. Diagonal tiles go first, so every row has a bound before the others."""
    lists = _SmallestLists(n, keep, dtype)
    row_max = np.full(n, -np.inf, dtype=dtype)
    raw_qg = np.empty((num_query, n - num_query), dtype=np.float32)
    nb = -(-n // block)
    order = [(b, b) for b in range(nb)] + [(bi, bj) for bi in range(nb) for bj in range(bi + 1, nb)]
    row_ops, ops_block = None, -1
    for bi, bj in order:
        r0, r1 = bi * block, min(n, (bi + 1) * block)
        c0, c1 = bj * block, min(n, (bj + 1) * block)
        if ops_block != bi:
            row_ops, ops_block = [_row_operand(x, sq, w, slice(r0, r1)) for x, sq, w in terms], bi
        d = _tile(terms, extra_fn, n, block, bi, bj, row_ops)
        (lists.seed if bi == bj else lists.offer_rows)(d, r0, c0)
        np.maximum(row_max[r0:r1], d.max(axis=1), out=row_max[r0:r1])
        if bj != bi:
            lists.offer_columns(d, r0, c0)
            np.maximum(row_max[c0:c1], d.max(axis=0), out=row_max[c0:c1])
        # query rows x gallery columns (always in tiles with bi <= bj)
        qr1 = min(r1, num_query)
        gc0 = max(c0, num_query)
        if r0 < qr1 and gc0 < c1:
            raw_qg[r0:qr1, gc0 - num_query : c1 - num_query] = d[: qr1 - r0, gc0 - c0 :]
    return lists.idx, lists.vals, row_max, raw_qg


def _sort_rows(ranks: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by (distance, index): the stable-sort order of initial_rank."""
    order = np.lexsort((ranks, dists), axis=1)
    return np.take_along_axis(ranks, order, axis=1), np.take_along_axis(dists, order, axis=1)


def _exact_rows(rows: np.ndarray, terms, extra_fn, n: int, keep: int, block: int, row_max: np.ndarray, dtype):
    """The first ``keep`` entries of initial_rank for ``rows`` from their full rows, recomputed with the very same
    tiles as pass 1 (so the values are bit-identical) and a stable argsort."""
    out_i = np.empty((rows.size, keep), dtype=np.int32)
    out_v = np.empty((rows.size, keep), dtype=dtype)
    nb = -(-n // block)
    for bi in np.unique(rows // block):
        sel = np.flatnonzero(rows // block == bi)
        local = rows[sel] - bi * block
        full = np.empty((sel.size, n), dtype=dtype)
        for bj in range(nb):
            c0, c1 = bj * block, min(n, (bj + 1) * block)
            if bj >= bi:
                full[:, c0:c1] = _tile(terms, extra_fn, n, block, bi, bj)[local]
            else:
                full[:, c0:c1] = _tile(terms, extra_fn, n, block, bj, bi)[:, local].T
        full /= row_max[rows[sel], None]
        order = np.argsort(full, axis=1, kind="stable")[:, :keep]
        out_i[sel] = order
        out_v[sel] = np.take_along_axis(full, order, axis=1)
    return out_i, out_v


def _pair_distances(terms, extra_fn, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Raw fused distance of the pairs (rows[t], cols[t]), rows sorted: row-wise dot products for the feature
    terms (a gather, no GEMM over unrelated pairs); the callable is asked for one small block per 256 rows."""
    out = np.zeros(rows.size, dtype=terms[0][0].dtype)
    step = 8192  # pairs per gather: two (step, d) slabs
    for s in range(0, rows.size, step):
        r, c = rows[s : s + step], cols[s : s + step]
        for x, sq, w in terms:
            d = np.einsum("ij,ij->i", x[r], x[c])
            d *= -2
            d += sq[r]
            d += sq[c]
            np.maximum(d, 0, out=d)
            d[r == c] = 0
            if w != 1.0:
                d *= d.dtype.type(w)
            out[s : s + step] += d
    if extra_fn is not None:
        starts = np.concatenate([[0], np.flatnonzero(np.diff(rows)) + 1, [rows.size]])
        for s in range(0, starts.size - 1, 256):
            a, b = starts[s], starts[min(s + 256, starts.size - 1)]
            r_u, r_inv = np.unique(rows[a:b], return_inverse=True)
            c_u, c_inv = np.unique(cols[a:b], return_inverse=True)
            e = np.asarray(extra_fn(r_u, c_u))
            if e.shape != (r_u.size, c_u.size):
                raise ValueError(f"extra_distance callable returned shape {e.shape}, expected {(r_u.size, c_u.size)}")
            out[a:b] += e[r_inv, c_inv].astype(out.dtype, copy=False)
    return out


def _lookup_distances(rows, cols, ranks, dists, terms, extra_fn, row_max, dtype) -> np.ndarray:
    """Normalised original distance d(rows[t], cols[t]) (rows sorted): from the kept neighbour lists where present,
    else recomputed (expanded sets reach beyond the k1+1 nearest: ~1% of the pairs at k1=50, ~17% at k1=20)."""
    n, keep = ranks.shape
    order = np.argsort(ranks, axis=1)
    keys = (np.arange(n, dtype=np.int64)[:, None] * n + np.take_along_axis(ranks, order, axis=1)).ravel()
    kept = np.take_along_axis(dists, order, axis=1).ravel()
    want = rows.astype(np.int64) * n + cols
    pos = np.minimum(np.searchsorted(keys, want), keys.size - 1)
    hit = keys[pos] == want
    out = np.where(hit, kept[pos], 0).astype(dtype)
    miss = np.flatnonzero(~hit)
    log.debug("expanded-set distances: %d of %d outside the kept neighbour lists", miss.size, want.size)
    if miss.size:
        out[miss] = _pair_distances(terms, extra_fn, rows[miss], cols[miss]) / row_max[rows[miss]]
    return out


# ----------------------------------------------------------------------------------------------------------------
# k-reciprocal sets


def _reciprocal_mask(lists: np.ndarray) -> np.ndarray:
    """mask[i, t] = i is among the neighbours of lists[i, t] (Eq. 2): R(i, k) = lists[i][mask[i]], in rank order."""
    n, m = lists.shape
    out = np.empty((n, m), dtype=bool)
    chunk = max(1, min(_CHUNK_ROWS, _CHUNK_ELEMENTS // (8 * m * m)))
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        back = lists[lists[s:e]]  # (b, m, m): the neighbour lists of each neighbour
        out[s:e] = (back == np.arange(s, e)[:, None, None]).any(axis=2)
    return out


def _expanded_sets(
    lists: np.ndarray, recip: np.ndarray, lists_half: np.ndarray, recip_half: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """R*(i) for every i (Eq. 3) as sorted (row, column) coordinates, row-major."""
    n = lists.shape[0]
    size_half = recip_half.sum(axis=1)
    threshold = 2 / 3 * size_half  # the reference's float test: |intersection| > 2 / 3 * |R(c, k1/2)|
    chunk = max(1, min(n, _CHUNK_ROWS, _CHUNK_ELEMENTS // n))
    member = np.zeros((chunk, n), dtype=bool)
    out_r, out_c = [], []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        li, lt = np.nonzero(recip[s:e])
        cand = lists[s:e][li, lt]  # R(i, k1) members, in rank order per row
        member[li, cand] = True
        h_lists = lists_half[cand]  # (P, k1h+1)
        h_mask = recip_half[cand]
        inter = (member[li[:, None], h_lists] & h_mask).sum(axis=1)
        accept = inter > threshold[cand]
        add = h_mask & accept[:, None]
        member[np.broadcast_to(li[:, None], add.shape)[add], h_lists[add]] = True
        r, c = np.nonzero(member[: e - s])
        member[r, c] = False
        out_r.append(r + s)
        out_c.append(c)
    return np.concatenate(out_r), np.concatenate(out_c)


# ----------------------------------------------------------------------------------------------------------------
# sparse V


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + l) for each (s, l)."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if ends.size else 0) + np.repeat(starts - (ends - lengths), lengths)


def _query_expansion(indptr, indices, data, neighbours: np.ndarray):
    """CSR of V_qe[i] = mean of V[r] over r in neighbours[i] (Eq. 11): sums per (row, column), divided by k2."""
    n, k2 = neighbours.shape
    row_nnz = np.diff(indptr)
    per_row = max(1, int(row_nnz.mean() * k2))
    chunk = max(1, min(n, _CHUNK_ROWS, _CHUNK_ELEMENTS // (8 * per_row)))
    out_ptr = np.zeros(n + 1, dtype=np.int64)
    out_i, out_d = [], []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        nb = neighbours[s:e].ravel()
        lengths = row_nnz[nb]
        pos = _ranges(indptr[nb], lengths)
        local = np.repeat(np.repeat(np.arange(e - s, dtype=np.int64), k2), lengths)
        keys = local * n + indices[pos]
        order = np.argsort(keys, kind="stable")  # k2 sorted runs per row: timsort merges them
        keys = keys[order]
        first = np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1])
        sums = np.add.reduceat(data[pos][order].astype(np.float64), first)
        ukeys = keys[first]
        out_i.append((ukeys % n).astype(np.int32))
        out_d.append((sums / k2).astype(np.float32))
        out_ptr[s + 1 : e + 1] = np.bincount(ukeys // n, minlength=e - s)
    np.cumsum(out_ptr, out=out_ptr)
    return out_ptr, np.concatenate(out_i), np.concatenate(out_d)


def _jaccard_query_gallery(indptr, indices, data, num_query: int) -> np.ndarray:
    """d_J(i, g) = 1 - S / (2 - S), S = sum_k min(V[i, k], V[g, k]) (Eq. 8-10), for query rows x gallery rows,
    by an inverted index (CSC of the gallery rows) over the nonzeros of each query row."""
    n = indptr.size - 1
    num_gallery = n - num_query
    g_start = indptr[num_query]
    g_cols = indices[g_start:]
    g_rows = np.repeat(np.arange(num_gallery, dtype=np.int32), np.diff(indptr[num_query:]))
    order = np.argsort(g_cols, kind="stable")
    csc_rows, csc_vals = g_rows[order], data[g_start:][order]
    del g_rows, order
    colptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(g_cols, minlength=n), out=colptr[1:])
    col_nnz = np.diff(colptr)

    out = np.empty((num_query, num_gallery), dtype=np.float32)
    q_nnz = np.diff(indptr[: num_query + 1])
    q_rows = np.repeat(np.arange(num_query), q_nnz)
    work = np.cumsum(np.bincount(q_rows, weights=col_nnz[indices[:g_start]], minlength=num_query))
    budget = _CHUNK_ELEMENTS // 16  # gathered (query, gallery) triples per chunk
    max_rows = max(1, min(_CHUNK_ROWS, _CHUNK_ELEMENTS // (8 * num_gallery)))  # rows of the float64 accumulator
    s = 0
    while s < num_query:
        done = work[s - 1] if s else 0.0
        e = min(max(s + 1, int(np.searchsorted(work, done + budget, side="right"))), s + max_rows)
        a, b = indptr[s], indptr[e]
        k = indices[a:b]
        lengths = col_nnz[k]
        pos = _ranges(colptr[k], lengths)
        local = np.repeat(np.repeat(np.arange(e - s, dtype=np.int64), q_nnz[s:e]), lengths)
        mins = np.minimum(np.repeat(data[a:b], lengths), csc_vals[pos]).astype(np.float64)
        acc = np.bincount(local * num_gallery + csc_rows[pos], weights=mins, minlength=(e - s) * num_gallery)
        acc = acc.reshape(e - s, num_gallery)
        out[s:e] = 1 - acc / (2 - acc)
        s = e
    return out
