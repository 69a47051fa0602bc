"""ONNX export: dynamic batch, parity with PyTorch, the ONNX Runtime backend of extraction, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED
from vreid.cli import main
from vreid.config import load_config
from vreid.deploy.export import cosine_rows, run_export
from vreid.engine.inference import inference_setup, load_inference_model, resolve_backend
from vreid.engine.runtime import OnnxModel
from vreid.errors import ConfigError, VreidError
from vreid.features import FeatureSet
from vreid.models import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _images(folder, n=6, size=(40, 56)):
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"{i:04d}_c{i % 2 + 1}_{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 'trained' ResNet-18 (random init, perturbed), its weights file and its ONNX export at 64x64."""
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    overrides = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "(64, 64)", "SOLVER.AMP", "off",
                 "TEST.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp / "out")]
    model = build_model(load_config(None, overrides), 3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(model.state_dict(), tmp / "model_final.pth")
    overrides += ["TEST.WEIGHT", str(tmp / "model_final.pth")]
    images = _images(tmp / "images")
    cfg = load_config(None, overrides)
    (tmp / "config.yml").write_text(cfg.dump())  # for the command-line tests
    result = run_export(cfg, tmp / "model.onnx", images=images, count=50)
    return tmp, overrides, result


def test_export_has_dynamic_batch_and_matches_pytorch(exported):
    tmp, overrides, result = exported
    assert result["images"] == 6 and len(set(result["image_paths"])) == 6  # all 6 images, none twice
    assert result["min_cosine"] >= 0.9999 and result["feature_dim"] == 512
    reference = load_inference_model(load_config(None, overrides), torch.device("cpu"))
    onnx_model = OnnxModel(tmp / "model.onnx")
    assert onnx_model.metadata["backbone"] == "resnet18" and onnx_model.metadata["input_size"] == "64x64"
    for batch in (1, 3, 7):  # exported with an example batch of 2: other sizes must work too
        x = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            ref = reference(x).numpy()
        out = onnx_model(x).numpy()
        assert out.shape == (batch, 512)
        assert cosine_rows(ref, out).min() >= 0.9999
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4)


def test_onnxruntime_backend_extracts_the_same_features(exported):
    tmp, overrides, _ = exported
    pt_cfg = load_config(None, [*overrides, "OUTPUT_DIR", str(tmp / "pt")])
    ort_cfg = load_config(None, [*overrides, "OUTPUT_DIR", str(tmp / "ort"), "TEST.WEIGHT", str(tmp / "model.onnx")])
    assert resolve_backend(pt_cfg) == "torch" and resolve_backend(ort_cfg) == "onnxruntime"
    assert isinstance(inference_setup(ort_cfg).model, OnnxModel)
    for cfg, name in ((pt_cfg, "pt"), (ort_cfg, "ort")):
        assert main(["extract", "--images", str(tmp / "images"), "--config-file", str(tmp / "config.yml"),
                     "OUTPUT_DIR", str(tmp / name), "TEST.WEIGHT", cfg.TEST.WEIGHT]) == 0
    a, b = FeatureSet.load(tmp / "pt" / "gallery.npz"), FeatureSet.load(tmp / "ort" / "gallery.npz")
    assert len(a) == 6 and list(a.paths) == list(b.paths)
    assert list(a.vehicle_ids) == [f"{i:04d}" for i in range(6)]  # parsed by DATASETS.FOLDER_PATTERN
    np.testing.assert_allclose(np.linalg.norm(b.features, axis=1), 1.0, atol=1e-5)
    assert cosine_rows(a.features, b.features).min() >= 0.9999


def test_backend_and_file_errors(exported, tmp_path):
    tmp, overrides, _ = exported
    with pytest.raises(ConfigError, match="needs TEST.WEIGHT to be an exported .onnx"):
        resolve_backend(load_config(None, [*overrides, "TEST.BACKEND", "onnxruntime"]))
    with pytest.raises(ConfigError, match="is an ONNX file"):
        resolve_backend(load_config(None, [*overrides, "TEST.BACKEND", "torch", "TEST.WEIGHT", "m.onnx"]))
    with pytest.raises(ConfigError, match=r"INPUT.SIZE_TEST \(128, 128\) differs .* \(64, 64\)"):
        load_inference_model(load_config(None, [*overrides, "TEST.WEIGHT", str(tmp / "model.onnx"),
                                                "INPUT.SIZE_TEST", "(128, 128)"]), torch.device("cpu"))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(VreidError, match="broken.onnx: not a loadable ONNX model"):
        OnnxModel(broken)
    with pytest.raises(VreidError, match="missing.onnx: ONNX model not found"):
        OnnxModel(tmp_path / "missing.onnx")
    cfg = load_config(None, overrides)
    with pytest.raises(VreidError, match="empty: no images"):
        (tmp_path / "empty").mkdir()
        run_export(cfg, tmp_path / "x.onnx", images=tmp_path / "empty")
    assert not (tmp_path / "x.onnx").exists()
    good = (tmp_path / "y.onnx")
    good.write_bytes(b"an earlier, good export")
    with pytest.raises(VreidError, match="embeddings differ"):  # an impossible threshold must fail
        run_export(cfg, good, images=tmp / "images", count=2, min_cosine=1.5)
    assert good.read_bytes() == b"an earlier, good export" and (tmp_path / "y.rejected.onnx").is_file()
    with pytest.raises(VreidError, match="at least one image"):
        run_export(cfg, tmp_path / "w.onnx", images=tmp / "images", count=0)


def test_export_command_prints_parity(exported, tmp_path, capsys):
    tmp, overrides, _ = exported
    assert main(["export", "--config-file", str(tmp / "config.yml"), "TEST.WEIGHT", str(tmp / "model_final.pth"),
                 "--images", str(tmp / "images"), "--parity-images", "3", str(tmp_path / "cli.onnx")]) == 0
    out = capsys.readouterr().out
    assert "dynamic batch" in out and "parity with PyTorch on 3 real images: min cosine" in out
    assert (tmp_path / "cli.onnx").is_file()
    assert main(["export", "--config-file", str(tmp / "config.yml"), "--images", str(tmp_path / "nowhere"),
                 str(tmp_path / "z.onnx")]) == 2
    assert not (tmp_path / "z.onnx").exists()


def test_parity_on_real_vehicles_with_imagenet_mobilenet(shared_vehicle2cam, tmp_path):
    weights = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
    if not weights.is_file():
        pytest.skip("../shared/weights is not present")
    cfg = load_config("configs/vehicle2cam/mobilenetv2.yml", ["MODEL.PRETRAIN_PATH", str(weights),
                                                              "TEST.WEIGHT", ""])
    with pytest.raises(VreidError, match="give the PyTorch weights"):
        run_export(load_config(None, ["TEST.WEIGHT", "a.onnx"]), tmp_path / "a.onnx")
    result = run_export(cfg, tmp_path / "mnv2.onnx", images=shared_vehicle2cam / "images", count=8)
    assert result["images"] == 8 and result["min_cosine"] >= 0.9999


def test_efficientnet_lite_exports_with_tensorflow_padding(tmp_path):
    """SAME padding is computed from the input size at trace time; an odd input size (asymmetric padding at every
    stride-2 layer) must give the same embeddings in ONNX Runtime as in PyTorch."""
    torch.manual_seed(0)
    overrides = ["MODEL.BACKBONE", "efficientnet_lite0", "MODEL.LAST_STRIDE", "2", "INPUT.SIZE_TEST", "(72, 56)",
                 "SOLVER.AMP", "off", "TEST.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "0",
                 "OUTPUT_DIR", str(tmp_path / "out")]
    model = build_model(load_config(None, overrides), 3)
    torch.save(model.state_dict(), tmp_path / "model_final.pth")
    cfg = load_config(None, [*overrides, "TEST.WEIGHT", str(tmp_path / "model_final.pth")])
    result = run_export(cfg, tmp_path / "lite0.onnx", images=_images(tmp_path / "images"), count=6)
    assert result["min_cosine"] >= 0.9999 and result["feature_dim"] == 1280
