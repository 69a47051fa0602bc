"""The training loop's machinery (vreid.engine.hooks) on a toy trainer: call order, skipped batches, stops, errors,
the log file handler, checkpoint timing and the metrics log's cut-back on resume."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from vreid.engine.checkpoint import NonFiniteWeights
from vreid.engine.hooks import CheckpointHook, HookBase, LogFileHook, MetricsLog, TrainerBase


class Toy(TrainerBase):
    """``epochs`` x ``iters`` batches; ``skip`` positions make no step; ``fail_at`` raises there."""

    def __init__(self, hooks, epochs=2, iters=2, skip=(), fail_at=None, start=(0, 0)):
        super().__init__(hooks)
        self.events: list = []
        self.settings = epochs, iters, set(skip), fail_at, start
        self.saved: list[int] = []
        self.weight = torch.zeros(1)

    def setup(self):
        self.events.append("setup")
        logging.getLogger("vreid.test").info("set-up line")
        self.max_epochs, self.iters_per_epoch, _, _, start = self.settings
        if start != (0, 0):
            (self.start_epoch, self.start_batch), self.resumed = start, True

    def batches(self):
        return range(self.batch, self.iters_per_epoch)

    def run_step(self, batch):
        _, _, skip, fail_at, _ = self.settings
        self.events.append(("step", self.epoch, batch))
        if (self.epoch, batch) == fail_at:
            raise RuntimeError("step failed")
        return (self.epoch, batch) not in skip

    def checkpoint_state(self):
        self.saved.append(self.step)
        return {"model": {"w": self.weight.clone()}, "step": self.step}


class Recorder(HookBase):
    def __init__(self, name, events):
        self.name, self.events = name, events

    def __getattribute__(self, attr):
        if attr in ("before_train", "before_epoch", "before_step", "after_step", "after_epoch", "after_train",
                    "close"):
            t = object.__getattribute__(self, "trainer")
            events, name = object.__getattribute__(self, "events"), object.__getattribute__(self, "name")
            return lambda: events.append((name, attr, t.epoch, t.batch, t.step))
        return object.__getattribute__(self, attr)


def test_hooks_are_called_in_registration_order_around_each_step():
    events: list = []
    a, b = Recorder("a", events), Recorder("b", events)
    toy = Toy([a, b], epochs=2, iters=2)
    toy.events = events
    toy.train()
    expected = [("a", "before_train", 0, 0, 0), ("b", "before_train", 0, 0, 0), "setup"]
    for epoch in range(2):
        expected += [("a", "before_epoch", epoch, 0, 2 * epoch), ("b", "before_epoch", epoch, 0, 2 * epoch)]
        for batch in range(2):
            step = 2 * epoch + batch
            expected += [("a", "before_step", epoch, batch, step), ("b", "before_step", epoch, batch, step),
                         ("step", epoch, batch), ("a", "after_step", epoch, batch + 1, step + 1),
                         ("b", "after_step", epoch, batch + 1, step + 1)]
        expected += [("a", "after_epoch", epoch, 2, 2 * epoch + 2), ("b", "after_epoch", epoch, 2, 2 * epoch + 2)]
    expected += [("a", "after_train", 1, 2, 4), ("b", "after_train", 1, 2, 4),
                 ("b", "close", 1, 2, 4), ("a", "close", 1, 2, 4)]
    assert events == expected


def test_a_skipped_batch_advances_the_position_without_an_after_step():
    events: list = []
    toy = Toy([Recorder("h", events)], epochs=1, iters=3, skip={(0, 1)})
    toy.train()
    after = [e[4] for e in events if e[1] == "after_step"]
    before = [e[4] for e in events if e[1] == "before_step"]
    assert before == [0, 1, 2] and after == [1, 3]  # the batch at position 1 made no step


def test_resumed_trainer_starts_at_its_position():
    events: list = []
    toy = Toy([Recorder("h", events)], epochs=2, iters=3, start=(1, 2))
    toy.train()
    assert toy.events == ["setup", ("step", 1, 2)]
    assert [e[1] for e in events] == ["before_train", "before_epoch", "before_step", "after_step", "after_epoch",
                                      "after_train", "close"]


def test_an_error_closes_every_opened_hook_and_propagates(tmp_path):
    events: list = []

    class Failing(HookBase):
        def before_train(self):
            raise OSError("cannot open")

    first, third = Recorder("first", events), Recorder("third", events)
    with pytest.raises(OSError, match="cannot open"):
        Toy([first, Failing(), third]).train()
    # the failing hook's close is called too (it may have opened something before failing); the third never opened
    assert [(e[0], e[1]) for e in events] == [("first", "before_train"), ("first", "close")]

    events.clear()
    with pytest.raises(RuntimeError, match="step failed"):
        Toy([first, third], epochs=2, iters=2, fail_at=(1, 0)).train()
    kinds = [(e[0], e[1]) for e in events]
    assert ("first", "after_train") not in kinds and ("first", "after_epoch") in kinds  # epoch 0 ended
    assert kinds[-2:] == [("third", "close"), ("first", "close")]


def test_log_file_handler_captures_the_set_up_and_is_removed_even_after_an_error(tmp_path):
    vreid_logger = logging.getLogger("vreid")
    before = list(vreid_logger.handlers)
    level = vreid_logger.level
    vreid_logger.setLevel(logging.INFO)
    try:
        path = tmp_path / "run" / "log.txt"
        with pytest.raises(RuntimeError):
            Toy([LogFileHook(path)], fail_at=(0, 1)).train()
        assert vreid_logger.handlers == before
        assert "INFO vreid.test: set-up line" in path.read_text()
        logging.getLogger("vreid.test").info("after the run")
        assert "after the run" not in path.read_text()
        disabled = tmp_path / "rank1" / "log.txt"
        Toy([LogFileHook(disabled, enabled=False)]).train()  # the other ranks of a DDP run write no file
        assert not disabled.exists() and vreid_logger.handlers == before
    finally:
        vreid_logger.setLevel(level)


def test_request_stop_ends_after_the_step_and_the_checkpoint_keeps_that_position(tmp_path):
    class StopAt(HookBase):
        def after_step(self):
            if self.trainer.step == 3:
                self.trainer.request_stop()

    events: list = []
    toy = Toy([Recorder("h", events), CheckpointHook(tmp_path / "last.pth", period=2), StopAt()], epochs=2, iters=4)
    toy.train()
    assert [(e[1], e[4]) for e in events if e[1] in ("after_step", "after_epoch", "after_train")] == [
        ("after_step", 1), ("after_step", 2), ("after_step", 3), ("after_train", 3)]
    assert toy.saved == [2, 3]  # the period, then the stopped position at the end
    assert torch.load(tmp_path / "last.pth", weights_only=True)["step"] == 3


def test_checkpoint_every_period_within_epochs_and_at_each_epoch_end(tmp_path):
    toy = Toy([CheckpointHook(tmp_path / "last.pth", period=2)], epochs=2, iters=5)
    toy.train()
    # batches 2 and 4 of each epoch, the epoch ends (5, 10); not again at the end of training
    assert toy.saved == [2, 4, 5, 7, 9, 10]
    toy = Toy([CheckpointHook(tmp_path / "last.pth", period=2)], epochs=2, iters=4)
    toy.train()
    assert toy.saved == [2, 4, 6, 8]  # batch 4 of 4 is the epoch end: written once, after the other hooks
    resumed = Toy([CheckpointHook(tmp_path / "last.pth", period=0)], epochs=2, iters=4, start=(2, 0))
    resumed.train()
    assert resumed.saved == []  # a run resumed at its end does not rewrite the checkpoint it started from


def test_checkpoint_hook_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "last.pth"

    class Poison(HookBase):
        def after_step(self):
            if self.trainer.step == 2:
                self.trainer.weight = torch.tensor([float("nan")])

    toy = Toy([Poison(), CheckpointHook(path, period=1)], epochs=1, iters=3)
    with pytest.raises(NonFiniteWeights, match="last.pth"):
        toy.train()
    assert torch.load(path, weights_only=True)["step"] == 1


def test_metrics_log_keeps_whole_records_up_to_the_resumed_position(tmp_path):
    from vreid.engine.trainer import record_step

    records = [{"epoch": 1 + (s - 1) // 5, "iter": 1 + (s - 1) % 5, "step": s, "loss": 1.0 / s} for s in range(1, 9)]
    records.insert(5, {"epoch": 1, "split": "validation", "mAP": 0.5})  # after epoch 1 = step 5
    lines = [json.dumps(r) for r in records]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + '\n{"epoch": 2, "iter": 4, "st')  # cut by a kill
    log = MetricsLog(path)
    assert log.truncate(lambda r: record_step(r, iters_per_epoch=5) <= 6, step=6) == 3  # steps 7, 8, the partial line
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert kept == records[:7]  # steps 1-5, the validation of epoch 1, step 6
    log.write({"epoch": 2, "iter": 2, "step": 7}, 7)  # the resumed run continues the file
    assert json.loads(path.read_text().splitlines()[-1])["step"] == 7
    assert MetricsLog(path).truncate(lambda r: record_step(r, 5) <= 7, 7) == 0
    assert MetricsLog(tmp_path / "none.jsonl", enabled=False).truncate(lambda r: False, 0) == 0
    log.close()
