"""Re-ranking, evaluation and gallery search on a torch device (CUDA) against the numpy path.

Usage: python benchmarks/retrieval_device.py [--device cuda] [--size 1103x31238] [--check-size 1000x10000]

At ``--size`` (default CityFlowV2 test scale; 2048-d clustered unit features as in benchmarks/rerank.py, 30 images
per identity; k1 50, k2 15, lambda 0.5) it times on ``--device``: plain re-ranking, re-ranking fused with two
further 2048-d sets (Dv - 0.1 Do - 0.1 Dc), the evaluation (mAP/CMC) of the result and an exact top-100 search of
the queries in the gallery. At ``--check-size`` it runs re-ranking and evaluation with numpy as well and prints
the largest difference (the torch path must equal numpy to 1e-5). Targets (issue): re-ranking <= 3 s, with the
fusion <= 6 s on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rerank import clustered_features  # noqa: E402

from vreid.deploy.index import GalleryIndex  # noqa: E402
from vreid.retrieval import evaluate, k_reciprocal_rerank  # noqa: E402

K1, K2, LAMBDA = 50, 15, 0.5


def problem(q: int, g: int, dim: int, fused: bool, seed: int = 0):
    """Query/gallery features, their ids and cameras, and the fusion terms (or None)."""
    perm = np.random.default_rng(seed + 1).permutation(q + g)
    feats, ids = clustered_features(q + g, dim, 30, seed, return_ids=True)
    feats, ids = feats[perm], ids[perm]
    cams = np.random.default_rng(seed + 4).integers(0, 40, q + g)
    extra = None
    if fused:
        extra = [(clustered_features(q + g, dim, (q + g) // 36, seed + 2)[perm], -0.1),
                 (clustered_features(q + g, dim, (q + g) // 20, seed + 3)[perm], -0.1)]
    return feats[:q], feats[q:], ids[:q], ids[q:], cams[:q], cams[q:], extra


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="1103x31238")
    parser.add_argument("--check-size", default="1000x10000", help="'' skips the comparison with numpy")
    parser.add_argument("--dim", type=int, default=2048)
    args = parser.parse_args()
    dev = args.device
    q, g = (int(v) for v in args.size.lower().split("x"))
    qf, gf, qid, gid, qcam, gcam, extra = problem(q, g, args.dim, fused=True)
    k_reciprocal_rerank(qf[:50], gf[:500], K1, K2, LAMBDA, device=dev)  # warm-up (CUDA context, kernels)
    print(f"device {dev}, {q:,} x {g:,}, {args.dim}-d, k1 {K1} k2 {K2} lambda {LAMBDA}")
    dist, t_plain = timed(k_reciprocal_rerank, qf, gf, K1, K2, LAMBDA, device=dev)
    print(f"re-ranking: {t_plain:.2f} s")
    _, t_fused = timed(k_reciprocal_rerank, qf, gf, K1, K2, LAMBDA, extra_distance=extra, device=dev)
    print(f"re-ranking fused (Dv - 0.1 Do - 0.1 Dc): {t_fused:.2f} s")
    metrics, t_eval = timed(evaluate, dist, qid, gid, qcam, gcam, device=dev)
    print(f"evaluation: {t_eval:.2f} s (mAP {metrics['mAP']:.4f})")
    index = GalleryIndex(gf.shape[1], engine="numpy")
    index.add(np.arange(g), gf)
    _, t_search = timed(index.search, qf, 100, device=dev)
    print(f"exact top-100 search of {q:,} queries in {g:,}: {t_search:.2f} s")
    if args.check_size:
        q, g = (int(v) for v in args.check_size.lower().split("x"))
        qf, gf, qid, gid, qcam, gcam, extra = problem(q, g, args.dim, fused=True, seed=5)
        for name, ex in (("plain", None), ("fused", extra)):
            on_dev, t_dev = timed(k_reciprocal_rerank, qf, gf, K1, K2, LAMBDA, extra_distance=ex, device=dev)
            ref, t_np = timed(k_reciprocal_rerank, qf, gf, K1, K2, LAMBDA, extra_distance=ex)
            print(f"check {q:,} x {g:,} {name}: max |torch - numpy| {np.abs(on_dev - ref).max():.1e} "
                  f"({t_dev:.2f} s on {dev}, {t_np:.2f} s numpy)")
        a = evaluate(ref, qid, gid, qcam, gcam, device=dev)
        b = evaluate(ref, qid, gid, qcam, gcam)
        print(f"check evaluation: |mAP difference| {abs(a['mAP'] - b['mAP']):.1e}, CMC equal "
              f"{bool(np.array_equal(a['cmc'], b['cmc']))}")


if __name__ == "__main__":
    main()
