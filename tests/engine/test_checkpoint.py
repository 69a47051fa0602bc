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
    with pytest.raises(VreidError, match=r"last.pth: cannot write \(disk full\)"):  # one line, not a traceback
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


@pytest.mark.parametrize("where", ["parameter", "buffer", "ema", "inf"])
def test_non_finite_weights_are_never_written_over_a_good_checkpoint(tmp_path, where):
    from vreid.engine.checkpoint import NonFiniteWeights, save_final_weights

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    good = {"model": model.state_dict(), "ema": model.state_dict(), "epoch": 1,
            "optimizer": {"state": {0: {"exp_avg_sq": torch.tensor([float("inf")])}}}}  # not weights: allowed
    path = save_checkpoint(good, tmp_path / "last.pth")
    broken = {k: v.clone() for k, v in model.state_dict().items()}
    key, value = {"parameter": ("0.weight", float("nan")), "buffer": ("1.running_var", float("nan")),
                  "ema": ("0.bias", float("nan")), "inf": ("0.bias", float("-inf"))}[where]
    broken[key].view(-1)[0] = value
    state = {**good, "ema": broken} if where == "ema" else {**good, "model": broken}
    with pytest.raises(NonFiniteWeights, match=rf"last.pth: not written.*{key.replace('.', '.')}"):
        save_checkpoint({**state, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1  # the good one stays
    with pytest.raises(NonFiniteWeights, match="model_final.pth: not written"):
        save_final_weights(broken, tmp_path)
    assert not (tmp_path / "model_final.pth").exists() and not (tmp_path / "model_final.safetensors").exists()


def test_one_reader_for_every_weights_layout(tmp_path):
    """DDP's ``module.`` prefix and nesting under ``state_dict``/``model`` read the same from .pth and .safetensors
    (the two readers this replaced disagreed: only one stripped ``module.``, only the other read safetensors)."""
    from safetensors.torch import save_file

    weights = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    ddp = {f"module.{k}": v for k, v in weights.items()}
    torch.save(ddp, tmp_path / "ddp.pth")
    torch.save({"state_dict": weights, "epoch": 3}, tmp_path / "nested.pth")
    save_file(ddp, str(tmp_path / "ddp.safetensors"))
    for name in ("ddp.pth", "nested.pth", "ddp.safetensors"):
        loaded = model_weights(tmp_path / name)
        assert set(loaded) == {"a", "b"}, name
        assert torch.equal(loaded["a"], weights["a"]) and torch.equal(loaded["b"], weights["b"]), name
