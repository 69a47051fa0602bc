"""Model cost on this machine: parameters, FLOPs and CPU inference speed of the paper's networks.

Usage: python benchmarks/model_cost.py [--size 320] [--batch 8] [--iters 3]

For each backbone (with the GeM + BNNeck head, and the paper's multi-head in full and rank-64 form)
prints parameters, GFLOPs per image at SIZE x SIZE, and eval images/s in fp32 on the CPU threads
torch uses by default. Random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import torch

from vreid.config import load_config
from vreid.models import build_model
from vreid.models.summary import count_flops

VARIANTS = [
    ("mobilenet_v2", "none", 0),
    ("resnet50_ibn_a", "none", 0),
    ("resnet50_ibn_a", "multihead", 0),
    ("resnet50_ibn_a", "multihead", 64),
    ("resnext101_ibn_a", "none", 0),
    ("resnext101_ibn_a", "multihead", 0),
    ("resnet152", "none", 0),
]


def images_per_second(model: torch.nn.Module, size: int, batch: int, iters: int) -> float:
    x = torch.rand(batch, 3, size, size)
    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {args.size}x{args.size}, "
          f"batch {args.batch}, fp32 eval")
    print(f"{'backbone':<18}{'head':<14}{'params (M)':>11}{'GFLOPs':>9}{'images/s':>10}")
    for backbone, head, rank in VARIANTS:
        cfg = load_config(None, ["MODEL.BACKBONE", backbone, "MODEL.HEAD.NAME", head, "MODEL.HEAD.RANK", str(rank)])
        model = build_model(cfg, num_classes=440)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gflops = count_flops(model, args.size, args.size) / 1e9
        speed = images_per_second(model, args.size, args.batch, args.iters)
        label = head if head == "none" else f"{head}{'' if not rank else f' r{rank}'}"
        print(f"{backbone:<18}{label:<14}{params:>11.1f}{gflops:>9.1f}{speed:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
