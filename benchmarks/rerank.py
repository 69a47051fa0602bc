"""Speed and peak memory of k_reciprocal_rerank up to CityFlowV2-test scale (1,103 x 31,238, 2048-d).

Usage: python benchmarks/rerank.py [--sizes 200x2000 1000x10000 1103x31238] [--dim 2048] [--per-id 30]
                                   [--check] [--fused-largest/--no-fused-largest]

Each configuration runs in a fresh child process, so its peak resident set size (``ru_maxrss``, everything numpy
and OpenBLAS allocate, features included) is its own; a sampling thread also records the peak RSS during the call
above the RSS just before it. Features are clustered unit vectors: ``--per-id`` images per identity, each its
identity's random centre plus isotropic noise of the same norm (same-id cosine ~0.5); queries are a random subset.
k1/k2/lambda: 20/6/0.3 (the paper's) at the smaller sizes, 50/15/0.5 (VOC-ReID's, docs/method.md) at all; with the
default flags also the fused distance D = Dv - 0.1·Do - 0.1·Dc with two further 2048-d feature sets at the largest.
``--check`` compares the smallest size with the plain dense implementation of tests/retrieval/test_rerank.py.
Each row also times the floor, the all-pairs float32 product F F^T of the same q+g features in the same process
right after the call (which any exact re-ranking computes at least once), and reports time / floor.
Targets (issues): 1,103 x 31,238, k1=50, k2=15, lambda=0.5 in <= 60 s and <= 4 GiB on the 2-core machine; plain
re-ranking <= 1.25x the floor, with the fusion <= 2.5x and <= 2 GiB; 1,000 x 10,000 (k1 50) <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vreid.retrieval import k_reciprocal_rerank

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.rerank")


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Samples VmRSS every ``interval`` seconds in a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak, self._stop = interval, rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def clustered_features(n: int, dim: int, per_id: int, seed: int, chunk: int = 4096, return_ids: bool = False):
    """(n, dim) float32 unit vectors: identity centre + noise of the same norm, generated a chunk at a time (and
    the identity of each row with ``return_ids``)."""
    rng = np.random.default_rng(seed)
    num_ids = max(1, n // per_id)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = rng.integers(0, num_ids, n)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        noise = rng.standard_normal((e - s, dim), dtype=np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        x = centres[ids[s:e]] + noise
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return (out, ids) if return_ids else out


def floor_seconds(feats: np.ndarray, block: int = 4096) -> float:
    """The floor: the all-pairs float32 product F F^T, which any exact re-ranking computes at least once (all N²
    entries, computed a column block at a time so that the floor itself fits in memory at CityFlow scale)."""
    start = time.perf_counter()
    for s in range(0, len(feats), block):
        product = feats @ feats[s : s + block].T
    seconds = time.perf_counter() - start
    del product
    return seconds


def child(spec: dict) -> dict:
    """Run one configuration in this process and return its measurements."""
    q, g, dim = spec["queries"], spec["gallery"], spec["dim"]
    perm = np.random.default_rng(spec["seed"] + 1).permutation(q + g)
    feats = clustered_features(q + g, dim, spec["per_id"], spec["seed"])[perm]
    extra = None
    if spec["fused"]:  # orientation-like and camera-like features: few clusters, so many near pairs
        extra = [
            (clustered_features(q + g, dim, (q + g) // 36, spec["seed"] + 2)[perm], -0.1),
            (clustered_features(q + g, dim, (q + g) // 20, spec["seed"] + 3)[perm], -0.1),
        ]
    before = rss_bytes()
    with PeakRSS() as sampler:
        start = time.perf_counter()
        dist = k_reciprocal_rerank(feats[:q], feats[q:], spec["k1"], spec["k2"], spec["lambda"], extra_distance=extra)
        seconds = time.perf_counter() - start
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # before the floor's N x N product
    result = {
        "seconds": seconds,
        "floor_seconds": floor_seconds(feats),
        "maxrss_gib": maxrss,
        "rss_before_gib": before / 2**30,
        "call_peak_gib": sampler.peak / 2**30,
        "finite": bool(np.isfinite(dist).all()),
    }
    if spec["check"]:
        sys.path.insert(0, str(ROOT / "tests" / "retrieval"))
        from test_rerank import dense_rerank

        start = time.perf_counter()
        ref = dense_rerank(feats[:q], feats[q:], spec["k1"], spec["k2"], spec["lambda"], extra or ())
        result["dense_seconds"] = time.perf_counter() - start
        result["max_abs_diff"] = float(np.abs(dist - ref).max())
    return result


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["200x2000", "1000x10000", "1103x31238"])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--per-id", type=int, default=30, help="images per identity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare the smallest size with the dense version")
    parser.add_argument("--fused-largest", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    runs = []
    for k, (q, g) in enumerate(sizes):
        largest = k == len(sizes) - 1
        params = [(50, 15, 0.5)] if largest and len(sizes) > 1 else [(20, 6, 0.3), (50, 15, 0.5)]
        runs += [(q, g, *p, False, args.check and k == 0) for p in params]
        if largest and args.fused_largest:
            runs.append((q, g, 50, 15, 0.5, True, False))

    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, dim {args.dim}, {args.per_id} images per id")
    print("| queries x gallery | k1,k2,lambda | fused | time (s) | floor F F^T (s) | x floor | peak RSS (GiB) "
          "| RSS before call | peak during call | load avg (1/5/15 min) before | check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for q, g, k1, k2, lam, fused, check in runs:
        spec = {"queries": q, "gallery": g, "dim": args.dim, "per_id": args.per_id, "seed": args.seed,
                "k1": k1, "k2": k2, "lambda": lam, "fused": fused, "check": check}
        load = load_average()
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode != 0:
            log.error("child failed:\n%s", proc.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        check_txt = f"max abs diff {r['max_abs_diff']:.1e} (dense {r['dense_seconds']:.1f} s)" if check else ""
        print(f"| {q:,} x {g:,} | {k1},{k2},{lam} | {'Dv-0.1Do-0.1Dc' if fused else '-'} | {r['seconds']:.1f} "
              f"| {r['floor_seconds']:.1f} | {r['seconds'] / r['floor_seconds']:.2f} | {r['maxrss_gib']:.2f} "
              f"| {r['rss_before_gib']:.2f} | {r['call_peak_gib']:.2f} | {load} "
              f"| {check_txt} |", flush=True)
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
