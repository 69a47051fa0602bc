"""`vreid extract` and `vreid test` under torchrun: sharded across 2 gloo processes on the CPU, gathered in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vreid.config import load_config
from vreid.data.synth import SynthOptions, generate_city
from vreid.features import FeatureSet
from vreid.models import build_model

ROOT = Path(__file__).resolve().parents[2]
# batch 1 and one thread in every process: each image is computed alone by the same kernels, so sharding
# cannot change a single bit
TINY = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "(32, 32)", "TEST.IMS_PER_BATCH", "1",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.AMP", "off", "TEST.RANKLIST_QUERIES", "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("dist_extract")
    city = tmp / "city"
    generate_city(city, SynthOptions(num_ids=6, num_sim_ids=0, num_cameras=3, seed=2, min_frames=2, max_frames=3))
    torch.manual_seed(0)
    weights = tmp / "model.pth"
    torch.save(build_model(load_config(None, TINY), 3).state_dict(), weights)
    return city, weights


def run(*args: str, nproc: int = 1) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "vreid.cli", *args], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_extract_and_test_under_torchrun_equal_a_single_process(setup, tmp_path):
    city, weights = setup
    common = ["--config-file", str(ROOT / "configs" / "base.yml"), "DATASETS.ROOT_DIR", str(city),
              "DATASETS.TEST", "aic21", "TEST.WEIGHT", str(weights), *TINY]
    run("extract", *common, "OUTPUT_DIR", str(tmp_path / "one"))
    run("extract", *common, "OUTPUT_DIR", str(tmp_path / "two"), nproc=2)
    for split in ("query", "gallery"):
        a, b = FeatureSet.load(tmp_path / "one" / f"{split}.npz"), FeatureSet.load(tmp_path / "two" / f"{split}.npz")
        assert len(a) > 2  # more images than processes, and an odd count in at least one split is fine
        np.testing.assert_array_equal(b.paths, a.paths)  # the original order
        np.testing.assert_array_equal(b.vehicle_ids, a.vehicle_ids)
        np.testing.assert_array_equal(b.features, a.features)
    run("test", *common, "OUTPUT_DIR", str(tmp_path / "test_two"), nproc=2)
    metrics = json.loads((tmp_path / "test_two" / "metrics.json").read_text())  # written once, by rank 0
    assert metrics["num_query"] + metrics["num_skipped"] == len(FeatureSet.load(tmp_path / "one" / "query.npz"))
    for split in ("query", "gallery"):
        a = FeatureSet.load(tmp_path / "one" / f"{split}.npz")
        b = FeatureSet.load(tmp_path / "test_two" / f"{split}.npz")
        np.testing.assert_array_equal(b.paths, a.paths)
        np.testing.assert_array_equal(b.features, a.features)
