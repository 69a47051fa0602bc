"""Every section check of a training run, before anything slow starts.

Each builder checks its own config section when it builds (:func:`vreid.data.loader.check_data_config`,
:func:`vreid.models.build.check_model_config`, ...); a training run calls them all here first, so a bad value in
LOSSES fails in a second, not after the dataset has been read and the backbone loaded.
"""

from __future__ import annotations

from vreid.config import check_choice
from vreid.data.loader import check_data_config
from vreid.engine.optim import check_solver_config
from vreid.engine.postprocess import check_test_config
from vreid.engine.precision import AMP_CHOICES
from vreid.losses.compose import check_loss_config
from vreid.models.build import check_model_config

BACKENDS = ("auto", "torch", "onnxruntime")  # TEST.BACKEND: auto = ONNX Runtime for an .onnx TEST.WEIGHT


def check_extraction_config(cfg) -> None:
    """The keys extraction reads besides MODEL: TEST.BACKEND and the precision SOLVER.AMP."""
    check_choice(cfg, "TEST.BACKEND", BACKENDS)
    check_choice(cfg, "SOLVER.AMP", AMP_CHOICES)


def check_training_config(cfg) -> None:
    """Raise a ConfigError naming the first key of ``cfg`` whose value no builder accepts (also the keys
    `vreid train --test` reads after training, so a bad one fails before the training, not after it)."""
    for check in (check_data_config, check_model_config, check_loss_config, check_solver_config, check_test_config,
                  check_extraction_config):
        check(cfg)


def check_inference_config(cfg) -> None:
    """The sections ``vreid test`` / ``extract`` / ``export`` / ``search`` / ``serve`` read."""
    for check in (check_data_config, check_model_config, check_test_config, check_extraction_config):
        check(cfg)
