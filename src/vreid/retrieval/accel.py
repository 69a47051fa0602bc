"""Retrieval on a torch device: the tiled algorithms of the numpy modules, run where a GPU is.

Re-ranking's neighbour pass and Jaccard stage, evaluation's per-query sort and exact gallery search are written
here in torch; the O(N·k) middle of re-ranking (reciprocal sets, V, query expansion) stays shared numpy code, so
both paths compute the same numbers (to float32 rounding of the GEMMs). ``device`` everywhere is a torch device
string; ``None`` means the numpy path. :func:`vreid.retrieval.device.retrieval_device` turns the user's
choice (``auto`` | ``cpu`` | ``cuda``) into that: ``auto`` takes CUDA when it is available, ``cpu`` keeps numpy.
Tests run the torch path on the CPU device against numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

# Distance entries per row block (neighbour pass, evaluation, search) and the Jaccard chunk bound: a few GiB of
# temporaries at most on a GPU (float32 block + int64 keys), tens of MiB on the CPU.
_BLOCK_ELEMENTS = {"cuda": 1 << 26, "cpu": 1 << 22}


def _budget(device: torch.device) -> int:
    return _BLOCK_ELEMENTS["cuda" if device.type == "cuda" else "cpu"]


def order_keys(values: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """int64 keys ordering float32 ``values`` ascending and ties by column (``cols`` < 2^31): a stable sort in one
    integer. -0.0 is folded into 0.0 first, as the two compare equal."""
    bits = (values.float() + 0.0).view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: reverse the magnitude order
    return (bits.to(torch.int64) << 32) | cols.to(torch.int64)


# ----------------------------------------------------------------------------------------------------------------
# re-ranking


def _distance_rows(terms, extra_fn, rows: slice, n: int) -> torch.Tensor:
    """Raw fused distance of ``rows`` to all n columns: per term w (|x_r|² + |x_c|² - 2 x_r·x_c), clamped at 0 from
    the weight's side, summed; the self-distances are 0 (as :func:`vreid.retrieval.rerank._fused_block`)."""
    out = None
    for x, sq, w in terms:
        d = torch.addmm(sq[None, :], x[rows], x.T, alpha=-2.0)
        d += sq[rows, None]
        d.clamp_(min=0)
        if w != 1.0:
            d *= w
        out = d if out is None else out.add_(d)
    local = torch.arange(rows.stop - rows.start, device=out.device)
    out[local, local + rows.start] = 0
    if extra_fn is not None:
        e = np.asarray(extra_fn(np.arange(rows.start, rows.stop), np.arange(n)))
        if e.shape != tuple(out.shape):
            raise ValueError(f"extra_distance callable returned shape {e.shape}, expected {tuple(out.shape)}")
        out += torch.from_numpy(e.astype(np.float32)).to(out.device)
    return out


def _torch_terms(terms, device: torch.device):
    out = []
    for x, _, w in terms:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        out.append((t, (t * t).sum(dim=1), float(w)))
    return out


def rerank_neighbours(terms, extra_fn, n: int, num_query: int, keep: int, device: str):
    """The neighbour pass of k-reciprocal re-ranking on ``device``: per row its first ``keep`` columns in stable
    (raw distance, index) order with their raw distances, row maxima, the raw query x gallery block (numpy), and
    a function recomputing exact rows (the tie fallback)."""
    dev = torch.device(device)
    tt = _torch_terms(terms, dev)
    ranks = np.empty((n, keep), dtype=np.int64)
    dists = np.empty((n, keep), dtype=np.float32)
    row_max = np.empty(n, dtype=np.float32)
    raw_qg = np.empty((num_query, n - num_query), dtype=np.float32)
    step = max(1, _budget(dev) // n)
    cols = torch.arange(n, device=dev)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        d = _distance_rows(tt, extra_fn, slice(r0, r1), n)
        row_max[r0:r1] = d.max(dim=1).values.cpu().numpy()
        keys = torch.topk(order_keys(d, cols.expand_as(d)), keep, dim=1, largest=False, sorted=True).values
        idx = keys & 0xFFFFFFFF
        ranks[r0:r1] = idx.cpu().numpy()
        dists[r0:r1] = torch.gather(d, 1, idx).cpu().numpy()
        if r0 < num_query:
            raw_qg[r0 : min(r1, num_query)] = d[: min(r1, num_query) - r0, num_query:].cpu().numpy()
        del d, keys, idx

    def exact_rows(rows: np.ndarray, row_max_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out_i = np.empty((rows.size, keep), dtype=np.int32)
        out_v = np.empty((rows.size, keep), dtype=np.float32)
        for k, r in enumerate(rows):
            d = _distance_rows(tt, extra_fn, slice(int(r), int(r) + 1), n)[0] / float(row_max_[r])
            order = torch.sort(d + 0.0, stable=True).indices[:keep]
            out_i[k] = order.cpu().numpy()
            out_v[k] = d[order].cpu().numpy()
        return out_i, out_v

    return ranks, dists, row_max, raw_qg, exact_rows


def jaccard_query_gallery(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, num_query: int,
                          device: str) -> np.ndarray:
    """:func:`vreid.retrieval.rerank._jaccard_query_gallery` on ``device``: the same inverted index over the gallery
    rows of V, the same float64 sums of minima, chunked by the number of gathered (query, gallery) triples."""
    dev = torch.device(device)
    n = indptr.size - 1
    num_gallery = n - num_query
    indptr_t = torch.from_numpy(indptr.astype(np.int64)).to(dev)
    indices_t = torch.from_numpy(indices.astype(np.int64)).to(dev)
    data_t = torch.from_numpy(data.astype(np.float32)).to(dev)
    g_start = int(indptr[num_query])
    g_cols = indices_t[g_start:]
    g_rows = torch.repeat_interleave(torch.arange(num_gallery, device=dev), indptr_t[num_query + 1 :] -
                                     indptr_t[num_query:-1])
    order = torch.sort(g_cols, stable=True).indices
    csc_rows, csc_vals = g_rows[order], data_t[g_start:][order]
    col_nnz = torch.bincount(g_cols, minlength=n)
    colptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    colptr[1:] = torch.cumsum(col_nnz, 0)
    q_nnz = np.diff(indptr[: num_query + 1])
    work = np.cumsum(np.bincount(np.repeat(np.arange(num_query), q_nnz),
                                 weights=col_nnz.cpu().numpy()[indices[:g_start]], minlength=num_query))
    budget = _budget(dev) // 4
    max_rows = max(1, _budget(dev) // (2 * max(num_gallery, 1)))
    out = np.empty((num_query, num_gallery), dtype=np.float32)
    s = 0
    while s < num_query:
        done = work[s - 1] if s else 0.0
        e = min(max(s + 1, int(np.searchsorted(work, done + budget, side="right"))), s + max_rows)
        a, b = int(indptr[s]), int(indptr[e])
        k = indices_t[a:b]
        lengths = col_nnz[k]
        total = int(lengths.sum())
        ends = torch.cumsum(lengths, 0)
        pos = torch.arange(total, device=dev) + torch.repeat_interleave(colptr[k] - (ends - lengths), lengths,
                                                                        output_size=total)
        local = torch.repeat_interleave(
            torch.repeat_interleave(torch.arange(e - s, device=dev), torch.from_numpy(q_nnz[s:e]).to(dev)), lengths,
            output_size=total)
        mins = torch.minimum(torch.repeat_interleave(data_t[a:b], lengths, output_size=total), csc_vals[pos])
        acc = torch.zeros((e - s) * num_gallery, dtype=torch.float64, device=dev)
        acc.index_add_(0, local * num_gallery + csc_rows[pos], mins.double())
        acc = acc.view(e - s, num_gallery)
        out[s:e] = (1 - acc / (2 - acc)).float().cpu().numpy()
        s = e
    return out


# ----------------------------------------------------------------------------------------------------------------
# evaluation and search


def true_match_ranks(distmat: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray,
                     cameras: tuple[np.ndarray, np.ndarray] | None, block_rows: int | None,
                     device: str) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """:func:`vreid.retrieval.metrics._true_match_ranks` on ``device``: rows sorted there (stable), only the
    positions of the true matches come back."""
    dev = torch.device(device)
    num_query, num_gallery = distmat.shape
    if block_rows is None:
        block_rows = max(1, _budget(dev) // max(num_gallery, 1))
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    g_ids = torch.from_numpy(gallery_ids.astype(np.int64)).to(dev)
    q_ids = torch.from_numpy(query_ids.astype(np.int64)).to(dev)
    if cameras is not None:
        q_cams = torch.from_numpy(cameras[0].astype(np.int64)).to(dev)
        g_cams = torch.from_numpy(cameras[1].astype(np.int64)).to(dev)
    for start in range(0, num_query, block_rows):
        stop = min(start + block_rows, num_query)
        block = torch.from_numpy(np.ascontiguousarray(distmat[start:stop])).to(dev)
        if block.is_floating_point():
            if torch.isnan(block).any():
                raise ValueError("distmat contains NaN")
            block = block + 0.0  # -0.0 ties with 0.0, as in numpy
        order = torch.sort(block, dim=1, stable=True).indices
        del block
        rows, positions = torch.nonzero(g_ids[order] == q_ids[start:stop, None], as_tuple=True)
        if cameras is not None:
            junk = (g_cams[order[rows, positions]] == q_cams[start + rows]).to(torch.int64)
            junk_before = torch.cumsum(junk, 0) - junk
            row_first = torch.searchsorted(rows, rows, side="left")
            positions = positions - (junk_before - junk_before[row_first])
            keep = junk == 0
            rows, positions = rows[keep], positions[keep]
        del order
        yield start, stop, rows.cpu().numpy(), positions.cpu().numpy()


def top_k_similar(queries: np.ndarray, features: np.ndarray, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search on ``device``: per query the ``k`` highest scores and their gallery positions,
    best first, ties by position (as the numpy engine orders them)."""
    dev = torch.device(device)
    gallery = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(dev)
    scores_out = np.empty((len(queries), k), dtype=np.float32)
    index_out = np.empty((len(queries), k), dtype=np.int64)
    cols = torch.arange(len(features), device=dev)
    block = max(1, _budget(dev) // max(len(features), 1))
    for s in range(0, len(queries), block):
        q = torch.from_numpy(np.ascontiguousarray(queries[s : s + block], dtype=np.float32)).to(dev)
        scores = q @ gallery.T
        keys = torch.topk(order_keys(-scores, cols.expand_as(scores)), k, dim=1, largest=False, sorted=True).values
        idx = keys & 0xFFFFFFFF
        index_out[s : s + len(q)] = idx.cpu().numpy()
        scores_out[s : s + len(q)] = torch.gather(scores, 1, idx).cpu().numpy()
    return scores_out, index_out
