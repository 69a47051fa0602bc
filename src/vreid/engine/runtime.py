"""ONNX Runtime as an inference backend: an exported model behind the ``nn.Module`` interface extraction uses.

Tensors go in and come out on the CPU; ONNX Runtime runs on CUDA when its GPU build is installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from vreid.errors import ConfigError, VreidError, require_package

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "images", "features"


class OnnxModel(nn.Module):
    """An exported ``vreid`` model (``vreid export``) run by ONNX Runtime; ``forward(images) -> features``."""

    def __init__(self, path: str | Path, threads: int = 0):
        super().__init__()
        ort = require_package("onnxruntime", "export")
        self.path = Path(path)
        if not self.path.is_file():
            raise VreidError(f"{self.path}: ONNX model not found")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for broken or foreign files
            raise VreidError(f"{self.path}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise VreidError(f"{self.path}: expected one image input of shape (batch, 3, H, W), got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name, self.input_shape = inputs[0].name, list(inputs[0].shape)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def check_input_size(self, size: tuple[int, int], key: str = "INPUT.SIZE_TEST") -> None:
        """The exported graph has a fixed image size: the config's must be the same."""
        fixed = tuple(self.input_shape[2:])
        if all(isinstance(v, int) for v in fixed) and fixed != tuple(size):
            raise ConfigError(f"{key} {tuple(size)} differs from the image size {fixed} that {self.path} was "
                              f"exported with: set {key} '{fixed}' or export again")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
