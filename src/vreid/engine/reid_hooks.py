"""The hooks of the re-id trainer (:mod:`vreid.engine.trainer`): metrics, progress, EMA, validation, final weights.

The loop and the hooks every trainer shares (log file, checkpoint) are in :mod:`vreid.engine.hooks`, which also
says how to add one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from vreid.data.loader import TrainingData
from vreid.data.transforms import build_test_transform
from vreid.engine.checkpoint import save_checkpoint, save_final_weights
from vreid.engine.distributed import barrier
from vreid.engine.extract import extract_features
from vreid.engine.hooks import HookBase
from vreid.engine.postprocess import protocol_cameras
from vreid.retrieval import evaluate, pairwise_distance

log = logging.getLogger("vreid.engine.trainer")  # the logger name in the lines users (and their scripts) know


class MetricsHook(HookBase):
    """Every ``period`` batches and at each epoch's last one: a metrics.jsonl record and a log line (lr, losses,
    images/s since the epoch began, over all processes)."""

    def __init__(self, period: int):
        self.period = period
        self.tick, self.seen = 0.0, 0

    def before_epoch(self) -> None:
        self.tick, self.seen = time.perf_counter(), 0

    def after_step(self) -> None:
        t = self.trainer
        self.seen += t.batch_images
        if t.batch % self.period and t.batch != t.iters_per_epoch:
            return
        speed = self.seen * t.info.world_size / (time.perf_counter() - self.tick)
        record = {"epoch": t.epoch + 1, "iter": t.batch, "step": t.step, "lr": t.lr, **t.parts,
                  "images_per_s": round(speed, 2), "time": round(time.time(), 3)}
        t.metrics.write(record, t.step, scalars_skip=("epoch", "iter"))
        log.info("epoch %d/%d iter %d/%d (step %d/%d) lr %.2e %s %.1f img/s", t.epoch + 1, t.max_epochs, t.batch,
                 t.iters_per_epoch, t.step, t.max_steps, t.lr, " ".join(f"{k} {v:.4f}" for k, v in t.parts.items()),
                 speed)

    def close(self) -> None:
        metrics = getattr(self.trainer, "metrics", None)
        if metrics is not None:
            metrics.close()


class ProgressHook(HookBase):
    """A tqdm bar per epoch on rank 0 (loss and lr of the last step); tqdm hides it when stderr is not a terminal."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def before_epoch(self) -> None:
        t = self.trainer
        self.bar = tqdm(total=t.iters_per_epoch, initial=t.batch, desc=f"epoch {t.epoch + 1}/{t.max_epochs}",
                        disable=None if t.is_main else True, leave=False, dynamic_ncols=True)

    def after_step(self) -> None:
        t = self.trainer
        self.bar.update(t.batch - self.bar.n)  # skipped batches are counted at the next step
        self.bar.set_postfix(loss=f"{t.parts['loss']:.3f}", lr=f"{t.lr:.2e}")

    def after_epoch(self) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class UnreadableReportHook(HookBase):
    """After each epoch, one warning listing the unreadable images skipped so far (DATALOADER.SKIP_UNREADABLE)."""

    def after_epoch(self) -> None:
        self.trainer.skips.report()


class EMAHook(HookBase):
    """``trainer.ema`` (SOLVER.EMA_DECAY) follows the weights after every step; validation and the final weights
    read ``trainer.eval_model``, the EMA copy. Its state is part of the checkpoint."""

    def after_step(self) -> None:
        self.trainer.ema.update(self.trainer.model)


def validation_metrics(cfg, model: nn.Module, data: TrainingData, device: torch.device, amp_dtype) -> dict[str, float]:
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


class ValidationHook(HookBase):
    """Every ``period`` epochs and after the last one (rank 0, the others wait): :func:`validate` on the validation
    ids, a metrics.jsonl record, a log line, and ``best_path`` when the mAP is the best so far (``trainer.best_map``,
    kept in the checkpoint). The last result is ``trainer.validation``."""

    def __init__(self, period: int, best_path: str | Path):
        self.period, self.best_path = period, Path(best_path)

    def after_epoch(self) -> None:
        t = self.trainer
        epoch = t.epoch + 1
        if not t.data.val_query or not (epoch == t.max_epochs or self.period > 0 and epoch % self.period == 0):
            return
        if t.is_main:
            result = validation_metrics(t.cfg, t.eval_model, t.data, t.device, t.amp_dtype)
            t.metrics.write({"epoch": epoch, "split": "validation", **result}, t.step, scalars_skip=("epoch", "iter"))
            log.info("validation after epoch %d: mAP %.4f rank-1 %.4f mINP %.4f", epoch, result["mAP"],
                     result["rank1"], result["mINP"])
            if result["mAP"] > t.best_map:
                t.best_map = result["mAP"]
                save_checkpoint({"model": t.eval_model.state_dict(), "epoch": epoch, **result}, self.best_path)
            t.validation = result
        barrier(t.info)


class FinalWeightsHook(HookBase):
    """At the end (rank 0): ``model_final.pth`` and ``.safetensors`` from ``trainer.eval_model``; then every rank
    waits for them."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)

    def after_train(self) -> None:
        t = self.trainer
        if t.is_main:
            pth, _ = save_final_weights(t.eval_model.state_dict(), self.out_dir)
            log.info("final weights: %s (and .safetensors); best validation mAP %s", pth,
                     f"{t.best_map:.4f}" if t.best_map >= 0 else "n/a (no DATASETS.VAL_IDS)")
        barrier(t.info)
