"""Per-camera feature normalisation (TEST.CAMERA_NORM) at the CityFlowV2 test scale: time and memory.

Usage: python benchmarks/camera_norm.py [--queries 1103] [--gallery 31238] [--dim 2048] [--cameras 6] [--repeat 3]

Prints the median wall time of vreid.retrieval.camera_normalize_pair for ``center`` and ``standardize`` and the
peak memory it allocates beyond its float32 inputs (tracemalloc sees numpy buffers): two float32 copies of the
features (query and gallery joined, and the output) plus a few of one camera's rows in float64; no float64 copy
of the whole set unless a camera has fewer than MIN_IMAGES images (then the pooled statistics need one).
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np

from vreid.retrieval import camera_normalize_pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1103)
    parser.add_argument("--gallery", type=int, default=31238)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    query = rng.random((args.queries, args.dim), dtype=np.float32)
    gallery = rng.random((args.gallery, args.dim), dtype=np.float32)
    query_cams = rng.integers(0, args.cameras, args.queries).astype(str)
    gallery_cams = rng.integers(0, args.cameras, args.gallery).astype(str)
    inputs_mib = (query.nbytes + gallery.nbytes) / 2**20
    print(f"{args.queries} x {args.gallery}, {args.dim}-d, {args.cameras} cameras; "
          f"inputs {inputs_mib:.0f} MiB (float32)")
    for mode in ("center", "standardize"):
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            camera_normalize_pair(query, gallery, query_cams, gallery_cams, mode)
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        camera_normalize_pair(query, gallery, query_cams, gallery_cams, mode)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"{mode:12s} median {statistics.median(times):.2f} s, peak allocation {peak:.0f} MiB")


if __name__ == "__main__":
    main()
