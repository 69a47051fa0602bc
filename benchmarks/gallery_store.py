"""Gallery backends at scale: build, single add, single remove, reader catch-up and search, per backend and size.

Usage: python benchmarks/gallery_store.py [--sizes 10000,100000,1000000] [--dim 512] [--backends sqlite,milvus-lite]
           [--work /tmp/vreid_gallery_store] [--adds 50] [--removes 20] [--queries 200]

For every backend and size: a fresh gallery is built in bulk (--chunk rows per transaction), then
- add: --adds single-image adds, each its own committed (fsync'd) transaction, as `vreid serve` does: median/p99;
- remove: --removes single-image removes, the same way;
- open: a new reader (as a restarting `vreid serve`) loads the gallery into memory (SQLite only: Milvus holds it);
- catch-up: after one add by another handle, the reader applies it from the change log (SQLite; with Milvus
  there is nothing to apply: the server searches what it holds);
- search: --queries single-query searches through the gallery interface (top 20, with metadata), queries/s,
  and the same queries as one batch; a camera-filtered search (a quarter of the gallery passes).
Vectors are random unit vectors (speed does not depend on their values). Files go under --work, removed after.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from vreid.deploy.index import SearchFilter
from vreid.deploy.store import Sighting, create_gallery, open_gallery


def rows(rng: np.random.Generator, start: int, n: int, dim: int) -> tuple[np.ndarray, list[Sighting]]:
    feats = rng.standard_normal((n, dim), dtype=np.float32)
    return feats, [Sighting(f"cam{i % 4}/{i:08d}.jpg", f"{i // 8}", f"c{i % 4}", f"t{i // 40}",
                            1.7e9 + i) for i in range(start, start + n)]


def ms(seconds: list[float]) -> str:
    a = np.array(seconds) * 1000
    return f"{np.median(a):.1f} / {np.percentile(a, 99):.1f}"


def run(backend: str, size: int, args: argparse.Namespace) -> str:
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # a file per size: Milvus Lite keeps serving a file it opened for the rest of the process
    uri = f"sqlite://{work}/g{size}.db" if backend == "sqlite" else f"milvus-lite://{work}/m{size}.db"
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with create_gallery(uri, args.dim, engine="numpy" if backend == "sqlite" else "auto") as gallery:
        for first in range(0, size, args.chunk):
            gallery.add(*rows(rng, first, min(args.chunk, size - first), args.dim))
    build = time.perf_counter() - start
    disk = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 2**20

    start = time.perf_counter()
    reader = open_gallery(uri)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    reader.search(queries[:1], 20)
    opened = time.perf_counter() - start

    writer = open_gallery(uri)
    adds, removes, catch = [], [], []
    for i in range(args.adds):
        feats, sightings = rows(rng, size + i, 1, args.dim)
        t = time.perf_counter()
        writer.add(feats, sightings)
        adds.append(time.perf_counter() - t)
        if i < 10 and backend == "sqlite":  # the reader applies the new row from the change log
            t = time.perf_counter()
            reader.refresh()
            catch.append(time.perf_counter() - t)
    victims = rng.choice(size, args.removes, replace=False) + 1 if backend == "sqlite" else \
        next(iter(writer.batches(args.removes))).ids
    for v in victims:
        t = time.perf_counter()
        writer.remove([int(v)])
        removes.append(time.perf_counter() - t)
    reader.search(queries[:1], 20)

    t = time.perf_counter()
    for q in queries:
        reader.search(q[None], 20)
    single = args.queries / (time.perf_counter() - t)
    t = time.perf_counter()
    reader.search(queries, 20)
    batch = args.queries / (time.perf_counter() - t)
    t = time.perf_counter()
    for q in queries[:50]:
        reader.search(q[None], 20, SearchFilter(cameras=("c1",)))
    filtered = len(queries[:50]) / (time.perf_counter() - t)
    reader.close()
    writer.close()
    shutil.rmtree(work, ignore_errors=True)
    return (f"| {backend} | {size:,} | {build:.1f} | {disk:.0f} | {ms(adds)} | {ms(removes)} | "
            f"{opened:.1f} | {ms(catch[1:]) if catch else '-'} | {rate(single)} | {rate(batch)} | {rate(filtered)} |")


def rate(per_s: float) -> str:
    return f"{per_s:.0f}" if per_s >= 10 else f"{per_s:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--backends", default="sqlite,milvus-lite")
    ap.add_argument("--chunk", type=int, default=50_000, help="rows per transaction while building")
    ap.add_argument("--adds", type=int, default=50)
    ap.add_argument("--removes", type=int, default=20)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--work", default="/tmp/vreid_gallery_store")
    args = ap.parse_args()
    print(f"{args.dim}-d, single add/remove = one committed transaction each; times median / p99")
    print("| backend | images | build s | disk MiB | add ms | remove ms | open s | catch-up ms | search q/s | "
          "batched q/s | camera-filtered q/s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        for size in map(int, args.sizes.split(",")):
            print(run(backend, size, args), flush=True)


if __name__ == "__main__":
    main()
