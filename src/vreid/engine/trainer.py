"""The re-id trainer (docs/method.md, Training), done so that nothing is lost and a resumed run is exact.

One step: learning rate from the schedule -> forward under autocast -> losses (MALW) -> a non-finite loss stops
the run (the last good checkpoint stays) -> backward, clipping, step. Around it, hooks (:func:`build_hooks`; the
loop and how to add a hook: :mod:`vreid.engine.hooks`): the log file, EMA, progress bar, metrics.jsonl, validation,
checkpoints (``OUTPUT_DIR/checkpoints/last.pth``, written atomically at epoch ends and every
``SOLVER.CHECKPOINT_ITERS`` iterations with everything needed to continue bit for bit on the same machine:
weights, optimizer, scaler, MALW, EMA, position and RNG states) and the final weights. Sampling and augmentation
are pure functions of (seed, epoch, position), so skipping the batches already done reproduces the rest of the
epoch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vreid.config import save_config
from vreid.data.images import SkipReport
from vreid.data.loader import build_train_loader, build_train_sampler, prepare_training_data
from vreid.data.transforms import build_train_transform
from vreid.engine.checkpoint import load_checkpoint, rng_state, set_rng_state
from vreid.engine.checks import check_training_config
from vreid.engine.distributed import DistInfo, all_reduce_mean, cleanup, init_distributed
from vreid.engine.ema import ModelEMA
from vreid.engine.hooks import CheckpointHook, HookBase, LogFileHook, MetricsLog, TrainerBase
from vreid.engine.optim import build_optimizer, lr_factor_from_config, set_lr
from vreid.engine.precision import amp_dtype as resolve_amp_dtype
from vreid.engine.reid_hooks import (
    EMAHook,
    FinalWeightsHook,
    MetricsHook,
    ProgressHook,
    UnreadableReportHook,
    ValidationHook,
    validation_metrics,
)
from vreid.errors import VreidError
from vreid.losses import build_criterion
from vreid.models import build_model
from vreid.models.build import pretrain_path
from vreid.runfiles import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    LOG_FILE,
    TENSORBOARD_DIR,
    TRAIN_METRICS_FILE,
)

log = logging.getLogger(__name__)

__all__ = ["ReidTrainer", "TrainingDiverged", "build_hooks", "record_step", "train", "validation_metrics"]


class TrainingDiverged(VreidError):
    """The loss became NaN or infinite."""


def build_hooks(cfg, info: DistInfo) -> list[HookBase]:
    """The hooks of every run, in calling order: the order of the work after a step and after an epoch."""
    out = Path(cfg.OUTPUT_DIR)
    hooks: list[HookBase] = [LogFileHook(out / LOG_FILE, enabled=info.is_main)]
    if cfg.SOLVER.EMA_DECAY > 0:
        hooks.append(EMAHook())
    hooks += [ProgressHook(), UnreadableReportHook(), MetricsHook(cfg.SOLVER.LOG_PERIOD),
              ValidationHook(cfg.SOLVER.EVAL_PERIOD, out / CHECKPOINT_DIR / BEST_CHECKPOINT),
              CheckpointHook(out / CHECKPOINT_DIR / LAST_CHECKPOINT, cfg.SOLVER.CHECKPOINT_ITERS),
              FinalWeightsHook(out)]
    return hooks


class ReidTrainer(TrainerBase):
    """The state of a re-id training run and its step; see the module docstring."""

    def __init__(self, cfg, info: DistInfo, resume: bool = False, hooks: Iterable[HookBase] = ()):
        super().__init__(hooks)
        self.cfg, self.info, self.resume = cfg, info, resume
        self.is_main = info.is_main
        self.out = Path(cfg.OUTPUT_DIR)
        self.last_path = self.out / CHECKPOINT_DIR / LAST_CHECKPOINT
        self.max_epochs = cfg.SOLVER.MAX_EPOCHS
        self.best_map = -1.0
        self.validation: dict[str, float] = {}  # the last validation's metrics (rank 0)
        self.skips = SkipReport()
        self.ema: ModelEMA | None = None
        self.lr, self.parts, self.batch_images = 0.0, {}, 0  # of the last step

    @property
    def eval_model(self) -> nn.Module:
        """The weights validated and saved as the final ones: the EMA copy when SOLVER.EMA_DECAY > 0."""
        return self.ema.module if self.ema is not None else self.model

    def setup(self) -> None:
        cfg, info = self.cfg, self.info
        if self.resume and not self.last_path.is_file():
            raise VreidError(f"--resume: no checkpoint at {self.last_path}")
        if not self.resume and self.last_path.is_file():
            raise VreidError(f"{self.last_path} exists: pass --resume to continue that run, or choose another "
                             "OUTPUT_DIR")
        torch.manual_seed(cfg.SEED)  # identical initial weights on every rank
        self.data = data = prepare_training_data(cfg)
        self.device, self.amp_dtype = info.device, resolve_amp_dtype(cfg.SOLVER.AMP, info.device)
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise VreidError("SOLVER.AMP fp16 needs a GPU (float16 matrix products are slow on CPUs): use bf16")
        self.memory_format = torch.channels_last if cfg.SOLVER.CHANNELS_LAST else torch.contiguous_format
        self.model = build_model(cfg, data.num_classes).to(self.device).to(memory_format=self.memory_format)
        # MALW sees the mean of every rank's losses, so its weights stay equal on all ranks
        self.criterion = build_criterion(cfg, reduce_scalars=lambda values: all_reduce_mean(values, info))
        self.criterion = self.criterion.to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, backbone=self.model.backbone)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.ema = ModelEMA(self.model, cfg.SOLVER.EMA_DECAY) if cfg.SOLVER.EMA_DECAY > 0 else None
        resumed_rng = self._restore() if self.resume else None

        self.net = self.model
        if info.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # parts without a gradient: a frozen backbone, or the classifier/neck when no ID loss reads them
                find_unused_parameters=cfg.SOLVER.FREEZE_BACKBONE_EPOCHS > 0 or "ce" not in cfg.LOSSES.NAMES)
        self.sampler = build_train_sampler(cfg, data, info.rank, info.world_size)
        self.loader = build_train_loader(cfg, data, build_train_transform(cfg), self.sampler)
        self.iters_per_epoch = iters = len(self.sampler)
        if iters == 0:
            raise VreidError(f"no training batch: {len(data.records)} images cannot fill one batch of "
                             f"{cfg.SOLVER.IMS_PER_BATCH} with sampler {cfg.DATALOADER.SAMPLER!r}")
        self.metrics = MetricsLog(self.out / TRAIN_METRICS_FILE, info.is_main, self.out / TENSORBOARD_DIR)
        if self.resume:
            self.metrics.truncate(lambda record: record_step(record, iters) <= self.start_step, self.start_step)
        if resumed_rng is not None:
            set_rng_state(resumed_rng)

    def _restore(self) -> dict[str, Any]:
        """Load ``last.pth`` into the state; returns this rank's RNG state, set just before the loop."""
        state = load_checkpoint(self.last_path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.criterion.load_state_dict_extra(state["criterion"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.start_epoch, self.start_batch, self.best_map = state["epoch"], state["batch"], state["best_map"]
        self.resumed = True
        log.info("resumed from %s at epoch %d, batch %d", self.last_path, self.start_epoch + 1, self.start_batch)
        rank = self.info.rank
        return state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0]

    def checkpoint_state(self) -> dict[str, Any] | None:
        """``last.pth``: everything needed to resume; collective under DDP (every rank's RNG state)."""
        rngs = [rng_state()]
        if self.info.distributed:
            gathered: list[Any] = [None] * self.info.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if not self.is_main:
            return None
        epoch, batch = (self.epoch + 1, 0) if self.batch >= self.iters_per_epoch else (self.epoch, self.batch)
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "criterion": self.criterion.state_dict_extra(), "epoch": epoch,
                 "batch": batch, "best_map": self.best_map, "rng": rngs}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def batches(self) -> Iterable[dict[str, Any]]:
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batch)
        self.net.train()
        self.model.freeze_backbone(self.epoch < self.cfg.SOLVER.FREEZE_BACKBONE_EPOCHS)
        return self.loader

    def run_step(self, batch: dict[str, Any]) -> bool:
        cfg, info, b = self.cfg, self.info, self.batch
        factor = lr_factor_from_config(cfg, self.epoch + b / self.iters_per_epoch)
        self.lr = set_lr(self.optimizer, cfg.SOLVER.BASE_LR, factor)
        self.skips.update(batch)
        empty = len(batch["index"]) == 0  # SKIP_UNREADABLE and not one image of the batch decodes
        if cfg.DATALOADER.SKIP_UNREADABLE and info.distributed:  # every rank skips, or DDP would wait forever
            empty = all_reduce_mean([float(empty)], info)[0] > 0
        if empty:
            log.warning("epoch %d iteration %d: every image of the batch is unreadable (on some rank); batch "
                        "skipped", self.epoch + 1, b + 1)
            return False
        images = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        labels, domains = batch["label"].to(self.device), batch["domain"].to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.net(images, labels, domains)
        outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
        loss, parts = self.criterion(outputs, labels)
        if not math.isfinite(parts["loss"]):
            raise TrainingDiverged(
                f"loss became {parts['loss']} at epoch {self.epoch + 1}, iteration {b + 1} ({parts}); training "
                f"stopped. The last good checkpoint is {self.last_path}: lower SOLVER.BASE_LR or enable "
                "SOLVER.CLIP_GRAD_NORM, then resume")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.SOLVER.CLIP_GRAD_NORM > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.SOLVER.CLIP_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.parts, self.batch_images = parts, len(labels)
        return True


def record_step(record: dict[str, Any], iters_per_epoch: int) -> int:
    """The step a metrics.jsonl record was written at (a validation record: the end of its epoch)."""
    position = record["step"] if "step" in record else record["epoch"] * iters_per_epoch
    if not isinstance(position, int):
        raise TypeError(f"step {position!r}")
    return position


def train(cfg, resume: bool = False, hooks: Sequence[HookBase] = ()) -> dict[str, Any]:
    """Train the model ``cfg`` describes; returns the final validation metrics (empty without VAL_IDS).

    ``hooks`` run after the built-in ones (:func:`build_hooks`), e.g. another logger or evaluation.
    """
    check_training_config(cfg)  # every section, before anything slow starts
    info = init_distributed()
    try:
        pretrain_path(cfg)  # before anything is written: no ImageNet file and no explicit opt-out is an error
        if info.is_main:
            Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
            save_config(cfg, Path(cfg.OUTPUT_DIR))
        trainer = ReidTrainer(cfg, info, resume, [*build_hooks(cfg, info), *hooks])
        trainer.train()
        return trainer.validation
    finally:
        cleanup(info)
