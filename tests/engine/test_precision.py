"""SOLVER.AMP auto: the precision each kind of machine gets, with the capability queries faked."""

from __future__ import annotations

import logging

import pytest
import torch

from vreid.config import load_config
from vreid.engine import precision
from vreid.errors import ConfigError


@pytest.mark.parametrize(
    ("device", "cpu_bf16", "cuda_bf16", "expected"),
    [
        ("cpu", True, False, "bf16"),  # AVX512-BF16 / AMX: native bf16
        ("cpu", False, True, "off"),  # emulated bf16 is several times slower than float32
        ("cuda", False, True, "bf16"),  # Ampere and later
        ("cuda", True, False, "fp16"),  # older GPUs: fp16 with a grad scaler
    ],
)
def test_auto_resolves_per_device(monkeypatch, device, cpu_bf16, cuda_bf16, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda: cuda_bf16)
    assert precision.resolve_amp("auto", device) == expected
    assert precision.amp_dtype("auto", device) is {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[expected]


@pytest.mark.parametrize(("setting", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16), ("off", None),
                                                ("fp32", None)])
def test_explicit_values_override_the_machine(monkeypatch, setting, dtype):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.amp_dtype(setting, "cpu") is dtype


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512bw", "fma"}))
    assert not precision.cpu_has_native_bf16()  # AVX-512 alone emulates bf16
    for flag in ("avx512_bf16", "amx_bf16", "bf16"):  # x86 AVX512-BF16, x86 AMX, Arm BF16
        monkeypatch.setattr(precision, "cpu_flags", lambda flag=flag: frozenset({"avx512f", flag}))
        assert precision.cpu_has_native_bf16()


def test_resolution_is_logged_in_one_line(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.INFO, logger="vreid.engine.precision"):
        precision.amp_dtype("auto", "cpu")
    (record,) = caplog.records
    assert "float32" in record.getMessage() and "SOLVER.AMP auto" in record.getMessage()


def test_config_default_is_auto_and_bad_values_name_the_key():
    assert load_config().SOLVER.AMP == "auto"
    from vreid.engine.optim import check_solver_config

    with pytest.raises(ConfigError, match="SOLVER.AMP: 'half' is not one of auto"):
        check_solver_config(load_config(opts=["SOLVER.AMP", "half"]))
