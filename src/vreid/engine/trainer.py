"""The training loop (docs/method.md, Training), done so that nothing is lost and a resumed run is exact.

Per iteration: learning rate from the schedule -> forward under autocast -> losses (MALW) -> a
non-finite loss stops the run (the last good checkpoint stays) -> backward, clipping, step ->
EMA. Checkpoints (``OUTPUT_DIR/checkpoints/last.pth``) are written atomically at epoch ends and
every ``SOLVER.CHECKPOINT_ITERS`` iterations, with everything needed to continue bit for bit on
the same machine: weights, optimizer, scaler, MALW, EMA, position and RNG states. Sampling and
augmentation are pure functions of (seed, epoch, position), so skipping the batches already done
reproduces the rest of the epoch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vreid.config import save_config
from vreid.data.images import SkipReport
from vreid.data.loader import TrainingData, build_train_loader, build_train_sampler, prepare_training_data
from vreid.data.transforms import build_test_transform, build_train_transform
from vreid.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, save_final_weights, set_rng_state
from vreid.engine.checks import check_training_config
from vreid.engine.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from vreid.engine.ema import ModelEMA
from vreid.engine.extract import extract_features
from vreid.engine.optim import build_optimizer, lr_factor_from_config, set_lr
from vreid.engine.postprocess import protocol_cameras
from vreid.engine.precision import amp_dtype as resolve_amp_dtype
from vreid.errors import VreidError
from vreid.fileio import atomic_write_text
from vreid.losses import build_criterion
from vreid.models import build_model
from vreid.models.build import pretrain_path
from vreid.retrieval import evaluate, pairwise_distance

log = logging.getLogger(__name__)

LAST, BEST = "last.pth", "best.pth"


class TrainingDiverged(VreidError):
    """The loss became NaN or infinite."""


class MetricsLog:
    """One JSON object per line (iteration logs and evaluations), plus TensorBoard when it is installed."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log.debug("tensorboard not installed: metrics go to %s only", self.path)

    def truncate(self, step: int, iters_per_epoch: int) -> int:
        """On resume: keep only the complete records up to ``step`` (the checkpoint's position), so that the
        iterations run again after the last checkpoint, and a line cut by a kill, appear once. Returns the count
        of records dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                position = record["step"] if "step" in record else record["epoch"] * iters_per_epoch
                keep = isinstance(position, int) and position <= step
            except (ValueError, KeyError, TypeError):  # a partial last line, or not one of ours
                keep = False
            kept += [line] if keep else []
            dropped += not keep
        if dropped:
            atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))
            log.info("%s: dropped %d records after the resumed position (step %d)", self.path, dropped, step)
        return dropped

    def write(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "iter"):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def validate(cfg, model: nn.Module, data: TrainingData, device: torch.device, amp_dtype) -> dict[str, float]:
    """mAP and CMC on the validation ids (never the test split), with the embeddings ``vreid test`` uses (TEST.FLIP).

    The official code validates without flipping while testing with it; here the best checkpoint is
    chosen on the same embeddings that are tested.
    """
    transform = build_test_transform(cfg)
    kwargs = {"batch_size": cfg.TEST.IMS_PER_BATCH, "flip": cfg.TEST.FLIP, "device": device, "amp_dtype": amp_dtype,
              "channels_last": cfg.SOLVER.CHANNELS_LAST, "progress": False}
    with torch.random.fork_rng(devices=[]):  # evaluation must not shift the training RNG stream
        query = extract_features(model, data.val_query, transform, **kwargs)
        gallery = extract_features(model, data.val_gallery, transform, **kwargs)
    dist = pairwise_distance(query.features, gallery.features, metric=cfg.TEST.METRIC)
    result = evaluate(dist, query.vehicle_ids, gallery.vehicle_ids, *protocol_cameras(query, gallery))
    return {"mAP": float(result["mAP"]), "rank1": float(result["cmc"][0]), "mINP": float(result["mINP"])}


def train(cfg, resume: bool = False) -> dict[str, Any]:
    """Train the model ``cfg`` describes; returns the final validation metrics (empty without VAL_IDS)."""
    check_training_config(cfg)
    info = init_distributed()
    try:
        return _train(cfg, resume, info)
    finally:
        cleanup(info)


def _train(cfg, resume: bool, info: DistInfo) -> dict[str, Any]:
    out = Path(cfg.OUTPUT_DIR)
    ckpt_dir = out / "checkpoints"
    pretrain_path(cfg)  # before anything is written: no ImageNet file and no explicit opt-out is an error
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        handler = logging.FileHandler(out / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("vreid").addHandler(handler)
    if resume and not (ckpt_dir / LAST).is_file():
        raise VreidError(f"--resume: no checkpoint at {ckpt_dir / LAST}")
    if not resume and (ckpt_dir / LAST).is_file():
        raise VreidError(f"{ckpt_dir / LAST} exists: pass --resume to continue that run, or choose another "
                         "OUTPUT_DIR")

    torch.manual_seed(cfg.SEED)  # identical initial weights on every rank
    data = prepare_training_data(cfg)
    device, amp_dtype = info.device, resolve_amp_dtype(cfg.SOLVER.AMP, info.device)
    if amp_dtype is torch.float16 and device.type != "cuda":
        raise VreidError("SOLVER.AMP fp16 needs a GPU (float16 matrix products are slow on CPUs): use bf16")
    model = build_model(cfg, data.num_classes).to(device)
    memory_format = torch.channels_last if cfg.SOLVER.CHANNELS_LAST else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    criterion = build_criterion(cfg).to(device)
    criterion.reduce_scalars = lambda values: all_reduce_mean(values, info)
    optimizer = build_optimizer(cfg, model, backbone=model.backbone)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)
    ema = ModelEMA(model, cfg.SOLVER.EMA_DECAY) if cfg.SOLVER.EMA_DECAY > 0 else None

    start_epoch, start_batch, best_map = 0, 0, -1.0
    resumed_rng = None
    if resume:
        state = load_checkpoint(ckpt_dir / LAST)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        criterion.load_state_dict_extra(state["criterion"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        start_epoch, start_batch, best_map = state["epoch"], state["batch"], state["best_map"]
        resumed_rng = state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0]
        log.info("resumed from %s at epoch %d, batch %d", ckpt_dir / LAST, start_epoch + 1, start_batch)

    net = model
    if info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            # parts without a gradient: a frozen backbone, or the classifier/neck when no ID loss reads them
            find_unused_parameters=cfg.SOLVER.FREEZE_BACKBONE_EPOCHS > 0 or "ce" not in cfg.LOSSES.NAMES)
    sampler = build_train_sampler(cfg, data, info.rank, info.world_size)
    loader = build_train_loader(cfg, data, build_train_transform(cfg), sampler)
    iters = len(sampler)
    if iters == 0:
        raise VreidError(f"no training batch: {len(data.records)} images cannot fill one batch of "
                         f"{cfg.SOLVER.IMS_PER_BATCH} with sampler {cfg.DATALOADER.SAMPLER!r}")
    metrics_log = MetricsLog(out, info.is_main)
    if resume:
        metrics_log.truncate(start_epoch * iters + start_batch, iters)
    skips = SkipReport()
    total_iters = cfg.SOLVER.MAX_EPOCHS * iters

    def checkpoint(epoch: int, batch: int) -> None:
        """``last.pth``: everything needed to resume; collective under DDP (every rank's RNG state)."""
        rngs = [rng_state()]
        if info.distributed:
            gathered: list[Any] = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if not info.is_main:
            return
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "criterion": criterion.state_dict_extra(), "epoch": epoch, "batch": batch, "best_map": best_map,
                 "rng": rngs}
        if ema is not None:
            state["ema"] = ema.state_dict()
        save_checkpoint(state, ckpt_dir / LAST)

    if resumed_rng is not None:
        set_rng_state(resumed_rng)
    result: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.SOLVER.MAX_EPOCHS):
        first = start_batch if epoch == start_epoch else 0
        sampler.set_epoch(epoch)
        sampler.set_start(first)
        net.train()
        model.freeze_backbone(epoch < cfg.SOLVER.FREEZE_BACKBONE_EPOCHS)
        bar = tqdm(total=iters, initial=first, desc=f"epoch {epoch + 1}/{cfg.SOLVER.MAX_EPOCHS}",
                   disable=None if info.is_main else True, leave=False, dynamic_ncols=True)
        tick, seen = time.perf_counter(), 0
        for b, batch in enumerate(loader, start=first):
            lr = set_lr(optimizer, cfg.SOLVER.BASE_LR, lr_factor_from_config(cfg, epoch + b / iters))
            skips.update(batch)
            empty = len(batch["index"]) == 0  # SKIP_UNREADABLE and not one image of the batch decodes
            if cfg.DATALOADER.SKIP_UNREADABLE and info.distributed:  # every rank skips, or DDP would wait forever
                empty = all_reduce_mean([float(empty)], info)[0] > 0
            if empty:
                log.warning("epoch %d iteration %d: every image of the batch is unreadable (on some rank); batch "
                            "skipped", epoch + 1, b + 1)
                bar.update(1)
                continue
            images = batch["image"].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels, domains = batch["label"].to(device), batch["domain"].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = net(images, labels, domains)
            outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
            loss, parts = criterion(outputs, labels)
            if not math.isfinite(parts["loss"]):
                raise TrainingDiverged(
                    f"loss became {parts['loss']} at epoch {epoch + 1}, iteration {b + 1} ({parts}); training "
                    f"stopped. The last good checkpoint is {ckpt_dir / LAST}: lower SOLVER.BASE_LR or enable "
                    "SOLVER.CLIP_GRAD_NORM, then resume")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.SOLVER.CLIP_GRAD_NORM > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.SOLVER.CLIP_GRAD_NORM)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
            seen += len(labels)
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", lr=f"{lr:.2e}")
            step = epoch * iters + b + 1
            if (b + 1) % cfg.SOLVER.LOG_PERIOD == 0 or b + 1 == iters:
                speed = seen * info.world_size / (time.perf_counter() - tick)
                record = {"epoch": epoch + 1, "iter": b + 1, "step": step, "lr": lr, **parts,
                          "images_per_s": round(speed, 2), "time": round(time.time(), 3)}
                metrics_log.write(record, step)
                log.info("epoch %d/%d iter %d/%d (step %d/%d) lr %.2e %s %.1f img/s", epoch + 1,
                         cfg.SOLVER.MAX_EPOCHS, b + 1, iters, step, total_iters, lr,
                         " ".join(f"{k} {v:.4f}" for k, v in parts.items()), speed)
            if cfg.SOLVER.CHECKPOINT_ITERS and (b + 1) % cfg.SOLVER.CHECKPOINT_ITERS == 0 and b + 1 < iters:
                checkpoint(epoch, b + 1)
        bar.close()
        skips.report()
        last_epoch = epoch + 1 == cfg.SOLVER.MAX_EPOCHS
        due = cfg.SOLVER.EVAL_PERIOD > 0 and (epoch + 1) % cfg.SOLVER.EVAL_PERIOD == 0
        if data.val_query and (due or last_epoch):
            if info.is_main:
                eval_model = ema.module if ema is not None else model
                result = validate(cfg, eval_model, data, device, amp_dtype)
                metrics_log.write({"epoch": epoch + 1, "split": "validation", **result}, (epoch + 1) * iters)
                log.info("validation after epoch %d: mAP %.4f rank-1 %.4f mINP %.4f", epoch + 1, result["mAP"],
                         result["rank1"], result["mINP"])
                if result["mAP"] > best_map:
                    best_map = result["mAP"]
                    save_checkpoint({"model": eval_model.state_dict(), "epoch": epoch + 1, **result},
                                    ckpt_dir / BEST)
            barrier(info)
        checkpoint(epoch + 1, 0)

    if info.is_main:
        final = (ema.module if ema is not None else model).state_dict()
        pth, _ = save_final_weights(final, out)
        log.info("final weights: %s (and .safetensors); best validation mAP %s", pth,
                 f"{best_map:.4f}" if best_map >= 0 else "n/a (no DATASETS.VAL_IDS)")
    metrics_log.close()
    barrier(info)
    return result
