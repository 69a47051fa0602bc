"""The training loop's skeleton: a short loop that calls hooks, and the hooks every trainer shares.

A trainer (a :class:`TrainerBase` subclass: the re-id trainer in :mod:`vreid.engine.trainer`, the UNIT trainer in
:mod:`vreid.prep.unit.train`) holds the state (model, optimizers, data, position) and defines one step. Everything
around the step (the run's log file, metrics, checkpoints, validation, EMA, progress bars, samples) is a hook. The
loop, :meth:`TrainerBase.train`, calls the hooks in the order they were registered::

    before_train                  the run folder exists; nothing is built yet (open files, add log handlers)
    trainer.setup()               data, model, optimizer; restores the checkpoint on resume
    for each epoch:
        before_epoch
        for each batch: before_step, trainer.run_step(batch),
                        after_step    (only when the batch made a step: an all-unreadable batch is skipped)
        after_epoch                   (not when a hook stopped the loop mid-epoch)
    after_train                   the loop ran to its end, or a hook stopped it (final weights, last checkpoint)
    close                         always, also when training raises (release what before_train opened)

How to add a hook (another logger, PreciseBN, another evaluation):

1. Subclass :class:`HookBase` and override the methods you need. Read the state through ``self.trainer``: the
   position (``epoch``, ``batch`` = batches done in this epoch, ``step`` = batches done in all, ``iters_per_epoch``,
   ``max_steps``) and what the trainer defines (the re-id trainer's ``model``, ``eval_model``, ``optimizer``,
   ``lr``, ``parts`` = the losses of the last step, ``metrics`` = the metrics.jsonl writer, ``cfg``...).
2. Give it to the trainer: ``vreid.engine.trainer.train(cfg, hooks=[MyHook()])`` runs it after the built-in hooks
   (it sees each step after it was logged and checkpointed); to make it part of every run, add it to
   :func:`vreid.engine.trainer.build_hooks`. The loop itself never changes.
3. Call ``self.trainer.request_stop()`` to end training after the current step (``after_train`` still runs).

Under DDP every rank runs every hook; a hook that writes files does so on rank 0 (``trainer.is_main``) and must take
the same decisions on every rank when it calls a collective (the checkpoint gathers every rank's RNG state).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from vreid.engine.checkpoint import save_checkpoint
from vreid.fileio import atomic_write_text

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class HookBase:
    """Does nothing at every point of the loop; subclasses override what they need (see the module docstring)."""

    trainer: TrainerBase

    def before_train(self) -> None:
        """Before the trainer builds anything (so what the set-up logs can already be captured)."""

    def before_epoch(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        """After a batch made a step (``trainer.batch`` and ``trainer.step`` count it already)."""

    def after_epoch(self) -> None:
        pass

    def after_train(self) -> None:
        """After the last epoch, or after a hook stopped the loop; not when training raised."""

    def close(self) -> None:
        """Always called once ``before_train`` was, also when training raised: release files, handlers."""


class TrainerBase:
    """The loop: epochs of batches, one :meth:`run_step` per batch, the hooks around it.

    Subclasses set ``iters_per_epoch``, ``max_epochs`` and, on resume, ``start_epoch``/``start_batch``/``resumed`` in
    :meth:`setup`, and define :meth:`batches` and :meth:`run_step`.
    """

    is_main = True  # this process writes the run's files (rank 0 under DDP)

    def __init__(self, hooks: Iterable[HookBase] = ()):
        self.hooks: list[HookBase] = []
        self.epoch = self.batch = 0
        self.start_epoch = self.start_batch = 0
        self.iters_per_epoch, self.max_epochs = 0, 1
        self.resumed = False  # the start position is the one of a checkpoint already on disk
        self.loop_seconds = 0.0  # wall time of the epochs, without set-up and after_train
        self._stop = False
        self.register_hooks(hooks)

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        for hook in hooks:
            hook.trainer = self
            self.hooks.append(hook)

    @property
    def step(self) -> int:
        """Batches done since the start of training (a skipped batch counts: it is a position of the sampler)."""
        return self.epoch * self.iters_per_epoch + self.batch

    @property
    def start_step(self) -> int:
        return self.start_epoch * self.iters_per_epoch + self.start_batch

    @property
    def max_steps(self) -> int:
        return self.max_epochs * self.iters_per_epoch

    def request_stop(self) -> None:
        """End the loop after the current step; ``after_train`` still runs (a checkpoint of this position)."""
        self._stop = True

    def setup(self) -> None:
        """Build the state and restore the checkpoint on resume (called after the hooks' ``before_train``)."""

    def batches(self) -> Iterable[Any]:
        """The batches of ``self.epoch`` from position ``self.batch`` on."""
        raise NotImplementedError

    def run_step(self, batch: Any) -> bool:
        """One optimisation step on ``batch``; False when the batch was skipped (no step made)."""
        raise NotImplementedError

    def checkpoint_state(self) -> dict[str, Any] | None:
        """Everything needed to resume exactly at this position (None on a process that does not write it)."""
        raise NotImplementedError

    def train(self) -> None:
        opened: list[HookBase] = []
        try:
            for hook in self.hooks:
                opened.append(hook)
                hook.before_train()
            self.setup()
            self.epoch, self.batch = self.start_epoch, self.start_batch  # the position, also when no epoch is left
            tick = time.perf_counter()
            for epoch in range(self.start_epoch, self.max_epochs):
                self.epoch = epoch
                self.batch = self.start_batch if self.epoch == self.start_epoch else 0
                self._call("before_epoch")
                for batch in self.batches():
                    self._call("before_step")
                    stepped = self.run_step(batch)
                    self.batch += 1
                    if stepped:
                        self._call("after_step")
                    if self._stop:
                        break
                if self._stop:
                    break
                self._call("after_epoch")
            self.loop_seconds = time.perf_counter() - tick
            self._call("after_train")
        finally:
            for hook in reversed(opened):
                try:
                    hook.close()
                except Exception:  # one hook failing to clean up must not hide the error or skip the others
                    log.exception("%s.close failed", type(hook).__name__)

    def _call(self, name: str) -> None:
        for hook in self.hooks:
            getattr(hook, name)()


class LogFileHook(HookBase):
    """The run's log file: every ``vreid`` log record from ``before_train`` on, the handler removed at ``close``."""

    def __init__(self, path: str | Path, enabled: bool = True, logger: str = "vreid"):
        self.path, self.enabled, self.logger = Path(path), enabled, logger
        self.handler: logging.Handler | None = None

    def before_train(self) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(self.path)
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger(self.logger).addHandler(self.handler)

    def close(self) -> None:
        if self.handler is not None:
            logging.getLogger(self.logger).removeHandler(self.handler)
            self.handler.close()
            self.handler = None


class CheckpointHook(HookBase):
    """``trainer.checkpoint_state()`` written atomically to ``path`` (the previous file kept on a kill, and never
    replaced by non-finite weights: :func:`~vreid.engine.checkpoint.save_checkpoint`).

    Written every ``period`` batches of an epoch (not at its last batch: the epoch's end writes that position, after
    the hooks before this one, e.g. a validation, updated the state), at every epoch's end, and at the end of
    training when that position is not on disk yet (a loop stopped by a hook). ``checkpoint_state`` may be a
    collective (DDP) and return None on the ranks that do not write; the decisions here depend on the position only,
    so every rank takes them together.
    """

    def __init__(self, path: str | Path, period: int = 0):
        self.path, self.period = Path(path), period
        self.saved_at: int | None = None

    def save(self) -> None:
        trainer = self.trainer
        last = self.saved_at if self.saved_at is not None else trainer.start_step if trainer.resumed else None
        if last == trainer.step:
            return
        state = trainer.checkpoint_state()
        if state is not None:
            save_checkpoint(state, self.path)
        self.saved_at = trainer.step

    def after_step(self) -> None:
        batch = self.trainer.batch
        if self.period and batch % self.period == 0 and batch < self.trainer.iters_per_epoch:
            self.save()

    def after_epoch(self) -> None:
        self.save()

    def after_train(self) -> None:
        self.save()


class MetricsLog:
    """A JSON-lines log (one object per line), plus TensorBoard scalars under ``tensorboard_dir`` when installed."""

    def __init__(self, path: str | Path, enabled: bool = True, tensorboard_dir: str | Path | None = None):
        self.path, self.enabled = Path(path), enabled
        self.tb = None
        if enabled and tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(tensorboard_dir))
            except ImportError:
                log.debug("tensorboard not installed: metrics go to %s only", self.path)

    def truncate(self, keep: Callable[[dict[str, Any]], bool], step: int) -> int:
        """On resume: keep only the whole records ``keep`` accepts (those up to the checkpoint's position ``step``),
        so that the steps run again after the checkpoint, and a line cut by a kill, appear once. Returns the count of
        lines dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                ok = keep(json.loads(line))
            except (ValueError, KeyError, TypeError, AttributeError):  # a partial last line, or not one of ours
                ok = False
            kept += [line] if ok else []
            dropped += not ok
        if dropped:
            atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))
            log.info("%s: dropped %d records after the resumed position (step %d)", self.path, dropped, step)
        return dropped

    def write(self, record: dict[str, Any], step: int, scalars_skip: Sequence[str] = ()) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in scalars_skip:
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
