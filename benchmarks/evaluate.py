"""Evaluation speed and memory at 2k, 10k and 32k images (CityFlowV2 test: 1,103 x 31,238).

Usage: python benchmarks/evaluate.py [--sizes 2000,10000,32341] [--ids 440] [--cameras 6] [--repeat 3]
       python benchmarks/evaluate.py --queries 1103 --gallery 31238     (one size)

Each size n is split into queries and gallery in CityFlow's proportion (1,103 : 31,238).

Prints the median wall time of vreid.retrieval.evaluate (VeRi protocol, same-id same-camera junk removed) and of
evaluate_aic (top-100), the peak memory evaluate() allocates beyond its inputs (tracemalloc sees numpy buffers),
and, for a ratio measured on the same machine in the same run, a plain dense implementation: a stable argsort of
each block of rows followed by cumulative sums over full rows (the usual numpy approach). Both must agree.
Distances are random with true matches pulled closer, so metrics are neither 0 nor 1.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import tracemalloc

import numpy as np

from vreid.retrieval import evaluate, evaluate_aic


def make_problem(args: argparse.Namespace) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(args.seed)
    gallery_ids = rng.integers(0, args.ids, args.gallery)
    gallery_cams = rng.integers(0, args.cameras, args.gallery)
    query_ids = rng.choice(np.unique(gallery_ids), args.queries)
    query_cams = rng.integers(0, args.cameras, args.queries)
    distmat = rng.random((args.queries, args.gallery), dtype=np.float32)
    for start in range(0, args.queries, 256):  # pull true matches closer, a block at a time
        rows = slice(start, start + 256)
        same = query_ids[rows, None] == gallery_ids[None, :]
        distmat[rows] -= same * rng.random(same.shape, dtype=np.float32) * np.float32(0.15)
    return distmat, query_ids, gallery_ids, query_cams, gallery_cams


def dense_reference(distmat, query_ids, gallery_ids, query_cams, gallery_cams, block_rows=256) -> float:
    """mAP by full-row stable argsort and cumulative sums: the baseline evaluate() is compared with."""
    aps = []
    for start in range(0, len(distmat), block_rows):
        rows = slice(start, start + block_rows)
        order = np.argsort(distmat[rows], axis=1, kind="stable")
        same_id = gallery_ids[order] == query_ids[rows, None]
        keep = ~(same_id & (gallery_cams[order] == query_cams[rows, None]))
        hits = same_id & keep
        precision = np.cumsum(hits, axis=1) / np.maximum(np.cumsum(keep, axis=1), 1)
        n_hits = hits.sum(axis=1)
        valid = n_hits > 0
        aps.append((precision * hits).sum(axis=1)[valid] / n_hits[valid])
    return float(np.concatenate(aps).mean())


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,10000,32341", help="total images per run, comma-separated")
    parser.add_argument("--queries", type=int, help="one run with this many queries (with --gallery)")
    parser.add_argument("--gallery", type=int)
    parser.add_argument("--ids", type=int, default=440)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-reference", action="store_true", help="do not time the dense baseline")
    args = parser.parse_args()
    if args.queries and args.gallery:
        run(args)
        return
    for n in map(int, args.sizes.split(",")):
        args.queries = max(1, round(n * 1103 / 32341))
        args.gallery = n - args.queries
        run(args)
        print()


def run(args: argparse.Namespace) -> None:
    problem = make_problem(args)
    distmat = problem[0]
    print(f"{args.queries} x {args.gallery} float32 distances ({distmat.nbytes / 2**20:.0f} MiB), "
          f"{args.ids} ids, {args.cameras} cameras")

    seconds, result = timed(lambda: evaluate(*problem), args.repeat)
    print(f"evaluate:        {seconds:.2f} s  mAP {result['mAP']:.4f}  mINP {result['mINP']:.4f}  "
          f"rank-1 {result['rank1']:.4f}  queries {result['num_query']} (skipped {result['num_skipped']})")
    tracemalloc.start()
    evaluate(*problem)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"evaluate peak allocation beyond its inputs: {peak / 2**20:.0f} MiB")

    aic_seconds, aic = timed(lambda: evaluate_aic(*problem[:3], top_k=100), args.repeat)
    print(f"evaluate_aic:    {aic_seconds:.2f} s  rank-100 mAP {aic['mAP']:.4f}  (no camera filtering)")

    if not args.skip_reference:
        ref_seconds, ref_map = timed(lambda: dense_reference(*problem), 1)
        agree = "agrees" if abs(ref_map - result["mAP"]) < 1e-9 else "DISAGREES"
        print(f"dense reference: {ref_seconds:.2f} s  mAP {ref_map:.4f} ({agree}); "
              f"evaluate is {ref_seconds / seconds:.1f}x faster")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
