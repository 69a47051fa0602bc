"""In-memory gallery search: unit embeddings with their ids, searched exactly or approximately, with filters.

This is the search structure only; a gallery's store of record (its database: see :mod:`vreid.deploy.store`)
feeds it row by row as changes are committed. Scores are cosine similarities (inner products of unit vectors):
higher is more similar.

Kinds: ``exact`` (brute force; numpy or FAISS flat), ``ivf`` (FAISS inverted lists: ``nlist`` k-means cells,
``nprobe`` searched) and ``hnsw`` (FAISS graph, ``hnsw_m`` links, ``ef_search``) for galleries of millions.
Without FAISS every kind falls back to the exact numpy search (slower, never less accurate); an IVF index whose
gallery is too small to train its lists searches exactly with FAISS until it is large enough.

Adding and removing never rebuilds the whole index: rows are appended to arrays that grow geometrically (an add
costs its own size, amortised), removed rows are tombstoned and hidden from the FAISS structure, and both are
compacted once tombstones exceed a tenth of the gallery. Filtered searches (camera, track, capture-time window)
are exact over the rows that pass the filter.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from vreid.errors import VreidError
from vreid.features import check_feature_matrix
from vreid.retrieval.distance import smallest_k

log = logging.getLogger(__name__)

KINDS = ("exact", "ivf", "hnsw")
ENGINES = ("auto", "numpy", "faiss")
REBUILD_FRACTION = 0.1  # compact arrays / rebuild FAISS once tombstones exceed this share of the gallery
NUMPY_BLOCK_BYTES = 256 * 2**20  # numpy search: scores of a block of queries against the whole gallery
GROWTH = 1.25  # arrays grow by this factor (and at least MIN_GROWTH rows): amortised O(1) appends
MIN_GROWTH = 1024
SUBSET_FRACTION = 0.25  # a filter passing fewer rows than this share: score only those rows


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every CPU variant it tries
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class Match(NamedTuple):
    """One search result of the in-memory index: the gallery id and its cosine similarity."""

    id: int
    score: float


@dataclass(frozen=True)
class SearchFilter:
    """Which gallery rows a search may return: empty tuples and None bounds mean "any". A time bound keeps only
    rows with a capture time inside the closed window [time_from, time_to] (seconds since the epoch)."""

    cameras: tuple[str, ...] = ()
    tracks: tuple[str, ...] = ()
    time_from: float | None = None
    time_to: float | None = None

    def __post_init__(self) -> None:
        if self.time_from is not None and self.time_to is not None and self.time_from > self.time_to:
            raise VreidError(f"search filter: the time window ends ({self.time_to}) before it starts "
                             f"({self.time_from})")

    @property
    def empty(self) -> bool:
        return not self.cameras and not self.tracks and self.time_from is None and self.time_to is None

    def to_dict(self) -> dict[str, Any]:
        return {"cameras": list(self.cameras), "tracks": list(self.tracks), "time_from": self.time_from,
                "time_to": self.time_to}


def unit_rows(features: np.ndarray, what: str) -> np.ndarray:
    """Float32 rows scaled to unit length; a clear error for a non-matrix or non-finite values."""
    features = check_feature_matrix(features, what)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.ascontiguousarray(features / np.maximum(norms, 1e-12), dtype=np.float32)


def search_queries(queries: np.ndarray, dim: int, top_k: int) -> np.ndarray:
    """Queries as unit rows of the gallery's dimension, and a valid ``top_k``, or a clear error."""
    queries = unit_rows(queries, "search")
    if queries.shape[1] != dim:
        raise VreidError(f"search: queries have {queries.shape[1]} dimensions, the gallery {dim}")
    if top_k < 1:
        raise VreidError(f"search: top_k must be >= 1, got {top_k}")
    return queries


class _Codes:
    """Strings as small integer codes (cameras, tracks: few distinct values), so a filter is an ``isin``."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.lookup: dict[str, int] = {}

    def encode(self, values: Iterable[str]) -> np.ndarray:
        out = []
        for v in values:
            code = self.lookup.get(v)
            if code is None:
                code = self.lookup[v] = len(self.values)
                self.values.append(v)
            out.append(code)
        return np.asarray(out, dtype=np.int32)

    def known(self, values: Iterable[str]) -> np.ndarray:
        return np.asarray([self.lookup[v] for v in values if v in self.lookup], dtype=np.int32)


#: The search settings of a new gallery when none are given (`vreid index build` and every store).
DEFAULT_OPTIONS: dict[str, Any] = {"kind": "exact", "engine": "auto", "nlist": 0, "nprobe": 16, "hnsw_m": 32,
                                   "ef_search": 128}


def index_options(**given: Any) -> dict[str, Any]:
    """:data:`DEFAULT_OPTIONS` with ``given`` over them; unknown names are an error."""
    unknown = set(given) - set(DEFAULT_OPTIONS)
    if unknown:
        raise VreidError(f"unknown index option(s) {sorted(unknown)}; known: {', '.join(DEFAULT_OPTIONS)}")
    return {**DEFAULT_OPTIONS, **given}


class GalleryIndex:
    """Gallery embeddings with exact or approximate top-k search and filters; see the module docstring."""

    def __init__(self, dim: int, kind: str = DEFAULT_OPTIONS["kind"], engine: str = DEFAULT_OPTIONS["engine"],
                 nlist: int = DEFAULT_OPTIONS["nlist"], nprobe: int = DEFAULT_OPTIONS["nprobe"],
                 hnsw_m: int = DEFAULT_OPTIONS["hnsw_m"], ef_search: int = DEFAULT_OPTIONS["ef_search"]):
        """``engine``: auto (FAISS when installed), numpy, or faiss (an error without FAISS); ``nlist`` 0 lets
        the IVF list count follow the gallery size at every (re)build."""
        check_options(dim, kind, engine, nlist, nprobe, hnsw_m, ef_search)
        faiss = _faiss()
        if engine == "faiss" and faiss is None:
            raise VreidError("index engine 'faiss' asked for but FAISS is not installed: pip install faiss-cpu")
        self.dim, self.kind, self.nlist, self.nprobe, self.hnsw_m, self.ef_search = dim, kind, nlist, nprobe, \
            hnsw_m, ef_search
        self.engine = "faiss" if faiss is not None and engine != "numpy" else "numpy"
        if self.engine == "numpy" and kind != "exact":
            log.warning("%s: the %s index runs as exact numpy search", "numpy engine chosen" if engine == "numpy"
                        else "FAISS is not installed", kind)
        self.trained_nlist = 0  # IVF lists of the current FAISS index (0: none built)
        self._n = 0  # rows used in the buffers below (alive and tombstoned)
        self._ids = np.zeros(0, np.int64)  # increasing
        self._features = np.zeros((0, dim), np.float32)
        self._alive = np.zeros(0, bool)
        self._camera = np.zeros(0, np.int32)
        self._track = np.zeros(0, np.int32)
        self._time = np.zeros(0, np.float64)  # NaN: capture time unknown
        self._cameras, self._tracks = _Codes(), _Codes()
        self.dead = 0  # tombstoned rows
        self.hidden: set[int] = set()  # removed ids still inside the FAISS structure
        self._index = None  # the FAISS accelerator, built lazily

    # ------------------------------------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return self._n - self.dead

    @property
    def ids(self) -> np.ndarray:
        """Ids of the rows in the gallery, increasing."""
        return self._ids[:self._n][self._alive[:self._n]]

    @property
    def features(self) -> np.ndarray:
        return self._features[:self._n][self._alive[:self._n]]

    def options(self) -> dict[str, Any]:
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search}

    def reserve(self, extra: int, exact: bool = True) -> None:
        """Room for ``extra`` more rows (``exact`` False: at least a growth step, so appends are amortised)."""
        need = self._n + extra
        if need <= len(self._ids):
            return
        size = need if exact else max(need, int(len(self._ids) * GROWTH), len(self._ids) + MIN_GROWTH)

        def grow(a: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full((size, *a.shape[1:]), fill, dtype=a.dtype)
            out[:self._n] = a[:self._n]
            return out

        self._ids, self._features, self._alive = grow(self._ids, 0), grow(self._features, 0), grow(self._alive, False)
        self._camera, self._track, self._time = grow(self._camera, 0), grow(self._track, 0), grow(self._time, np.nan)

    def add(self, ids: Sequence[int] | np.ndarray, features: np.ndarray, camera_ids: Sequence[str] | None = None,
            track_ids: Sequence[str] | None = None, times: Sequence[float | None] | None = None) -> None:
        """Append rows under the given ids, which must be larger than every id seen so far (a store hands them
        out increasing); ``times`` are capture times in seconds since the epoch, None where unknown."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        features = unit_rows(features, "add")
        n = len(features)
        if features.shape[1] != self.dim:
            raise VreidError(f"add: features have {features.shape[1]} dimensions, the index {self.dim}")
        columns = {"ids": ids, "camera_ids": camera_ids, "track_ids": track_ids, "times": times}
        for name, values in columns.items():
            if values is not None and len(values) != n:
                raise VreidError(f"add: {n} features but {len(values)} {name}")
        if n == 0:
            return
        last = self._ids[self._n - 1] if self._n else -1
        if np.any(np.diff(ids) <= 0) or ids[0] <= last:
            raise VreidError(f"add: ids must increase past the last one ({last}); got {ids[:5].tolist()}...")
        self.reserve(n, exact=False)
        rows = slice(self._n, self._n + n)
        self._ids[rows], self._features[rows], self._alive[rows] = ids, features, True
        self._camera[rows] = self._cameras.encode([str(c or "") for c in (camera_ids or [""] * n)])
        self._track[rows] = self._tracks.encode([str(t or "") for t in (track_ids or [""] * n)])
        self._time[rows] = [np.nan if t is None else float(t) for t in (times or [None] * n)]
        self._n += n
        if self._index is not None:
            if self.kind == "ivf" and not self.trained_nlist:
                self._index = None  # searched exactly while too small to train: try IVF again at the next search
            else:
                self._index.add_with_ids(features, ids)

    def contains(self, id_: int) -> bool:
        j = int(np.searchsorted(self._ids[:self._n], id_))
        return j < self._n and int(self._ids[j]) == id_ and bool(self._alive[j])

    def positions(self, ids: Iterable[int]) -> np.ndarray:
        """Row positions of gallery ids; unknown or removed ids are an error naming them."""
        ids = np.unique(np.asarray(list(ids), dtype=np.int64))
        pos = np.searchsorted(self._ids[:self._n], ids)
        found = (pos < self._n) & (self._ids[np.minimum(pos, max(self._n - 1, 0))] == ids) if self._n else \
            np.zeros(len(ids), bool)
        found[found] &= self._alive[pos[found]]
        if not found.all():
            raise VreidError(f"remove: ids not in the gallery: {ids[~found][:10].tolist()}")
        return pos

    def remove(self, ids: Iterable[int]) -> int:
        """Remove rows by id; unknown ids are an error (nothing is removed then)."""
        pos = self.positions(ids)
        self._alive[pos] = False
        self.dead += len(pos)
        if self._index is not None:
            self.hidden.update(self._ids[pos].tolist())
        if self.dead > REBUILD_FRACTION * max(len(self), 1):
            self._compact()
        return len(pos)

    def _compact(self) -> None:
        keep = np.flatnonzero(self._alive[:self._n])
        for name in ("_ids", "_features", "_alive", "_camera", "_track", "_time"):
            setattr(self, name, getattr(self, name)[keep].copy())
        self._n, self.dead, self.hidden, self._index = len(keep), 0, set(), None  # FAISS rebuilt on the next search

    # -------------------------------------------------------------------------------------------------- search
    def mask(self, where: SearchFilter | None) -> np.ndarray:
        """Rows (of the used buffer) that are alive and pass ``where``."""
        ok = self._alive[:self._n].copy()
        if where is None:
            return ok
        if where.cameras:
            ok &= np.isin(self._camera[:self._n], self._cameras.known(where.cameras))
        if where.tracks:
            ok &= np.isin(self._track[:self._n], self._tracks.known(where.tracks))
        with np.errstate(invalid="ignore"):  # NaN (unknown time) compares False: outside any window
            if where.time_from is not None:
                ok &= self._time[:self._n] >= where.time_from
            if where.time_to is not None:
                ok &= self._time[:self._n] <= where.time_to
        return ok

    def _build(self):
        faiss = _faiss()
        n = len(self)
        features, ids = self.features, self.ids
        nlist = self.nlist or max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))  # FAISS wants >= 39 per list
        self.trained_nlist = 0
        if self.kind == "ivf" and n < nlist:
            log.warning("ivf index: %d images cannot train %d lists; searching exactly until there are more", n, nlist)
        if self.kind == "hnsw":
            graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efSearch = self.ef_search
            index = faiss.IndexIDMap2(graph)
        elif self.kind == "ivf" and n >= nlist:
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(features)
            index.nprobe = self.nprobe
            self.trained_nlist = nlist
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if n:
            index.add_with_ids(features, ids)
        self.hidden = set()
        return index

    def _numpy_search(self, queries: np.ndarray, k: int, ok: np.ndarray, device: str | None = None
                      ) -> list[list[Match]]:
        n_ok = int(ok.sum())
        if device is not None:  # torch on ``device``: the rows that pass, in id order (ties: lower id as below)
            from vreid.retrieval.accel import top_k_similar

            rows = np.flatnonzero(ok)
            scores, found = top_k_similar(queries, self._features[rows], k, device)
            ids = self._ids[rows]
            return [[Match(int(ids[j]), float(v)) for v, j in zip(srow, irow, strict=True)]
                    for srow, irow in zip(scores, found, strict=True)]
        subset = n_ok < SUBSET_FRACTION * self._n
        rows = np.flatnonzero(ok) if subset else None
        gallery = self._features[rows] if subset else self._features[:self._n]
        ids = self._ids[rows] if subset else self._ids[:self._n]
        masked = not subset and n_ok < self._n
        out = []
        block = max(1, min(1024, NUMPY_BLOCK_BYTES // (16 * max(len(gallery), 1))))  # scores + argpartition
        for start in range(0, len(queries), block):
            scores = queries[start:start + block] @ gallery.T
            if masked:
                scores[:, ~ok] = -np.inf
            best = smallest_k(-scores, k)  # ties: lower position, i.e. lower id (ids grow with position)
            out += [[Match(int(ids[j]), float(scores[r, j])) for j in row] for r, row in enumerate(best)]
        return out

    def search(self, queries: np.ndarray, top_k: int = 20, where: SearchFilter | None = None,
               device: str | None = None) -> list[list[Match]]:
        """The ``top_k`` most similar gallery rows of every query that pass ``where``, best first (ties: lower id).

        ``device``: a torch device ("cuda") for the exact engine's products and top-k (:mod:`vreid.retrieval.accel`);
        ``None`` (default) computes them with numpy. FAISS kinds ignore it.
        """
        queries = search_queries(queries, self.dim, top_k)
        filtered = where is not None and not where.empty
        ok = self.mask(where) if filtered or self.engine == "numpy" else None
        k = min(top_k, len(self) if ok is None else int(ok.sum()))
        if k == 0:
            return [[] for _ in queries]
        if ok is not None:  # numpy engine, or a filter: exact over the rows that pass
            return self._numpy_search(queries, k, ok, device)
        if self._index is None:
            self._index = self._build()
        fetch = min(k + len(self.hidden), len(self) + len(self.hidden))
        scores, found = self._index.search(queries, fetch)
        return [[Match(int(i), float(s)) for s, i in zip(srow, irow, strict=True) if i >= 0 and int(i) not in
                 self.hidden][:k] for srow, irow in zip(scores, found, strict=True)]


def check_options(dim: int, kind: str, engine: str, nlist: int, nprobe: int, hnsw_m: int, ef_search: int) -> None:
    """Index settings are checked before anything is stored with them."""
    if kind not in KINDS:
        raise VreidError(f"index kind {kind!r}: choose from {', '.join(KINDS)}")
    if engine not in ENGINES:
        raise VreidError(f"index engine {engine!r}: choose from {', '.join(ENGINES)}")
    if dim < 1 or nprobe < 1 or hnsw_m < 2 or ef_search < 1 or nlist < 0:
        raise VreidError("index options: dim, nprobe, ef_search must be >= 1, hnsw_m >= 2, nlist >= 0")
