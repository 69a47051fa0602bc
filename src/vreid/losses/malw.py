"""Momentum Adaptive Loss Weight (MALW), the paper's Algorithm 1 (§3.3.2): balances the ID and metric losses.

Every ``interval`` iterations the spread (population std) of the recorded ID and metric losses is compared; when
the ID loss fluctuates more, its weight is pulled toward ``r = std_metric / std_id`` (the paper writes
``1 - (std_id - std_metric) / std_id``, the same number). The metric weight never changes. The caller computes
``w_id * id_loss + w_metric * metric_loss`` with the weights :meth:`MomentumAdaptiveLossWeight.step` returns.

How this differs from the paper's printed algorithm and from the official code (docs/method.md, Losses and MALW):

==================  ===============================  ===============================  ================================
aspect              paper, Algorithm 1               official code                    here (default; alternative)
==================  ===============================  ===============================  ================================
update rule         ``w = α·w + r`` (no ``1-α``)     ``w = 0.9·w + 0.1·r``            ``update="convex"``:
                                                                                      ``w = α·w + (1-α)·r``;
                                                                                      ``update="paper"`` as printed
recorded values     weighted ``w·L``                 raw ``L``                        ``record="raw"``;
                                                                                      ``record="weighted"``
trigger             ``i % k == 0`` from ``i = 0``    when 500 values are recorded     after every ``interval``
                    (first one sees a single value)                                   recorded iterations
K and α             algorithm inputs (500, 0.9)      hard-coded 500 and 0.9           ``interval``, ``momentum``
switch              -                                always on, every model           the caller decides to use it
no metric loss      -                                crashes (``.item()`` on int 0)   ``metric_loss=None``: nothing
                                                                                      recorded, weights unchanged
==================  ===============================  ===============================  ================================

Why these defaults: the convex update is a proper exponential moving average, so ``w_id`` stays between its
initial value and the ratios seen (within [0, 1] from the usual 1.0 start); that fits the rule's purpose, which only
fires when the ID loss is the noisier one and then pulls ``w_id`` toward r < 1. The printed rule has fixed point
``r / (1 - α)`` = 10·std_m/std_id and lets ``w_id`` grow past 1; it is almost surely a typo, kept only as
``update="paper"``. Raw recording is what the released code does (docs/method.md follows the code);
weighted recording (the paper's text) adds feedback, since a smaller ``w_id`` also shrinks the recorded ID spread,
and is available as ``record="weighted"``. Iterations are counted globally (histories are not reset at epoch
boundaries); resuming needs :meth:`~MomentumAdaptiveLossWeight.state_dict`, which includes the partial histories.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

log = logging.getLogger(__name__)

RECORD_MODES = ("raw", "weighted")
UPDATE_RULES = ("convex", "paper")
_STATE_VERSION = 1


def _population_std(values: list[float]) -> float:
    """Standard deviation with ddof=0 (numpy's default, as the official code uses).

    The choice of ddof cannot change MALW's behaviour: both stds share the window length, so their comparison and
    their ratio are the same either way.
    """
    n = len(values)
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)


def _as_float(value: float | torch.Tensor) -> float:
    """A Python float from a number or a one-element tensor (detached first: only the value is recorded)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
    return float(value)


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


class MomentumAdaptiveLossWeight:
    """Stateful ID/metric loss weights updated from the spread of recent losses (paper Algorithm 1).

    Call :meth:`step` once per training iteration with the two unweighted losses; it returns the weights to apply
    to this iteration's losses. After an update at iteration ``interval`` the returned weights already include it
    (as in the official code). Not an ``nn.Module``: it has no tensors; save it with :meth:`state_dict`.
    """

    def __init__(
        self,
        interval: int = 500,
        momentum: float = 0.9,
        id_weight: float = 1.0,
        metric_weight: float = 1.0,
        record: str = "raw",
        update: str = "convex",
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 2:
            raise ValueError(f"interval must be an integer >= 2 (a std needs several values), got {interval!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if record not in RECORD_MODES:
            raise ValueError(f"record must be one of {RECORD_MODES}, got {record!r}")
        if update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {UPDATE_RULES}, got {update!r}")
        self.interval = interval
        self.momentum = float(momentum)
        self.record = record
        self.update = update
        self._id_weight = _check_weight("id_weight", id_weight)
        self._metric_weight = _check_weight("metric_weight", metric_weight)
        self._num_updates = 0
        self._id_history: list[float] = []
        self._metric_history: list[float] = []
        self._warned_no_metric = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(interval={self.interval}, momentum={self.momentum}, "
            f"id_weight={self._id_weight}, metric_weight={self._metric_weight}, record={self.record!r}, "
            f"update={self.update!r})"
        )

    @property
    def id_weight(self) -> float:
        """Current weight of the ID (classification) loss."""
        return self._id_weight

    @property
    def metric_weight(self) -> float:
        """Weight of the metric loss; constant."""
        return self._metric_weight

    @property
    def num_updates(self) -> int:
        """How many times the ID weight has been changed."""
        return self._num_updates

    @property
    def weights(self) -> tuple[float, float]:
        """``(id_weight, metric_weight)``."""
        return self._id_weight, self._metric_weight

    def step(self, id_loss: float | torch.Tensor, metric_loss: float | torch.Tensor | None) -> tuple[float, float]:
        """Record this iteration's losses, update the ID weight at the end of a window, return the weights to use.

        ``id_loss`` and ``metric_loss`` are the unweighted scalar losses (floats, or one-element tensors, read with
        ``float()``). ``metric_loss=None`` (no metric loss configured) records nothing: there is nothing to balance.
        """
        if metric_loss is None:
            if not self._warned_no_metric:
                log.warning("MALW: no metric loss given; loss weights stay at %s", self.weights)
                self._warned_no_metric = True
            return self.weights
        id_value, metric_value = _as_float(id_loss), _as_float(metric_loss)
        if self.record == "weighted":  # the paper's text: record the weighted losses, with the current weights
            id_value *= self._id_weight
            metric_value *= self._metric_weight
        self._id_history.append(id_value)
        self._metric_history.append(metric_value)
        if len(self._id_history) >= self.interval:
            self._end_window()
        return self.weights

    def _end_window(self) -> None:
        std_id = _population_std(self._id_history)
        std_metric = _population_std(self._metric_history)
        count = len(self._id_history)
        self._id_history.clear()
        self._metric_history.clear()
        if not (math.isfinite(std_id) and math.isfinite(std_metric)):
            log.warning(
                "MALW: non-finite loss in the last %d iterations; ID weight left at %.6g", count, self._id_weight
            )
            return
        if std_id <= std_metric:
            log.debug("MALW: std_id %.6g <= std_metric %.6g; ID weight unchanged", std_id, std_metric)
            return
        ratio = std_metric / std_id  # = 1 - (std_id - std_metric) / std_id
        old = self._id_weight
        if self.update == "convex":
            self._id_weight = self.momentum * old + (1.0 - self.momentum) * ratio
        else:
            self._id_weight = self.momentum * old + ratio
        self._num_updates += 1
        log.info(
            "MALW update %d: std_id=%.6g std_metric=%.6g r=%.6g, id_weight %.6g -> %.6g",
            self._num_updates,
            std_id,
            std_metric,
            ratio,
            old,
            self._id_weight,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as plain Python values (JSON- and ``weights_only``-loadable)."""
        return {
            "version": _STATE_VERSION,
            "interval": self.interval,
            "momentum": self.momentum,
            "record": self.record,
            "update": self.update,
            "id_weight": float(self._id_weight),
            "metric_weight": float(self._metric_weight),
            "num_updates": int(self._num_updates),
            "id_history": [float(v) for v in self._id_history],
            "metric_history": [float(v) for v in self._metric_history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights, update count and partial histories saved by :meth:`state_dict`.

        The settings (interval, momentum, record, update) stay those of this instance; a mismatch is logged.
        """
        required = ("id_weight", "metric_weight", "num_updates", "id_history", "metric_history")
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(f"MALW state is missing {', '.join(missing)}")
        id_history = [float(v) for v in state["id_history"]]
        metric_history = [float(v) for v in state["metric_history"]]
        if len(id_history) != len(metric_history):
            raise ValueError(
                f"MALW state has {len(id_history)} id_history values but {len(metric_history)} metric_history values"
            )
        num_updates = state["num_updates"]
        if isinstance(num_updates, bool) or not isinstance(num_updates, int) or num_updates < 0:
            raise ValueError(f"MALW state num_updates must be an integer >= 0, got {num_updates!r}")
        for key in ("interval", "momentum", "record", "update"):
            if key in state and state[key] != getattr(self, key):
                log.warning(
                    "MALW state was saved with %s=%r; keeping this instance's %r", key, state[key], getattr(self, key)
                )
        self._id_weight = _check_weight("id_weight", state["id_weight"])
        self._metric_weight = _check_weight("metric_weight", state["metric_weight"])
        self._num_updates = num_updates
        self._id_history = id_history
        self._metric_history = metric_history
