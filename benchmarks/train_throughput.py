"""Training throughput: vreid's loop against a bare PyTorch loop doing the same work (target: < 10% overhead).

Usage: python benchmarks/train_throughput.py [--backbone resnet18] [--size 128] [--batch 32] [--iters 40]

Both loops train the same model (vreid's ReIDNet) on the same synthetic-city images with the same
augmentation, batch size, loss (label-smoothed CE + SupCon), Adam and bf16 autocast, with 2 loader
workers. The bare loop is what a user would write by hand: a shuffled DataLoader, forward, loss,
backward, step. Ours adds the P x K sampler, per-sample seeding, MALW, the schedule, logging and
checkpoints. Images/s are measured after a warm-up of 5 iterations.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vreid.config import load_config
from vreid.data.loader import TrainDataset, prepare_training_data
from vreid.data.synth import SynthOptions, generate_city
from vreid.data.transforms import build_train_transform
from vreid.engine.trainer import train
from vreid.losses import CrossEntropyLabelSmooth, SupConLoss
from vreid.models import build_model

WARMUP = 5


def bare_loop(cfg, iters: int) -> float:
    data = prepare_training_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, data.num_classes).to(memory_format=torch.channels_last).train()
    dataset = TrainDataset(data.records, data.labels, data.domains, build_train_transform(cfg))
    seeded = [(i, i) for i in range(len(dataset))]
    loader = torch.utils.data.DataLoader(
        [seeded[i] for i in range(len(seeded))], batch_size=cfg.SOLVER.IMS_PER_BATCH, shuffle=True, drop_last=True,
        num_workers=cfg.DATALOADER.NUM_WORKERS, persistent_workers=True,
        collate_fn=lambda items: [dataset[item] for item in items])
    ce, supcon = CrossEntropyLabelSmooth(0.1), SupConLoss(0.07)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.SOLVER.BASE_LR)
    done, images, start = 0, 0, time.perf_counter()
    while done < iters + WARMUP:
        for samples in loader:
            x = torch.stack([s["image"] for s in samples]).contiguous(memory_format=torch.channels_last)
            y = torch.tensor([s["label"] for s in samples])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x, y)
            loss = ce(out["logits"].float(), y) + supcon(out["features"].float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == WARMUP:
                images, start = 0, time.perf_counter()
            elif done > WARMUP:
                images += len(y)
            if done == iters + WARMUP:
                break
    return images / (time.perf_counter() - start)


def vreid_loop(cfg) -> float:
    train(cfg)
    records = [json.loads(line) for line in (Path(cfg.OUTPUT_DIR) / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "step" in r and "loss" in r]
    first = next(r for r in records if r["step"] >= WARMUP)
    last = records[-1]
    return (last["step"] - first["step"]) * cfg.SOLVER.IMS_PER_BATCH / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        city = Path(tmp) / "city"
        generate_city(city, SynthOptions(num_ids=80, num_sim_ids=80, num_cameras=4, seed=0))
        opts = ["DATASETS.ROOT_DIR", str(city), "DATASETS.TRAIN", "('aic21', 'aic21_synthetic')",
                "MODEL.BACKBONE", args.backbone, "INPUT.SIZE_TRAIN", f"({args.size}, {args.size})",
                "SOLVER.IMS_PER_BATCH", str(args.batch), "DATALOADER.NUM_INSTANCE", "4", "SOLVER.AMP", "bf16",
                "DATALOADER.NUM_WORKERS", "2", "SOLVER.LOG_PERIOD", "1", "SOLVER.CHECKPOINT_ITERS", "0",
                "OUTPUT_DIR", str(Path(tmp) / "run"), "SOLVER.MAX_EPOCHS", "1", "MODEL.PRETRAIN", "False"]
        cfg = load_config(None, opts)
        ours = vreid_loop(cfg)
        bare = bare_loop(cfg, args.iters)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.backbone} at {args.size}x{args.size}, "
          f"batch {args.batch}, bf16, 2 loader workers")
    print(f"bare PyTorch loop: {bare:.1f} images/s")
    print(f"vreid loop:        {ours:.1f} images/s")
    print(f"overhead:          {(bare / ours - 1) * 100:+.1f}%")


if __name__ == "__main__":
    main()
