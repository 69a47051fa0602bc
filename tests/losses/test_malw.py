"""MALW against scripted loss histories whose stds are known by hand."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch

from vreid.losses import MomentumAdaptiveLossWeight
from vreid.losses.malw import _population_std

ID_LOSSES = [1.0, 3.0, 1.0, 3.0]  # population std 1
METRIC_LOSSES = [1.0, 1.5, 1.0, 1.5]  # population std 0.25 -> r = 0.25


def feed(malw: MomentumAdaptiveLossWeight, ids: list[float], metrics: list[float]) -> list[tuple[float, float]]:
    return [malw.step(i, m) for i, m in zip(ids, metrics, strict=True)]


def test_scripted_history_convex() -> None:
    assert np.std(ID_LOSSES) == 1.0 and np.std(METRIC_LOSSES) == 0.25  # independent check of the script
    malw = MomentumAdaptiveLossWeight(interval=4)
    returned = feed(malw, ID_LOSSES, METRIC_LOSSES)
    assert returned[:3] == [(1.0, 1.0)] * 3
    # The update at iteration `interval` already weights that iteration's loss.
    assert returned[3] == pytest.approx((0.9 * 1.0 + 0.1 * 0.25, 1.0), abs=1e-12)
    assert malw.id_weight == pytest.approx(0.925, abs=1e-12)
    assert malw.metric_weight == 1.0
    assert malw.num_updates == 1
    state = malw.state_dict()
    assert state["id_history"] == [] and state["metric_history"] == []
    # Second window: r = 0.25 again -> 0.9 * 0.925 + 0.025.
    feed(malw, ID_LOSSES, METRIC_LOSSES)
    assert malw.id_weight == pytest.approx(0.9 * 0.925 + 0.1 * 0.25, abs=1e-12)
    assert malw.num_updates == 2


def test_population_std_matches_numpy_ddof0() -> None:
    values = [v for v, _ in _random_losses(7, 37)]
    assert _population_std(values) == pytest.approx(float(np.std(values, ddof=0)), rel=1e-12)
    assert _population_std([2.0, 2.0, 2.0]) == 0.0


def test_scripted_history_paper_rule() -> None:
    malw = MomentumAdaptiveLossWeight(interval=4, update="paper")
    returned = feed(malw, ID_LOSSES, METRIC_LOSSES)
    assert returned[3][0] == pytest.approx(0.9 * 1.0 + 0.25, abs=1e-12)
    assert malw.id_weight > 1.0  # the printed rule is not bounded by 1


def test_momentum_is_used() -> None:
    malw = MomentumAdaptiveLossWeight(interval=4, momentum=0.5)
    feed(malw, ID_LOSSES, METRIC_LOSSES)
    assert malw.id_weight == pytest.approx(0.5 * 1.0 + 0.5 * 0.25, abs=1e-12)


@pytest.mark.parametrize(
    ("ids", "metrics"),
    [
        ([1.0, 2.0, 1.0, 2.0], [5.0, 6.0, 5.0, 6.0]),  # equal stds (0.5 each): no update
        ([2.0, 2.0, 2.0, 2.0], [1.0, 3.0, 1.0, 3.0]),  # metric loss fluctuates more
    ],
)
def test_no_update_when_id_std_not_larger(ids: list[float], metrics: list[float]) -> None:
    malw = MomentumAdaptiveLossWeight(interval=4)
    assert feed(malw, ids, metrics)[-1] == (1.0, 1.0)
    assert malw.num_updates == 0
    state = malw.state_dict()
    assert state["id_history"] == [] and state["metric_history"] == []  # cleared even without an update


def test_histories_accumulate_until_interval() -> None:
    malw = MomentumAdaptiveLossWeight(interval=4)
    feed(malw, ID_LOSSES[:3], METRIC_LOSSES[:3])
    assert malw.state_dict()["id_history"] == ID_LOSSES[:3]
    assert malw.state_dict()["metric_history"] == METRIC_LOSSES[:3]
    assert malw.num_updates == 0


def test_weighted_recording() -> None:
    # Raw stds would be 1 vs 0.25 (update); weighted by 0.5 and 2.0 they are 0.5 vs 0.5 (no update).
    malw = MomentumAdaptiveLossWeight(interval=4, id_weight=0.5, metric_weight=2.0, record="weighted")
    feed(malw, ID_LOSSES[:3], METRIC_LOSSES[:3])
    assert malw.state_dict()["id_history"] == [0.5, 1.5, 0.5]
    feed(malw, ID_LOSSES[3:], METRIC_LOSSES[3:])
    assert malw.num_updates == 0 and malw.id_weight == 0.5
    raw = MomentumAdaptiveLossWeight(interval=4, id_weight=0.5, metric_weight=2.0, record="raw")
    feed(raw, ID_LOSSES, METRIC_LOSSES)
    assert raw.id_weight == pytest.approx(0.9 * 0.5 + 0.1 * 0.25, abs=1e-12)


def test_weighted_recording_uses_the_current_weight() -> None:
    malw = MomentumAdaptiveLossWeight(interval=4, metric_weight=0.5, record="weighted")
    feed(malw, ID_LOSSES, METRIC_LOSSES)  # stds 1 and 0.125 -> r = 0.125
    w1 = 0.9 + 0.1 * 0.125
    assert malw.id_weight == pytest.approx(w1, abs=1e-12)
    feed(malw, ID_LOSSES, METRIC_LOSSES)  # ID values now recorded times w1: std w1
    assert malw.id_weight == pytest.approx(0.9 * w1 + 0.1 * 0.125 / w1, abs=1e-12)


def test_no_metric_loss_records_nothing() -> None:
    malw = MomentumAdaptiveLossWeight(interval=2)
    assert [malw.step(v, None) for v in (1.0, 5.0, 1.0)] == [(1.0, 1.0)] * 3
    assert malw.state_dict()["id_history"] == [] and malw.num_updates == 0


def test_non_finite_window_skips_update() -> None:
    malw = MomentumAdaptiveLossWeight(interval=2)
    feed(malw, [1.0, float("nan")], [0.0, 0.0])
    assert malw.id_weight == 1.0 and malw.num_updates == 0 and malw.state_dict()["id_history"] == []


def test_accepts_scalar_tensors() -> None:
    malw = MomentumAdaptiveLossWeight(interval=4)
    feed(malw, [torch.tensor(v, requires_grad=True) for v in ID_LOSSES], [torch.tensor(v) for v in METRIC_LOSSES])
    assert malw.id_weight == pytest.approx(0.925, abs=1e-12)
    assert type(malw.id_weight) is float


def _random_losses(seed: int, n: int) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(rng.uniform(0.5, 5.0), rng.uniform(0.9, 1.1)) for _ in range(n)]


@pytest.mark.parametrize(("record", "update"), [("raw", "convex"), ("weighted", "paper")])
def test_state_dict_round_trip_resumes_exactly(record: str, update: str) -> None:
    first, second = _random_losses(0, 10), _random_losses(1, 10)
    a = MomentumAdaptiveLossWeight(interval=4, record=record, update=update)
    for i, m in first:
        a.step(i, m)
    assert a.num_updates == 2 and len(a.state_dict()["id_history"]) == 2  # saved mid-window
    b = MomentumAdaptiveLossWeight(interval=4, record=record, update=update)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    for i, m in second:
        assert a.step(i, m) == b.step(i, m)
    assert a.state_dict() == b.state_dict()
    assert a.num_updates == 5  # windows end at steps 4, 8, 12, 16, 20


def test_state_dict_is_plain_and_weights_only_loadable() -> None:
    malw = MomentumAdaptiveLossWeight(interval=3)
    for i, m in _random_losses(2, 5):
        malw.step(i, m)
    state = malw.state_dict()
    assert all(type(v) in (int, float, str, list) for v in state.values())
    assert all(type(v) is float for v in state["id_history"] + state["metric_history"])
    buffer = io.BytesIO()
    torch.save({"malw": state}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["malw"]
    assert loaded == state
    fresh = MomentumAdaptiveLossWeight(interval=3)
    fresh.load_state_dict(loaded)
    assert fresh.state_dict() == state


def test_load_state_dict_rejects_incomplete_state() -> None:
    state = MomentumAdaptiveLossWeight().state_dict()
    del state["id_history"]
    with pytest.raises(ValueError, match="id_history"):
        MomentumAdaptiveLossWeight().load_state_dict(state)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"interval": 1}, "interval"),
        ({"interval": 2.5}, "interval"),
        ({"interval": True}, "interval"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": float("nan")}, "momentum"),
        ({"record": "mean"}, "record"),
        ({"update": "ema"}, "update"),
        ({"id_weight": -1.0}, "id_weight"),
        ({"metric_weight": float("inf")}, "metric_weight"),
    ],
)
def test_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MomentumAdaptiveLossWeight(**kwargs)
