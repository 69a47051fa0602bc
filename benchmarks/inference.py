"""CPU inference speed of the backends a trained model can run on (target: the fastest >= 1.5x eager PyTorch).

Usage: python benchmarks/inference.py [--models mobilenet_v2,resnet50_ibn_a] [--size 256] [--batch 16]
           [--seconds 20] [--threads 2] [--backends eager,channels_last,bf16,compile,onnxruntime]

Each (model, backend) runs in its own fresh process, so peak memory (the process's maximum resident set) is its
own. The model is the ReID network as `vreid export` ships it (backbone + pooling + BNNeck, eval mode, random
weights: speed does not depend on their values), fed batches of --batch images of --size x --size.
Throughput = images / wall-clock seconds over at least --seconds after warm-up (3 batches; torch.compile's
compilation is timed separately). Backends:

  eager          PyTorch eager, float32, NCHW
  channels_last  PyTorch eager, float32, channels-last memory format (vreid's default)
  bf16           channels-last + bfloat16 autocast (CPUs with AVX512-BF16/AMX; embeddings differ ~1e-3)
  compile        torch.compile (inductor) of the channels-last float32 model
  onnxruntime    the `vreid export` ONNX file in ONNX Runtime, float32, all graph optimisations

Also reports each backend's embedding cosine similarity to eager on the same batch (1.0 = identical).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("eager", "channels_last", "bf16", "compile", "onnxruntime")


def child(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from vreid.config import load_config
    from vreid.deploy.export import cosine_rows
    from vreid.models import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stride = "2" if args.model == "mobilenet_v2" else "1"
    cfg = load_config(None, ["MODEL.BACKBONE", args.model, "MODEL.LAST_STRIDE", stride,
                             "INPUT.SIZE_TEST", f"({args.size}, {args.size})"])
    model = build_model(cfg, 0).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        reference = model(x).numpy()
    compile_s = 0.0
    if args.backend == "onnxruntime":
        from vreid.deploy.export import export_onnx
        from vreid.engine.runtime import OnnxModel

        path = export_onnx(model, Path(args.tmp) / f"{args.model}.onnx", (args.size, args.size))
        del model
        runner = OnnxModel(path, threads=args.threads)
        def run(): return runner(x)
    else:
        if args.backend != "eager":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if args.backend == "compile":
            model = torch.compile(model)
            start = time.perf_counter()
            with torch.no_grad():
                model(x)
            compile_s = time.perf_counter() - start
        bf16 = args.backend == "bf16"

        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return model(x).float()
    for _ in range(3):
        out = run()
    cosine = float(cosine_rows(reference, np.asarray(out)).min())
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        run()
        n += 1
    seconds = time.perf_counter() - start
    return {"model": args.model, "backend": args.backend, "images_per_s": n * args.batch / seconds,
            "batches": n, "compile_s": compile_s, "min_cosine_to_eager": cosine,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilenet_v2,resnet50_ibn_a")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"
    print(f"{os.cpu_count()} CPUs, {args.threads} threads, batch {args.batch} at {args.size}x{args.size}, "
          f"load before: {load}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for backend in args.backends.split(","):
                cmd = [sys.executable, __file__, "--child", "--model", model, "--backend", backend, "--tmp", tmp,
                       "--size", str(args.size), "--batch", str(args.batch), "--seconds", str(args.seconds),
                       "--threads", str(args.threads)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{model} {backend}: failed\n{proc.stderr[-2000:]}", flush=True)
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{model:16s} {backend:14s} {row['images_per_s']:7.1f} img/s  peak {row['peak_rss_mib']:6.0f} "
                      f"MiB  cos {row['min_cosine_to_eager']:.6f}  compile {row['compile_s']:.0f} s", flush=True)
    print("\n| model | backend | images/s | x eager | peak memory (MiB) | min cosine to eager |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        eager = next((r for r in rows if r["model"] == row["model"] and r["backend"] == "eager"), None)
        speedup = f"{row['images_per_s'] / eager['images_per_s']:.2f}" if eager else "-"
        print(f"| {row['model']} | {row['backend']} | {row['images_per_s']:.1f} | {speedup} | "
              f"{row['peak_rss_mib']:.0f} | {row['min_cosine_to_eager']:.6f} |")


if __name__ == "__main__":
    main()
