"""``vreid export``: a trained model -> an ONNX file with a dynamic batch, checked against PyTorch on real images."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vreid import __version__
from vreid.data.formats.common import IMAGE_SUFFIXES
from vreid.data.images import read_image
from vreid.data.loader import load_test_dataset
from vreid.data.transforms import build_test_transform
from vreid.engine.checks import check_inference_config
from vreid.engine.inference import load_inference_model
from vreid.engine.runtime import INPUT_NAME, OUTPUT_NAME, OnnxModel
from vreid.errors import VreidError, require_package

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
MIN_COSINE = 0.9999  # parity threshold: every image's PyTorch and ONNX embeddings at least this similar


def export_onnx(model: nn.Module, path: str | Path, size: tuple[int, int], metadata: dict[str, str] | None = None,
                opset: int = 18) -> Path:
    """Export ``model`` (eval mode, images -> features) to ``path`` atomically, batch dimension dynamic."""
    require_package("onnx", "export")
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for chatty in ("onnx_ir", "onnxscript", "torch.onnx"):  # their pass-by-pass INFO lines drown ours
        logging.getLogger(chatty).setLevel(logging.WARNING)
    model = model.eval().to("cpu")
    example = torch.randn(2, 3, *size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: batch},), dynamo=True, external_data=False, opset_version=opset,
                              verbose=False)
        proto = onnx.load(tmp)
        for key, value in {"vreid_version": __version__, **(metadata or {})}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, str(value)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def parity_images(cfg, folder: str | Path | None = None, count: int = 16) -> tuple[torch.Tensor, list[str]]:
    """Up to ``count`` real images, transformed as for testing: from ``folder`` or the test dataset's query/gallery."""
    if folder:
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise VreidError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) for the parity check")
    else:
        try:
            dataset = load_test_dataset(cfg)
        except VreidError as exc:
            raise VreidError(f"no images for the parity check: the test dataset could not be read ({exc}); "
                             "give a folder of images with --images DIR") from None
        paths = [r.path for r in (*dataset["query"], *dataset["gallery"])]
        if not paths:
            raise VreidError("no images for the parity check in the test dataset: give --images DIR")
    if count < 1:
        raise VreidError(f"the parity check needs at least one image, got {count}")
    n = min(count, len(paths))  # n distinct images spread evenly over the list
    picked = [paths[round(i * (len(paths) - 1) / max(1, n - 1))] for i in range(n)]
    transform = build_test_transform(cfg)
    return torch.stack([transform(read_image(p)) for p in picked]), [str(p) for p in picked]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def parity(reference: nn.Module, exported: nn.Module, images: torch.Tensor, batch_size: int = 8) -> dict[str, Any]:
    """Raw (unnormalised) embeddings of both models on the same images, compared image by image."""
    with torch.no_grad():
        ref = torch.cat([reference(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()
        out = torch.cat([exported(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()
    if ref.shape != out.shape:
        raise VreidError(f"exported model gives features of shape {out.shape}, PyTorch {ref.shape}")
    cos = cosine_rows(ref, out)
    return {"images": len(images), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "max_abs_diff": float(np.abs(ref - out).max()), "feature_dim": int(ref.shape[1])}


def run_export(cfg, out: str | Path, fmt: str = "onnx", images: str | Path | None = None, count: int = 16,
               min_cosine: float = MIN_COSINE) -> dict[str, Any]:
    """``vreid export``: export, reload with ONNX Runtime, check parity, and only then put the file at ``out``.

    Below ``min_cosine`` the export goes to ``OUT.rejected.onnx`` instead (an existing ``out`` is left alone).
    """
    if fmt not in FORMATS:
        raise VreidError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    check_inference_config(cfg)
    if str(cfg.TEST.WEIGHT).lower().endswith(".onnx"):
        raise VreidError(f"TEST.WEIGHT {cfg.TEST.WEIGHT} is already an ONNX file: give the PyTorch weights")
    torch.set_num_threads(cfg.TEST.THREADS or torch.get_num_threads())
    model = load_inference_model(cfg, torch.device("cpu"))
    batch, picked = parity_images(cfg, images, count)  # before exporting: a bad folder fails fast
    size = tuple(cfg.INPUT.SIZE_TEST)
    meta = {"backbone": cfg.MODEL.BACKBONE, "input_size": f"{size[0]}x{size[1]}",
            "pixel_mean": list(cfg.INPUT.PIXEL_MEAN), "pixel_std": list(cfg.INPUT.PIXEL_STD),
            "weights": str(cfg.TEST.WEIGHT)}
    out = Path(out)
    candidate = export_onnx(model, out.with_name(f".{out.name}.candidate.onnx"), size, meta)
    result = {"path": str(out), "bytes": candidate.stat().st_size, "size": list(size),
              **parity(model, OnnxModel(candidate, threads=cfg.TEST.THREADS), batch), "image_paths": picked,
              "required_cosine": min_cosine}
    log.info("exported %s (%.1f MB); parity on %d real images: min cosine %.7f, max |diff| %.2e", out,
             result["bytes"] / 2**20, result["images"], result["min_cosine"], result["max_abs_diff"])
    if result["min_cosine"] < min_cosine:
        rejected = out.with_name(f"{out.stem}.rejected.onnx")
        os.replace(candidate, rejected)
        raise VreidError(f"ONNX and PyTorch embeddings differ (min cosine {result['min_cosine']:.6f} < "
                         f"{min_cosine}): {out} not written; the export is in {rejected} for inspection")
    os.replace(candidate, out)
    return result
