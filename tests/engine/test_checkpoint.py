"""Checkpoints: atomic writes, safe loading, RNG states, final weights in two formats."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from vreid.engine.checkpoint import (
    load_checkpoint,
    model_weights,
    rng_state,
    save_checkpoint,
    save_final_weights,
    set_rng_state,
)
from vreid.engine.ema import ModelEMA
from vreid.errors import VreidError


def test_round_trip_with_weights_only_and_rng(tmp_path):
    torch.manual_seed(3)
    random.seed(4)
    state = {"model": {"w": torch.randn(3)}, "epoch": 2, "batch": 5, "rng": [rng_state()], "best_map": 0.5}
    path = save_checkpoint(state, tmp_path / "c" / "last.pth")
    a, b = torch.rand(2), random.random()
    loaded = torch.load(path, weights_only=True)  # nothing but safe types inside
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["batch"] == 5
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert torch.equal(torch.rand(2), a) and random.random() == b
    assert not list((tmp_path / "c").glob("*.tmp"))  # no temporary left behind


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint({"v": torch.tensor(1)}, tmp_path / "last.pth")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        save_checkpoint({"v": torch.tensor(2)}, path)
    assert load_checkpoint(path)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_unsafe_or_missing_files_are_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"x": object()}, protocol=2))
    with pytest.raises(VreidError, match="evil.pth: not a readable vreid checkpoint"):
        load_checkpoint(evil)
    with pytest.raises(VreidError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pth")


def test_final_weights_pth_and_safetensors_agree(tmp_path):
    weights = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    pth, st = save_final_weights(weights, tmp_path)
    for path in (pth, st):
        loaded = model_weights(path)
        assert set(loaded) == {"a", "b"} and torch.equal(loaded["a"], weights["a"])
    assert model_weights(save_checkpoint({"model": weights, "epoch": 1}, tmp_path / "ck.pth"))["b"].tolist() == [
        0, 1, 2, 3]


def test_ema_is_the_moving_average():
    model = torch.nn.Linear(2, 1)
    ema = ModelEMA(model, decay=0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * w0 + 0.1 * (w0 + 1.0))
    with pytest.raises(ValueError):
        ModelEMA(model, decay=1.0)
