"""Load test of `vreid serve` on loopback: requests/s and latency percentiles of POST /search.

Usage: python benchmarks/serve_load.py [--requests 200] [--concurrency 4] [--backbone resnet18] [--size 128]
           [--gallery-ids 100] [--onnx] [--work /tmp/vreid_serve_load]

Builds everything it needs: a synthetic city (`vreid synth`), a randomly initialised model of --backbone
(speed does not depend on the weight values), its gallery index (`vreid extract --images`, `vreid index build`),
optionally the ONNX export (--onnx: the service then runs ONNX Runtime), and starts `vreid serve` as a separate
process on 127.0.0.1. Then --concurrency client threads send --requests POST /search requests in total (each a
real query image of the city, JPEG) and the script reports throughput, latency percentiles and any non-200
answers. A bounded number of requests, loopback only.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def vreid(*args: str) -> None:
    exe = Path(sys.executable).with_name("vreid")
    subprocess.run([str(exe) if exe.is_file() else "vreid", *args], check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--gallery-ids", type=int, default=100, help="city identities (the gallery is their test part)")
    ap.add_argument("--onnx", action="store_true", help="serve the ONNX export with ONNX Runtime")
    ap.add_argument("--threads", type=int, default=2, help="TEST.THREADS of the service")
    ap.add_argument("--work", default="/tmp/vreid_serve_load")
    ap.add_argument("--start-timeout", type=float, default=120, help="seconds the service may take to start")
    args = ap.parse_args()
    import httpx
    import torch

    from vreid.config import load_config
    from vreid.models import build_model

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    city = work / "city"
    vreid("synth", "--out", str(city), "--ids", str(args.gallery_ids), "--cameras", "4", "--seed", "0",
          "--workers", "2")
    opts = ["MODEL.BACKBONE", args.backbone, "INPUT.SIZE_TEST", f"({args.size}, {args.size})", "SOLVER.AMP", "off",
            "TEST.THREADS", str(args.threads)]
    torch.manual_seed(0)
    torch.save(build_model(load_config(None, opts), 0).state_dict(), work / "model.pth")
    weight = work / "model.pth"
    (work / "model.yml").write_text(load_config(None, [*opts, "TEST.WEIGHT", str(weight)]).dump())
    if args.onnx:
        weight = work / "model.onnx"
        vreid("export", "--config-file", str(work / "model.yml"), "--images", str(city / "AIC21_Track2_ReID" /
              "image_query"), str(weight))
    gallery_dir = city / "AIC21_Track2_ReID" / "image_test"
    vreid("extract", "--images", str(gallery_dir), "--config-file", str(work / "model.yml"), "TEST.WEIGHT",
          str(weight), "OUTPUT_DIR", str(work / "features"))
    vreid("index", "build", "--features", str(work / "features" / "gallery.npz"), str(work / "index"))
    queries = sorted((city / "AIC21_Track2_ReID" / "image_query").glob("*.jpg"))
    payloads = [q.read_bytes() for q in queries]

    port = free_port()
    exe = Path(sys.executable).with_name("vreid")
    server = subprocess.Popen([str(exe) if exe.is_file() else "vreid", "serve", "--index", str(work / "index"),
                               "--port", str(port), "--read-only", "--config-file", str(work / "model.yml"),
                               "TEST.WEIGHT", str(weight)], cwd=REPO, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + args.start_timeout
        while True:
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                break
            except httpx.HTTPError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("the service did not start")
                time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=60) as warm:  # first requests pay one-off costs
            for p in payloads[:3]:
                warm.post("/search", files={"image": ("q.jpg", p, "image/jpeg")})

        latencies: list[float] = []
        statuses: list[int] = []
        lock = threading.Lock()
        counter = iter(range(args.requests))

        def worker() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                for i in counter:  # shared iterator: the total stays bounded
                    start = time.perf_counter()
                    r = client.post("/search", files={"image": ("q.jpg", payloads[i % len(payloads)], "image/jpeg")},
                                    params={"top_k": 20})
                    with lock:
                        latencies.append(time.perf_counter() - start)
                        statuses.append(r.status_code)

        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)

    ms = np.array(latencies) * 1000
    errors = sum(s != 200 for s in statuses)
    backend = "onnxruntime" if args.onnx else "torch"
    print(f"{args.backbone} {args.size}x{args.size} ({backend}, {args.threads} threads), gallery {health['images']} "
          f"images, {args.requests} requests, concurrency {args.concurrency}")
    print(f"| backend | requests/s | p50 ms | p90 ms | p99 ms | errors |\n|---|---|---|---|---|---|\n"
          f"| {backend} | {len(ms) / seconds:.1f} | {np.percentile(ms, 50):.0f} | {np.percentile(ms, 90):.0f} | "
          f"{np.percentile(ms, 99):.0f} | {errors} |")


if __name__ == "__main__":
    main()
