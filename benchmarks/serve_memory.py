"""Peak memory of `vreid serve` under the cheap-upload attacks of issue 14: tiny files that claim many pixels.

Usage: python benchmarks/serve_memory.py --index IDX --config-file MODEL.yml [--searches 8] [--gallery-files 8]

Starts `vreid serve` on IDX (e.g. the one benchmarks/serve_load.py builds under /tmp/vreid_serve_load) on a free
loopback port, then measures the service's peak resident memory (VmHWM, reset before each attack) for
 1. --searches concurrent POST /search, each a 5000 x 5000 one-bit PNG (about 3 KiB, 25 M pixels);
 2. one POST /gallery of --gallery-files such PNGs (about 24 KiB in all);
and prints the increase over the resident memory before each attack with the answers' status codes.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from PIL import Image

TOKEN = "benchmark-token-0123456789"


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--searches", type=int, default=8)
    ap.add_argument("--gallery-files", type=int, default=8)
    args = ap.parse_args()
    buffer = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buffer, "PNG")
    sheet = buffer.getvalue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "vreid.cli", "serve", "--index", args.index, "--port", str(port),
                               "--config-file", args.config_file], stderr=subprocess.DEVNULL,
                              env={**__import__("os").environ, "VREID_SERVE_TOKEN": TOKEN})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                httpx.get(url + "/health", timeout=2)
                break
            except httpx.HTTPError:
                if time.time() > deadline or server.poll() is not None:
                    sys.exit("the service did not start")
                time.sleep(0.5)
        print(f"one PNG: {len(sheet)} bytes, 5000x5000 one-bit")
        statuses: list[int] = []

        def search() -> None:
            r = httpx.post(url + "/search", files={"image": ("s.png", sheet, "image/png")}, timeout=600)
            statuses.append(r.status_code)

        def gallery() -> None:
            files = [("images", (f"{i}.png", sheet, "image/png")) for i in range(args.gallery_files)]
            r = httpx.post(url + "/gallery", files=files, timeout=600,
                           headers={"Authorization": f"Bearer {TOKEN}"})
            statuses.append(r.status_code)

        for name, target, count in ((f"{args.searches} concurrent searches", search, args.searches),
                                    (f"one gallery upload of {args.gallery_files} files", gallery, 1)):
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
            before = rss_mib(server.pid, "VmRSS")
            statuses.clear()
            threads = [threading.Thread(target=target) for _ in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"{name}: peak RSS +{rss_mib(server.pid, 'VmHWM') - before:.0f} MiB over {before:.0f} MiB, "
                  f"answers {sorted(statuses)}")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
