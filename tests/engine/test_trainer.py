"""Training end to end on a tiny synthetic city: outputs, exact resume after SIGKILL, NaN stop, test command."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vreid.data.synth import SynthOptions, generate_city

TINY = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TRAIN", "(64, 64)", "INPUT.SIZE_TEST", "(64, 64)",
        "INPUT.PADDING", "4", "INPUT.AUGMIX_PROB", "0.25", "INPUT.RANDOM_PATCH_PROB", "0.0",
        "DATALOADER.NUM_INSTANCE", "2", "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_EPOCHS", "2",
        "SOLVER.LOG_PERIOD", "2", "SOLVER.AMP", "off", "DATALOADER.NUM_WORKERS", "0",
        "LOSSES.NAMES", "('ce', 'supcon')", "LOSSES.MALW.INTERVAL", "3", "MODEL.MIXSTYLE.ENABLED", "True",
        "SOLVER.EMA_DECAY", "0.9", "MODEL.PRETRAIN", "False"]


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("city")
    generate_city(out, SynthOptions(num_ids=16, num_sim_ids=0, num_cameras=3, seed=5, min_frames=2, max_frames=3))
    return out


def vreid(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vreid.cli", *args], capture_output=True, text=True, check=check)


def train_args(city: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config-file", str(Path(__file__).parents[2] / "configs" / "base.yml"),
            "DATASETS.ROOT_DIR", str(city), "DATASETS.TRAIN", "('aic21',)", "DATASETS.TEST", "aic21",
            "OUTPUT_DIR", str(out), *TINY, *extra]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_train_writes_outputs_validates_and_tests(city, tmp_path):
    out = tmp_path / "run"
    vreid(*train_args(city, out, "DATASETS.VAL_IDS", "2", "SOLVER.FREEZE_BACKBONE_EPOCHS", "1"))
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "model_final.pth", "model_final.safetensors",
                 "checkpoints/last.pth", "checkpoints/best.pth"):
        assert (out / name).is_file(), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(rec.get("split") == "validation" and 0 <= rec["mAP"] <= 1 for rec in lines)
    assert all("loss" in rec for rec in lines if "split" not in rec)
    final, last = weights(out / "model_final.pth"), weights(out / "checkpoints" / "last.pth")
    assert (last["epoch"], last["batch"]) == (2, 0)
    # the final weights are the EMA copy (SOLVER.EMA_DECAY 0.9), all of it: the ID classifier too
    assert final.keys() == last["ema"].keys() == last["model"].keys() and "classifier.weight" in final
    assert all(torch.equal(final[k], last["ema"][k]) for k in final)
    assert not all(torch.equal(final[k], last["model"][k]) for k in final)
    result = vreid("test", "--config-file", str(out / "config.yaml"), "TEST.WEIGHT", str(out / "model_final.pth"),
                   "OUTPUT_DIR", str(tmp_path / "test"))
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert set(metrics) >= {"mAP", "rank1", "rank5", "num_query"} and 0 <= metrics["mAP"] <= 1
    assert metrics["num_query"] > 0 and (tmp_path / "test" / "ranklist.png").is_file()
    assert result.returncode == 0
    vreid("extract", "--config-file", str(out / "config.yaml"), "TEST.WEIGHT", str(out / "model_final.pth"),
          "OUTPUT_DIR", str(tmp_path / "feats"))
    from vreid.features import FeatureSet

    gallery = FeatureSet.load(tmp_path / "feats" / "gallery.npz")
    assert len(gallery) == metrics["num_gallery"]
    assert np.allclose(np.linalg.norm(gallery.features, axis=1), 1, atol=1e-5)
    again = vreid(*train_args(city, out), check=False)  # refuses to overwrite a run
    assert again.returncode == 2 and "--resume" in again.stderr


KILL_SCRIPT = """
import os, signal, sys
from vreid.config import load_config
from vreid.engine.hooks import HookBase
from vreid.engine.trainer import train

class KillAt(HookBase):  # after every other hook of the step: its metrics line is written, its checkpoint not
    def after_step(self):
        if self.trainer.step == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)

train(load_config(sys.argv[2], sys.argv[3:]), hooks=[KillAt()])
"""


def test_killed_and_resumed_run_ends_with_the_same_weights(city, tmp_path):
    """SIGKILL at step 8 of 10 (5 per epoch), checkpoints every 2: the run resumes from step 7, mid-epoch 2."""
    extra = ("SOLVER.CHECKPOINT_ITERS", "2", "SOLVER.LOG_PERIOD", "1")
    reference = tmp_path / "reference"
    vreid(*train_args(city, reference, *extra))

    killed = tmp_path / "killed"
    args = train_args(city, killed, *extra)
    assert args[:2] == ["train", "--config-file"]
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(tmp_path / "kill.py"), "8", *args[2:]], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = torch.load(killed / "checkpoints" / "last.pth", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 2)  # epoch 2, batch 2 = step 7
    assert [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()] == [
        1, 2, 3, 4, 5, 6, 7, 8]  # step 8 was logged after the checkpoint: the resumed run must not log it twice
    assert not (killed / "model_final.pth").exists()
    vreid(*args, "--resume")

    a, b = weights(reference / "model_final.pth"), weights(killed / "model_final.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    def records(run: Path) -> list[dict]:  # every line whole, each logged step once, as in an uninterrupted run
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "images_per_s")}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert [r["step"] for r in records(reference)] == list(range(1, 11))
    assert records(killed) == records(reference)  # the same losses and learning rates too


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(city, tmp_path):
    out = tmp_path / "nan"
    result = vreid(*train_args(city, out, "SOLVER.BASE_LR", "1e30", "SOLVER.CHECKPOINT_ITERS", "1",
                               "SOLVER.OPTIMIZER", "sgd"), check=False)
    assert result.returncode == 2
    # step 1 runs on the initial weights and leaves huge but finite ones; the loss of step 2 is not finite
    assert "loss became nan at epoch 1, iteration 2" in result.stderr and "last good checkpoint" in result.stderr
    state = torch.load(out / "checkpoints" / "last.pth", weights_only=True)
    assert (state["epoch"], state["batch"]) == (0, 1)  # the state after step 1, written before step 2 diverged
    floats = [v for v in state["model"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in floats) and max(float(v.abs().max()) for v in floats) > 1e10
    assert not (out / "model_final.pth").exists()


def test_batches_of_only_unreadable_images_are_skipped_not_a_crash(city, tmp_path):
    import shutil

    broken = tmp_path / "city"
    shutil.copytree(city, broken)
    train_images = sorted((broken / "AIC21_Track2_ReID" / "image_train").glob("*.jpg"))
    assert train_images
    for path in train_images:  # every training image: every batch is all unreadable
        path.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    result = vreid(*train_args(broken, out, "DATALOADER.SKIP_UNREADABLE", "True", "SOLVER.MAX_EPOCHS", "1"),
                   check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "every image of the batch is unreadable (on some rank); batch skipped" in result.stderr
    assert "skipped" in result.stderr and (out / "model_final.pth").is_file()
    assert not (out / "metrics.jsonl").exists() or "loss" not in (out / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(city, tmp_path):
    """gloo, 2 ranks x 4 images = the single-process global batch of 8: the same steps, synchronised weights.

    The weights cannot equal a single-process run's: BatchNorm and batch-hard mining see each rank's
    half batch (as in every DDP training without SyncBN).
    """
    single, double = tmp_path / "single", tmp_path / "double"
    extra = ["SOLVER.MAX_EPOCHS", "1", "SOLVER.EMA_DECAY", "0.0"]
    vreid(*train_args(city, single, *extra))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vreid.cli", *train_args(city, double, *extra)], env=env, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [[json.loads(line)["step"] for line in (d / "metrics.jsonl").read_text().splitlines()]
             for d in (single, double)]
    assert steps[0] == steps[1] and steps[0]  # one log (rank 0 only), same number of global steps
    a, b = weights(single / "model_final.pth"), weights(double / "model_final.pth")
    assert a.keys() == b.keys()
    assert all(torch.isfinite(v).all() for v in b.values() if v.is_floating_point())
    state = torch.load(double / "checkpoints" / "last.pth", weights_only=True)
    assert len(state["rng"]) == 2  # every rank's RNG state, so a DDP run resumes exactly too
    assert all(torch.equal(state["model"][k], b[k]) for k in b)  # rank 0 saved the synchronised weights


def test_train_with_test_flag_evaluates_the_final_weights(city, tmp_path):
    """``vreid train --test`` gives the metrics a separate ``vreid test`` of model_final.pth gives."""
    out = tmp_path / "run"
    vreid(*train_args(city, out, "SOLVER.MAX_EPOCHS", "1"), "--test")
    together = json.loads((out / "test" / "metrics.json").read_text())
    vreid("test", "--config-file", str(out / "config.yaml"), "TEST.WEIGHT", str(out / "model_final.pth"),
          "OUTPUT_DIR", str(tmp_path / "separate"))
    separate = json.loads((tmp_path / "separate" / "metrics.json").read_text())
    assert together["num_query"] > 0
    assert together["mAP"] == pytest.approx(separate["mAP"], abs=1e-6)
    assert together["rank1"] == pytest.approx(separate["rank1"], abs=1e-6)


def test_validation_uses_the_test_flip_setting(tmp_path):
    """trainer.validation_metrics embeds as `vreid test` does: with TEST.FLIP, the mean of image and mirror features."""
    from conftest import write_noise_png
    from vreid.config import load_config
    from vreid.data.loader import TrainingData
    from vreid.data.records import ImageRecord
    from vreid.data.transforms import build_test_transform
    from vreid.engine.extract import extract_features
    from vreid.engine.trainer import validation_metrics
    from vreid.retrieval import evaluate, pairwise_distance

    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        path = write_noise_png(tmp_path / f"{i}.png", rng)
        records.append(ImageRecord(path, vehicle_id=str(i % 4), camera_id=f"c{i // 4}"))
    query, gallery = records[:4], records[4:]
    data = TrainingData([], [], [], 0, query, gallery)

    class Asymmetric(torch.nn.Module):  # features that change under a horizontal flip
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, (1, 5))
            torch.nn.init.normal_(self.conv.weight)

        def forward(self, x):
            return self.conv(x).flatten(1)

    model = Asymmetric()
    results = {}
    for flip in (False, True):
        cfg = load_config(None, ["INPUT.SIZE_TEST", "(16, 16)", "TEST.FLIP", str(flip), "SOLVER.CHANNELS_LAST",
                                 "False"])
        got = validation_metrics(cfg, model, data, torch.device("cpu"), None)
        transform = build_test_transform(cfg)
        q = extract_features(model, query, transform, flip=flip, progress=False)
        g = extract_features(model, gallery, transform, flip=flip, progress=False)
        expected = evaluate(pairwise_distance(q.features, g.features), q.vehicle_ids, g.vehicle_ids,
                            q.camera_ids, g.camera_ids)
        assert got["mAP"] == pytest.approx(float(expected["mAP"]))
        results[flip] = got["mAP"]
    assert results[False] != results[True]  # the setting reaches the embeddings


def test_a_custom_hook_sees_every_step_and_the_log_file_is_released(city, tmp_path):
    """``train(cfg, hooks=[...])``: an added hook receives each step (what metrics.jsonl logs); the run's log file
    handler is removed after the run, also when a hook raises."""
    from vreid.config import load_config
    from vreid.engine.hooks import HookBase
    from vreid.engine.trainer import train

    class Recorder(HookBase):
        def __init__(self, fail_at: int = 0):
            self.steps: list[tuple] = []
            self.fail_at = fail_at

        def after_step(self):
            t = self.trainer
            self.steps.append((t.epoch, t.batch, t.step, t.lr, t.parts["loss"]))
            if t.step == self.fail_at:
                raise KeyboardInterrupt  # what Ctrl-C raises mid-run

    vreid_logger = logging.getLogger("vreid")
    handlers = list(vreid_logger.handlers)
    args = train_args(city, tmp_path / "run", "SOLVER.MAX_EPOCHS", "1", "SOLVER.LOG_PERIOD", "1")
    recorder = Recorder()
    train(load_config(args[2], args[3:]), hooks=[recorder])
    assert vreid_logger.handlers == handlers
    assert [s[:3] for s in recorder.steps] == [(0, b, b) for b in range(1, 6)]  # 5 batches per epoch
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["lr"], r["loss"]) for r in logged] == [(s[2], s[3], s[4]) for s in recorder.steps]

    args = train_args(city, tmp_path / "stopped", "SOLVER.MAX_EPOCHS", "1")
    failing = Recorder(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(args[2], args[3:]), hooks=[failing])
    assert vreid_logger.handlers == handlers and len(failing.steps) == 2
    assert not (tmp_path / "stopped" / "model_final.pth").exists()  # after_train does not run after an error
