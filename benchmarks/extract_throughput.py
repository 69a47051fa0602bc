"""Extraction throughput: vreid's pipeline (decode, resize, loader, model) against the bare model.

Usage: python benchmarks/extract_throughput.py [--config configs/vehicle2cam/mobilenetv2.yml] [--images 192]
                                               [--size 320x240] [--batches 16,64] [--workers 0,1,2]

Writes ``--images`` JPEG files of ``--size`` (smooth random colour fields, quality 90: vehicle-crop-like sizes)
to a temporary folder, then measures, in images/s: decoding alone (PIL open + RGB convert), decode + the whole
test transform per image, decode + its loader half alone (resize, uint8 tensor; vreid normalises per batch), the
bare model on ready tensors (``embed_batch``, channels_last, the config's precision), and ``extract_features`` end
to end for each batch size and number of loader workers. The gap between the bare model and the end-to-end rate
is what the loader costs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vreid.config import load_config
from vreid.data.images import read_image
from vreid.data.records import ImageRecord
from vreid.data.transforms import build_test_transform
from vreid.engine.extract import embed_batch, extract_features
from vreid.engine.precision import amp_dtype
from vreid.models import build_model


def write_images(folder: Path, count: int, width: int, height: int, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        records.append(ImageRecord(path, str(i % 50), f"c{i % 4}"))
    return records


def rate(count: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/vehicle2cam/mobilenetv2.yml")
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", default="320x240", help="width x height of the JPEG files")
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--workers", default="0,1,2")
    args = parser.parse_args()
    cfg = load_config(args.config)
    width, height = (int(v) for v in args.size.split("x"))
    model = build_model(cfg, 10, pretrained=False).eval().to(memory_format=torch.channels_last)
    dtype = amp_dtype(cfg.SOLVER.AMP, "cpu")
    transform = build_test_transform(cfg)
    print(f"{cfg.MODEL.BACKBONE} at {tuple(cfg.INPUT.SIZE_TEST)}, precision {dtype or 'float32'}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {args.images} JPEGs of {width}x{height}, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        records = write_images(Path(tmp), args.images, width, height)
        paths = [r.path for r in records]
        decode = rate(len(paths), lambda: [read_image(p) for p in paths])
        whole = rate(len(paths), lambda: [transform(read_image(p)) for p in paths])
        half = rate(len(paths), lambda: [transform.per_image(read_image(p)) for p in paths])
        print(f"one process: decode {decode:.0f} img/s; decode + resize + uint8 tensor (the loader's half) {half:.0f} "
              f"img/s; decode + the whole test transform per image (float, normalise) {whole:.0f} img/s")
        print("| batch | bare model (img/s) | workers | end to end (img/s) | end to end / bare |")
        print("|---|---|---|---|---|")
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.stack([transform(read_image(p)) for p in paths[:batch]])
            embed_batch(model, x, amp_dtype=dtype, channels_last=True)  # warm-up
            reps = max(1, len(paths) // batch)
            bare = rate(reps * batch, lambda x=x, reps=reps: [embed_batch(model, x, amp_dtype=dtype,
                                                                         channels_last=True) for _ in range(reps)])
            for workers in (int(w) for w in args.workers.split(",")):
                e2e = rate(len(records), lambda b=batch, w=workers: extract_features(
                    model, records, transform, batch_size=b, amp_dtype=dtype, num_workers=w, channels_last=True,
                    progress=False))
                print(f"| {batch} | {bare:.1f} | {workers} | {e2e:.1f} | {e2e / bare:.2f} |", flush=True)


if __name__ == "__main__":
    main()
