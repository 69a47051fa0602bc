"""Gallery search at scale: build time, queries/s and recall@10 of each index kind against exact search.

Usage: python benchmarks/index_search.py [--gallery 200000] [--dim 512] [--queries 500] [--threads 2]
           [--kinds exact,ivf,hnsw]

The gallery imitates ReID embeddings: unit vectors drawn around --gallery / 8 identity centres (8 images per
vehicle, spread 0.35), queries are fresh draws around random centres. Recall@10 = the share of the exact top-10
(numpy brute force, computed independently here) that each index returns in its top 10.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from vreid.deploy.index import GalleryIndex


def embeddings(n: int, centres: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, centres.shape[1])).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gallery", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", default="exact,ivf,hnsw", help="comma-separated index kinds to measure")
    args = ap.parse_args()
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        faiss = None
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(max(args.gallery // 8, 1), args.dim)).astype(np.float32) / np.sqrt(args.dim)
    gallery = embeddings(args.gallery, centres, rng, 0.35 / np.sqrt(args.dim)).astype(np.float32)
    queries = embeddings(args.queries, centres, rng, 0.35 / np.sqrt(args.dim)).astype(np.float32)
    exact = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]

    configs = [("exact", "numpy", {})]
    if faiss is not None:
        configs += [("exact", "faiss", {}), ("ivf", "faiss", {"nprobe": 16}), ("ivf", "faiss", {"nprobe": 64}),
                    ("hnsw", "faiss", {"ef_search": 64}), ("hnsw", "faiss", {"ef_search": 256})]
    print(f"gallery {args.gallery} x {args.dim}, {args.queries} queries, {args.threads} threads"
          f"{'' if faiss else ' (FAISS not installed)'}")
    print("| kind | engine | settings | build s | queries/s | recall@10 |\n|---|---|---|---|---|---|")
    for kind, engine, options in [c for c in configs if c[0] in args.kinds.split(",")]:
        start = time.perf_counter()
        index = GalleryIndex(args.dim, kind=kind, engine=engine, **options)
        index.add(np.arange(args.gallery), gallery)
        index.search(queries[:1], 10)  # FAISS structures are built at the first search
        build = time.perf_counter() - start
        index.search(queries[:5], 10)  # warm-up
        start = time.perf_counter()
        hits = index.search(queries, 10)
        qps = len(queries) / (time.perf_counter() - start)
        recall = np.mean([len({h.id for h in row} & set(exact[i].tolist())) / 10 for i, row in enumerate(hits)])
        shown = {**options, **({"nlist": index.trained_nlist} if kind == "ivf" else {})}
        settings = ", ".join(f"{k} {v}" for k, v in shown.items()) or "-"
        print(f"| {kind} | {engine} | {settings} | {build:.1f} | {qps:.0f} | {recall:.3f} |", flush=True)


if __name__ == "__main__":
    main()
