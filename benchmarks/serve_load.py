"""Load test of `vreid serve` on loopback: requests/s and latency percentiles of POST /search.

Usage: python benchmarks/serve_load.py [--requests 200] [--concurrency 4] [--backbone resnet18] [--size 128]
           [--gallery-ids 100] [--onnx] [--work /tmp/vreid_serve_load]
       python benchmarks/serve_load.py --wrk --clients 16,64 --duration 30 [...]

Builds everything it needs: a synthetic city (`vreid synth`), a randomly initialised model of --backbone
(speed does not depend on the weight values), its gallery index (`vreid extract --images`, `vreid index build`),
optionally the ONNX export (--onnx: the service then runs ONNX Runtime), and starts `vreid serve` as a separate
process on 127.0.0.1. Then --concurrency client threads send --requests POST /search requests in total (each a
real query image of the city, JPEG) and the script reports throughput, latency percentiles and any non-200
answers. A bounded number of requests, loopback only.

With --wrk the load comes from a real load generator instead (`wrk`, Debian package `wrk`: an event-driven C
client with a Lua script that posts the multipart query): for each number of --clients, --duration seconds of
closed-loop load (each connection sends its next request when the last is answered), then
throughput, p50/p90/p99 latency, errors (non-2xx answers, socket errors, timeouts) and the service's peak
resident memory (VmHWM, reset before each level) are reported.
"""

from __future__ import annotations

import argparse
import json
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


WRK_SCRIPT = r"""
local f = assert(io.open(os.getenv("VREID_QUERY"), "rb"))
local image = f:read("*all")
f:close()
local boundary = "vreid-load-boundary"
wrk.method = "POST"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n" ..
           "Content-Type: image/jpeg\r\n\r\n" .. image .. "\r\n--" .. boundary .. "--\r\n"
local threads = {}
setup = function(thread) table.insert(threads, thread) end
statuses = {}
response = function(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
done = function(summary, latency, requests)
  local tally = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do tally[status] = (tally[status] or 0) + count end
  end
  local parts = {}
  for status, count in pairs(tally) do table.insert(parts, string.format('"%d": %d', status, count)) end
  io.write("STATUSES {" .. table.concat(parts, ", ") .. "}\n")
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "seconds": %f, "non_2xx": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "p50_ms": %f, "p90_ms": %f, "p99_ms": %f, "max_ms": %f}\n', summary.requests,
    summary.duration / 1e6, e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
"""


def peak_rss_mib(pid: int, reset: bool = False) -> float:
    """The process's peak resident memory (VmHWM); ``reset`` starts a new peak (Linux clear_refs 5)."""
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drain(url: str, query: Path) -> None:
    """Wait until the requests wrk left in flight are done (a new search is answered, not refused with 503)."""
    import httpx

    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            r = httpx.post(f"{url}/search", files={"image": ("q.jpg", query.read_bytes(), "image/jpeg")}, timeout=300)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    sys.exit("the service did not drain its queue")


def wrk_levels(url: str, pid: int, query: Path, clients: list[int], duration: int, work: Path) -> list[dict]:
    script = work / "search.lua"
    script.write_text(WRK_SCRIPT)
    rows = []
    for n in clients:
        drain(url, query)  # the previous level's abandoned requests must not count against this one
        peak_rss_mib(pid, reset=True)
        out = subprocess.run(["wrk", "-t", "2", "-c", str(n), "-d", f"{duration}s", "--timeout", "60s", "-s",
                              str(script), f"{url}/search?top_k=20"], capture_output=True, text=True, check=True,
                             env={"VREID_QUERY": str(query), "PATH": "/usr/bin:/bin"})
        result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
        statuses = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("STATUSES "))[9:])
        result.update(clients=n, statuses=statuses, peak_rss_mib=round(peak_rss_mib(pid), 1))
        rows.append(result)
        print(json.dumps(result), flush=True)
    return rows


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
    ap.add_argument("--wrk", action="store_true", help="load from wrk (a real load generator) instead of threads")
    ap.add_argument("--clients", default="16,64", help="--wrk: concurrent connections, one level each")
    ap.add_argument("--duration", type=int, default=30, help="--wrk: seconds per level")
    ap.add_argument("--max-connections", type=int, default=64, help="the service's --max-connections")
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
                               "--port", str(port), "--read-only", "--max-connections", str(args.max_connections),
                               "--config-file", str(work / "model.yml"),
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

        if args.wrk:
            rows = wrk_levels(url, server.pid, queries[0], [int(c) for c in args.clients.split(",")], args.duration,
                              work)
            backend = "onnxruntime" if args.onnx else "torch"
            print(f"{args.backbone} {args.size}x{args.size} ({backend}, {args.threads} threads), gallery "
                  f"{health['images']} images, wrk -t 2, {args.duration} s per level, --max-connections "
                  f"{args.max_connections}")
            print("| clients | requests/s | p50 ms | p90 ms | p99 ms | errors (non-2xx / socket / timeout) | peak "
                  "RSS MiB |\n|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['clients']} | {r['requests'] / r['seconds']:.1f} | {r['p50_ms']:.0f} | "
                      f"{r['p90_ms']:.0f} | {r['p99_ms']:.0f} | {r['non_2xx']} / "
                      f"{r['connect'] + r['read'] + r['write']} / {r['timeout']} | {r['peak_rss_mib']:.0f} |")
            return
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
