"""ResNet-18 training and inference steps in float32 against bf16 autocast, random data, no loader.

Usage: python benchmarks/precision_step.py [--config configs/demo/city.yml] [--batch 32] [--iters 10]

Shows what ``SOLVER.AMP auto`` decides and why: bf16 autocast pays only where the CPU computes bf16 natively
(AVX512-BF16 / AMX); elsewhere it is emulated and several times slower than float32. The model is the one of
``--config`` (demo: ResNet-18 at 128x128, channels_last), the loss label-smoothed cross-entropy, Adam.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from vreid.config import load_config
from vreid.engine.precision import AMP_DTYPES, cpu_has_native_bf16, resolve_amp
from vreid.models import build_model

WARMUP = 3
NUM_CLASSES = 100


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def images_per_second(cfg, dtype: torch.dtype | None, batch: int, iters: int, training: bool) -> float:
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES, pretrained=False).to(memory_format=torch.channels_last)
    model.train(training)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    h, w = cfg.INPUT.SIZE_TRAIN
    x = torch.randn(batch, 3, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    start = 0.0
    for i in range(WARMUP + iters):
        if i == WARMUP:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            if training:
                out = model(x, y)
            else:
                with torch.no_grad():
                    out = model(x)
        if training:
            loss = F.cross_entropy(out["logits"].float(), y, label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo/city.yml")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config(args.config)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, "
          f"SOLVER.AMP auto -> {resolve_amp('auto', 'cpu')}; {cfg.MODEL.BACKBONE} at {tuple(cfg.INPUT.SIZE_TRAIN)}, "
          f"batch {args.batch}")
    print("| step | float32 (img/s) | bf16 autocast (img/s) | bf16 / float32 |")
    print("|---|---|---|---|")
    for training in (True, False):
        fp32 = images_per_second(cfg, AMP_DTYPES["off"], args.batch, args.iters, training)
        bf16 = images_per_second(cfg, AMP_DTYPES["bf16"], args.batch, args.iters, training)
        print(f"| {'training' if training else 'inference'} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
