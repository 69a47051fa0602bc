"""UNIT translation: networks, weight sharing, training, exact resume, folder translation, errors (tiny sizes)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vreid.data.formats.aic21 import read_synthetic
from vreid.engine.checkpoint import load_checkpoint
from vreid.errors import ConfigError, VreidError
from vreid.prep.unit import UnitGenerator, UnitModel, UnitOptions, load_translator, train_unit, translate_folder
from vreid.prep.unit.losses import generator_loss, kl_loss, lsgan_d_loss, lsgan_g_loss
from vreid.prep.unit.train import save_translator

TINY = UnitOptions(image_size=32, width=8, n_downsample=1, n_res=2, n_shared=1, dis_width=8, dis_layers=2,
                   dis_scales=2, batch_size=2, iterations=10, lr=1e-3, log_period=1, sample_period=5,
                   sample_count=2, checkpoint_period=0, workers=0, device="cpu")

_SIZES = [(40, 36), (48, 48), (30, 44), (36, 40), (44, 30), (32, 32)]


def _write_style_folder(root: Path, style: str, n: int = 6) -> Path:
    """Noise textures: 'red' (high R, low G/B) or 'blue' (low R/G, high B); sizes vary; one nested folder."""
    rng = np.random.default_rng(0 if style == "red" else 1)
    for i in range(n):
        w, h = _SIZES[i % len(_SIZES)]
        pixels = rng.integers(0, 80, size=(h, w, 3))
        pixels[..., 0 if style == "red" else 2] = rng.integers(150, 256, size=(h, w))
        path = root / ("nested" if i % 2 else "") / f"{style}_{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
    return root


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: small convolutions run faster and steadier on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return _write_style_folder(tmp_path / "red", "red"), _write_style_folder(tmp_path / "blue", "blue")


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_network_shapes_and_deterministic_translation() -> None:
    torch.manual_seed(0)
    model = UnitModel(width=8, n_downsample=2, n_res=3, n_shared=1, dis_width=4, dis_layers=3, dis_scales=3)
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    mu, z = model.generator.encode(x, "a", sample=True)
    assert mu.shape == (2, 32, 12, 12)  # width * 2**n_downsample channels, H / 2**n_downsample
    assert z.shape == mu.shape and not torch.equal(z, mu)  # training samples z = mu + noise
    mu2, z2 = model.generator.encode(x, "a", sample=False)
    assert torch.equal(mu2, mu) and torch.equal(z2, mu)
    y = model.generator.decode(z, "b")
    assert y.shape == x.shape and y.abs().max() <= 1
    outs = model.dis_b(y)
    assert [o.shape for o in outs] == [(2, 1, 6, 6), (2, 1, 3, 3), (2, 1, 1, 1)]
    assert torch.equal(model.translate_a2b(x), model.translate_a2b(x))  # the mean latent: no noise
    assert model.translate_b2a(x).shape == x.shape
    with pytest.raises(ValueError):
        model.generator.encode(x, "c")


def test_shared_layers_are_the_same_parameters() -> None:
    model = UnitModel(width=4, n_downsample=1, n_res=3, n_shared=2, dis_width=4, dis_layers=2, dis_scales=2)
    assert model.enc_a.shared is model.enc_b.shared and model.gen_a.shared is model.gen_b.shared
    assert len(model.enc_a.shared) == 2 and len(model.gen_a.shared) == 2
    shared_ids = {id(p) for p in model.enc_a.shared.parameters()} | {id(p) for p in model.gen_a.shared.parameters()}
    assert shared_ids == {id(p) for p in model.enc_b.shared.parameters()} | {
        id(p) for p in model.gen_b.shared.parameters()}
    assert shared_ids.isdisjoint(id(p) for p in model.dis_a.parameters())
    # the private parts are separate
    a_private = {id(p) for p in model.enc_a.private.parameters()} | {id(p) for p in model.gen_a.private.parameters()}
    b_private = {id(p) for p in model.enc_b.private.parameters()} | {id(p) for p in model.gen_b.private.parameters()}
    assert a_private.isdisjoint(b_private) and a_private.isdisjoint(shared_ids)
    params = model.generator_parameters()
    assert len(params) == len({id(p) for p in params})  # each shared Parameter handed to Adam once
    assert shared_ids <= {id(p) for p in params}
    # a gradient through domain b alone reaches the parameters the encoder of domain a uses
    model.enc_b(torch.randn(1, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.enc_a.shared.parameters())
    assert all(p.grad is None for p in model.enc_a.private.parameters())


def test_losses() -> None:
    assert kl_loss(torch.full((2, 3), 2.0)).item() == pytest.approx(4.0)
    ones, zeros = [torch.ones(2, 1, 4, 4)] * 2, [torch.zeros(2, 1, 4, 4)] * 2
    assert lsgan_d_loss(zeros, ones).item() == 0.0 and lsgan_d_loss(ones, zeros).item() == pytest.approx(4.0)
    assert lsgan_g_loss(ones).item() == 0.0 and lsgan_g_loss(zeros).item() == pytest.approx(2.0)
    torch.manual_seed(0)
    model = UnitModel(width=4, n_downsample=1, n_res=2, n_shared=1, dis_width=4, dis_layers=2, dis_scales=2)
    x_a, x_b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    torch.manual_seed(1)
    total, parts = generator_loss(model, x_a, x_b)
    torch.manual_seed(1)
    only_gan, _ = generator_loss(model, x_a, x_b, gan_w=1, recon_x_w=0, recon_kl_w=0, recon_x_cyc_w=0,
                                 recon_kl_cyc_w=0)
    expected = (parts["adv_a"] + parts["adv_b"] + 10 * (parts["recon_x_a"] + parts["recon_x_b"])
                + 0.01 * (parts["kl_a"] + parts["kl_b"]) + 10 * (parts["cyc_x_a"] + parts["cyc_x_b"])
                + 0.01 * (parts["kl_cyc_a"] + parts["kl_cyc_b"]))
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    assert only_gan.item() == pytest.approx((parts["adv_a"] + parts["adv_b"]).item(), rel=1e-5)


def test_training_reduces_reconstruction_and_writes_outputs(folders: tuple[Path, Path], tmp_path: Path) -> None:
    red, blue = folders
    out = tmp_path / "run"
    result = train_unit(red, blue, out, dataclasses.replace(TINY, iterations=30, sample_period=10))
    records = _records(out / "losses.jsonl")
    assert [r["iteration"] for r in records] == list(range(1, 31))
    recon = [r["recon_x_a"] + r["recon_x_b"] for r in records]
    first, last = np.mean(recon[:5]), np.mean(recon[-5:])
    assert last < 0.8 * first, (first, last)
    assert result["iteration"] == 30
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "iter_000010.png", "iter_000020.png", "iter_000030.png"]
    with Image.open(out / "samples" / "iter_000030.png") as grid:  # 4 rows x sample_count columns, 2-pixel gaps
        assert grid.size == (2 * 32 + 2, 4 * 32 + 3 * 2)
    state = load_checkpoint(out / "checkpoints" / "last.pth")
    assert state["iteration"] == 30 and {"gen_opt", "dis_opt", "rng", "discriminator"} <= state.keys()
    generator, size = load_translator(out / "translator.pth", device="cpu")
    assert size == 32 and isinstance(generator, UnitGenerator)


def test_resume_is_exact(folders: tuple[Path, Path], tmp_path: Path) -> None:
    red, blue = folders
    full = train_unit(red, blue, tmp_path / "full", TINY)
    part = tmp_path / "part"
    train_unit(red, blue, part, dataclasses.replace(TINY, iterations=6))
    with pytest.raises(VreidError, match="exists"):
        train_unit(red, blue, part, TINY)
    resumed = train_unit(red, blue, part, TINY, resume=True)
    assert full["iteration"] == resumed["iteration"] == 10
    a = load_checkpoint(tmp_path / "full" / "translator.pth")["generator"]
    b = load_checkpoint(part / "translator.pth")["generator"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    da = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pth")["discriminator"]["a"]
    db = load_checkpoint(part / "checkpoints" / "last.pth")["discriminator"]["a"]
    assert all(torch.equal(da[k], db[k]) for k in da)

    def losses(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "iterations_per_second"} for r in _records(run / "losses.jsonl")]

    assert losses(part) == losses(tmp_path / "full")  # no duplicated or missing records either

    # a time limit stops after the first iteration with a translator and a checkpoint; resume finishes exactly
    timed = tmp_path / "timed"
    stopped = train_unit(red, blue, timed, dataclasses.replace(TINY, time_limit=1e-9))
    assert stopped["iteration"] == 1 and (timed / "translator.pth").is_file()
    assert load_checkpoint(timed / "checkpoints" / "last.pth")["iteration"] == 1
    finished = train_unit(red, blue, timed, TINY, resume=True)
    assert finished["iteration"] == 10
    c = load_checkpoint(timed / "translator.pth")["generator"]
    assert all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(VreidError, match="no checkpoint"):
        train_unit(red, blue, tmp_path / "nothing", TINY, resume=True)
    with pytest.raises(VreidError, match="network options"):
        train_unit(red, blue, part, dataclasses.replace(TINY, width=4, iterations=12), resume=True)


def _write_aic21_synthetic(root: Path) -> Path:
    base = root / "AIC21_Track2_ReID_Simulation"
    rng = np.random.default_rng(3)
    names = ["00001_c001_1.jpg", "00001_c002_2.jpg", "00002_c001_3.jpg"]
    for name, (w, h) in zip(names, [(50, 38), (31, 27), (64, 64)], strict=True):
        path = base / "sys_image_train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8), "RGB").save(path, "JPEG")
    Image.new("RGB", (20, 30), (10, 200, 30)).save(base / "sys_image_train" / "extra.png")
    items = "".join(f'<Item imageName="{n}" vehicleID="{n[:5]}" cameraID="{n[6:10]}" orientation="90.0" />\n'
                    for n in names)
    (base / "train_label.xml").write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<TrainingImages>\n<Items>\n'
                                          f'{items}</Items>\n</TrainingImages>\n')
    return base


def test_translate_folder_keeps_layout(tmp_path: Path) -> None:
    options = dataclasses.replace(TINY, image_size=16)
    torch.manual_seed(0)
    generator = UnitModel(3, options.width, options.n_downsample, options.n_res, options.n_shared).generator
    ckpt = save_translator(generator, options, tmp_path / "translator.pth")
    src = _write_aic21_synthetic(tmp_path / "in")
    dst = tmp_path / "out" / "AIC21_Track2_ReID_Simulation"
    assert translate_folder(ckpt, src, dst, batch_size=2, device="cpu") == 4

    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert files(dst) == files(src)
    assert (dst / "train_label.xml").read_bytes() == (src / "train_label.xml").read_bytes()
    for path in (src / "sys_image_train").iterdir():
        with Image.open(path) as a, Image.open(dst / "sys_image_train" / path.name) as b:
            assert a.size == b.size and a.format == b.format
            assert not np.array_equal(np.asarray(a), np.asarray(b))
    # the written image is the generator's translation, resized back
    with Image.open(src / "sys_image_train" / "extra.png") as img:
        x = torch.from_numpy(np.array(img.convert("RGB").resize((16, 16), Image.Resampling.BICUBIC)))
    with torch.no_grad():
        y = generator.translate(x.permute(2, 0, 1)[None].float() / 127.5 - 1, "a2b")[0]
    expected = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    expected = np.asarray(Image.fromarray(expected).resize((20, 30), Image.Resampling.BICUBIC)).astype(int)
    with Image.open(dst / "sys_image_train" / "extra.png") as out_img:
        assert np.abs(np.asarray(out_img).astype(int) - expected).max() <= 1
    # the translated copy reads like the original
    original, translated = read_synthetic(src), read_synthetic(dst)
    assert [(r.path.name, r.vehicle_id, r.camera_id) for r in translated.splits["train"]] == [
        (r.path.name, r.vehicle_id, r.camera_id) for r in original.splits["train"]]
    with pytest.raises(VreidError, match="inside"):
        translate_folder(ckpt, src, src / "translated")
    with pytest.raises(VreidError, match="direction"):
        translate_folder(ckpt, src, tmp_path / "x", direction="a2c")


def test_empty_or_missing_folder_errors(folders: tuple[Path, Path], tmp_path: Path) -> None:
    red, _ = folders
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(VreidError, match=f"{empty}: no images"):
        train_unit(red, empty, tmp_path / "run", TINY)
    with pytest.raises(VreidError, match=f"{tmp_path / 'missing'}: image folder does not exist"):
        train_unit(tmp_path / "missing", red, tmp_path / "run", TINY)
    with pytest.raises(VreidError, match=f"{empty}: no images"):
        translate_folder(tmp_path / "unused.pth", empty, tmp_path / "out")


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="UNIT.IMAGE_SIZE: 32 too small"):
        UnitOptions(image_size=32).check()  # 3 scales x 4 layers need at least 64 pixels
    with pytest.raises(ConfigError, match="UNIT.N_SHARED: 5 must be <= n_res"):
        UnitOptions(n_shared=5).check()
    with pytest.raises(ConfigError, match="UNIT.AMP: 'yes' must be one of"):
        UnitOptions(amp="yes").check()
    with pytest.raises(ConfigError, match="DATALOADER.NUM_WORKERS: -1 must be >= 0"):
        UnitOptions(workers=-1).check()
    with pytest.raises(ConfigError, match="UNIT option crop_min_scale: 0 must be in"):
        UnitOptions(crop_min_scale=0).check()
    UnitOptions().check()
    from vreid.config import load_config
    from vreid.prep.unit.train import check_unit_config

    with pytest.raises(ConfigError, match="UNIT.AMP: 'half' must be one of"):  # from the config, by its key
        check_unit_config(load_config(None, ["UNIT.AMP", "half"]))
    assert UnitOptions.from_dict(UnitOptions().to_dict()) == UnitOptions()


def test_translate_commands_round_trip_through_the_synthetic_reader(tmp_path):
    """vreid prep translate train/apply on a tiny synthetic city; the translated copy reads like the original."""
    from vreid.cli import main
    from vreid.data.formats import load_dataset
    from vreid.data.synth import SynthOptions, generate_city

    city = tmp_path / "city"
    generate_city(city, SynthOptions(num_ids=2, num_sim_ids=2, num_cameras=2, seed=1, min_frames=2, max_frames=2))
    sim = city / "AIC21_Track2_ReID_Simulation"
    out = tmp_path / "unit"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["prep", "translate", "train", "--source", str(sim / "sys_image_train"), "--target",
                     str(city / "AIC21_Track2_ReID" / "image_train"), "OUTPUT_DIR", str(out), "UNIT.IMAGE_SIZE", "64",
                     "UNIT.WIDTH", "8", "UNIT.N_RES", "2", "UNIT.ITERATIONS", "3", "UNIT.SAMPLE_PERIOD", "3",
                     "UNIT.CHECKPOINT_PERIOD", "3"]) == 0
        translated = tmp_path / "translated" / "AIC21_Track2_ReID_Simulation"
        assert main(["prep", "translate", "apply", "--checkpoint", str(out / "translator.pth"), "--in", str(sim),
                     "--out", str(translated)]) == 0
    finally:
        torch.set_num_threads(threads)
    original = load_dataset("aic21_synthetic", sim)
    copy = load_dataset("aic21_synthetic", translated)
    assert [(r.name, r.vehicle_id, r.orientation) for r in copy.train] == [
        (r.name, r.vehicle_id, r.orientation) for r in original.train]
    assert (out / "config.yaml").is_file() and list((out / "samples").glob("*.png"))
