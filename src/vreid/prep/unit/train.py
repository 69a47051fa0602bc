"""Training UNIT (Liu, Breuel, Kautz, NeurIPS 2017) on two unpaired image folders.

Domain ``a`` is ``source_dir`` (e.g. VehicleX synthetic crops), domain ``b`` is ``target_dir`` (e.g. CityFlow
real crops). Every iteration updates the discriminators, then the encoders/generators (official order), with
Adam(lr 1e-4, betas (0.5, 0.999), weight decay 1e-4) and the learning rate halved every ``lr_step`` iterations.

Output folder::

    checkpoints/last.pth        everything to resume exactly (weights, optimizers, scalers, iteration, RNG)
    samples/iter_XXXXXX.png     rows: source, source->target, target, target->source (fixed images)
    losses.jsonl                one JSON object per ``log_period`` iterations (means over the period)
    translator.pth              final generator weights + what is needed to rebuild it (for apply.py)
    log.txt                     the log of the run

The batch of iteration ``i`` (which images, crops and flips) is a pure function of ``(seed, i)`` and the
model noise comes from the saved torch RNG, so ``resume=True`` continues bit for bit on the same machine.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vreid.data.formats.common import IMAGE_SUFFIXES
from vreid.data.images import read_image
from vreid.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vreid.engine.precision import AMP_DTYPES
from vreid.errors import ConfigError, VreidError
from vreid.fileio import atomic_write_bytes, atomic_write_text
from vreid.prep.unit.losses import (
    GAN_W,
    RECON_KL_CYC_W,
    RECON_KL_W,
    RECON_X_CYC_W,
    RECON_X_W,
    discriminator_loss,
    generator_loss,
)
from vreid.prep.unit.networks import UnitGenerator, UnitModel, count_parameters

log = logging.getLogger(__name__)

LAST = "last.pth"
TRANSLATOR = "translator.pth"
TRANSLATOR_FORMAT = "vreid-unit-translator"
CHECKPOINT_FORMAT = "vreid-unit-checkpoint"
# Options that fix the network shapes: a checkpoint only resumes/loads with the same values.
ARCH_KEYS = ("image_size", "width", "n_downsample", "n_res", "n_shared", "dis_width", "dis_layers", "dis_scales")


@dataclass
class UnitOptions:
    """UNIT hyper-parameters; defaults from the official release (configs/unit_*.yaml) unless noted."""

    image_size: int = 256  # square training/translation size (official crop 256)
    width: int = 64  # generator channels after the stem (official gen.dim)
    n_downsample: int = 2  # stride-2 convolutions in each encoder (official)
    n_res: int = 4  # residual blocks per encoder and per generator (official)
    n_shared: int = 1  # of which shared between the domains: last of E, first of G (paper's NIPS code)
    dis_width: int = 64  # discriminator channels of the first layer (official dis.dim)
    dis_layers: int = 4  # stride-2 convolutions per discriminator scale (official dis.n_layer)
    dis_scales: int = 3  # multi-scale discriminator scales (official dis.num_scales)
    crop_min_scale: float = 0.8  # random crop of this area fraction..1 (image aspect kept), then resize
    hflip: bool = True
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-4
    lr_step: int = 100_000  # lr *= lr_gamma every lr_step iterations (official step policy)
    lr_gamma: float = 0.5
    batch_size: int = 1  # official value
    iterations: int = 200_000  # official max_iter is 1,000,000
    time_limit: float = 0.0  # stop (checkpoint + translator written) after this many seconds; 0 = no limit
    gan_w: float = GAN_W
    recon_x_w: float = RECON_X_W
    recon_kl_w: float = RECON_KL_W
    recon_x_cyc_w: float = RECON_X_CYC_W
    recon_kl_cyc_w: float = RECON_KL_CYC_W
    sample_period: int = 1000  # write samples/iter_XXXXXX.png every this many iterations (0: only at the end)
    sample_count: int = 4  # images per row of the sample grid (official display_size)
    checkpoint_period: int = 10_000  # also written at the end (official snapshot_save_iter)
    log_period: int = 10
    seed: int = 0
    amp: str = "off"  # "off", "bf16" or "fp16"; used on a GPU only
    workers: int = 4  # image-decoding worker processes
    device: str = ""  # "" = cuda when available, else cpu

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option."""
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"UNIT option {name}={getattr(self, name)!r}: {msg}")

        for name in ("width", "n_res", "dis_width", "dis_layers", "dis_scales", "batch_size", "iterations",
                     "sample_count", "lr_step", "log_period"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        for name in ("n_downsample", "n_shared", "sample_period", "checkpoint_period", "workers", "seed"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.n_shared <= self.n_res, "n_shared", f"must be <= n_res ({self.n_res})")
        need(self.image_size % 2 ** self.n_downsample == 0, "image_size",
             f"must be a multiple of 2**n_downsample = {2 ** self.n_downsample}")
        smallest = self.image_size // 2 ** (self.dis_scales - 1) // 2 ** (self.dis_layers - 1)
        need(smallest >= 2, "image_size",
             f"too small for {self.dis_scales} discriminator scales of {self.dis_layers} layers "
             "(lower dis_scales or dis_layers)")
        need(0 < self.crop_min_scale <= 1, "crop_min_scale", "must be in (0, 1]")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.time_limit >= 0, "time_limit", "must be >= 0 (0 = no limit)")
        need(self.amp in AMP_DTYPES, "amp", f"must be one of {sorted(AMP_DTYPES)}")

    def architecture(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ARCH_KEYS}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return cls(**kwargs)


def build_model(options: UnitOptions) -> UnitModel:
    return UnitModel(3, options.width, options.n_downsample, options.n_res, options.n_shared,
                     options.dis_width, options.dis_layers, options.dis_scales)


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); VreidError naming the folder if missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VreidError(f"{folder}: image folder does not exist or is not a folder")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise VreidError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found in this folder or below")
    return images


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float (3, H, W) in [-1, 1]."""
    t = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
    return t.permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_image(t: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> PIL RGB."""
    array = t.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray(array.cpu().numpy(), "RGB")


def augment(image: Image.Image, size: int, min_scale: float, hflip: bool, rng: random.Random) -> Image.Image:
    """Random crop of area fraction in [min_scale, 1] keeping the image's aspect, resize to size x size, flip."""
    w, h = image.size
    side = math.sqrt(rng.uniform(min_scale, 1.0))
    cw, ch = max(1, round(w * side)), max(1, round(h * side))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((x0, y0, x0 + cw, y0 + ch)).resize((size, size), Image.Resampling.BICUBIC)
    if hflip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


class _PairDataset(torch.utils.data.Dataset):
    """Item ``(index_a, index_b, aug_seed)`` -> (augmented image of a, augmented image of b)."""

    def __init__(self, images_a: Sequence[Path], images_b: Sequence[Path], options: UnitOptions):
        self.images = (images_a, images_b)
        self.options = options

    def __len__(self) -> int:
        return max(len(self.images[0]), len(self.images[1]))

    def __getitem__(self, key: tuple[int, int, str]) -> tuple[torch.Tensor, torch.Tensor]:
        index_a, index_b, seed = key
        o = self.options
        out = []
        for domain, index in ((0, index_a), (1, index_b)):
            rng = random.Random(f"{seed}:{domain}")
            out.append(to_tensor(augment(read_image(self.images[domain][index]), o.image_size,
                                         o.crop_min_scale, o.hflip, rng)))
        return out[0], out[1]


class _IterationSampler:
    """Batches for iterations ``start..end-1``: each domain walks its own per-epoch permutation (seeded)."""

    def __init__(self, sizes: tuple[int, int], batch_size: int, seed: int, start: int, end: int):
        self.sizes, self.batch_size, self.seed = sizes, batch_size, seed
        self.start, self.end = start, end
        self._perm: dict[int, tuple[int, torch.Tensor]] = {}

    def _index(self, domain: int, position: int) -> int:
        n = self.sizes[domain]
        epoch = position // n
        cached = self._perm.get(domain)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 2 + domain)
            cached = (epoch, torch.randperm(n, generator=g))
            self._perm[domain] = cached
        return int(cached[1][position % n])

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int, str]]]:
        for it in range(self.start, self.end):
            batch = []
            for k in range(self.batch_size):
                pos = it * self.batch_size + k
                batch.append((self._index(0, pos), self._index(1, pos), f"{self.seed}:{it}:{k}"))
            yield batch


def _load_fixed(images: Sequence[Path], count: int, size: int) -> torch.Tensor:
    picked = [images[round(i * (len(images) - 1) / max(1, count - 1))] for i in range(min(count, len(images)))]
    return torch.stack([to_tensor(read_image(p).resize((size, size), Image.Resampling.BICUBIC)) for p in picked])


def _save_grid(rows: Sequence[torch.Tensor], path: Path) -> Path:
    """Rows of (N, 3, S, S) images in [-1, 1] -> one PNG, 2-pixel white gaps."""
    n, s, gap = rows[0].shape[0], rows[0].shape[-1], 2
    canvas = torch.ones(3, len(rows) * (s + gap) - gap, n * (s + gap) - gap)
    for r, row in enumerate(rows):
        for c in range(n):
            canvas[:, r * (s + gap):r * (s + gap) + s, c * (s + gap):c * (s + gap) + s] = row[c].float().cpu()
    buffer = io.BytesIO()
    to_image(canvas).save(buffer, "PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def _device(options: UnitOptions) -> torch.device:
    if options.device:
        return torch.device(options.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def save_translator(generator: UnitGenerator, options: UnitOptions, path: str | Path, iteration: int = 0) -> Path:
    """``translator.pth``: the generator weights and the options that rebuild it (read by apply.py)."""
    return save_checkpoint({
        "format": TRANSLATOR_FORMAT, "version": 1, "iteration": iteration, "model": options.architecture(),
        "options": options.to_dict(),
        "generator": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
    }, path)


def _truncate_log(path: Path, iteration: int) -> None:
    """Drop records past ``iteration`` (written after the checkpoint a resumed run starts from)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train_unit(source_dir: str | Path, target_dir: str | Path, out_dir: str | Path, options: UnitOptions | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Train UNIT from ``source_dir`` (domain a) to ``target_dir`` (domain b); see the module docstring.

    Returns ``{"iteration", "checkpoint", "translator", "losses", "samples", "last_losses", "seconds",
    "iterations_per_second", "generator_parameters", "discriminator_parameters"}``.
    """
    options = options or UnitOptions()
    options.validate()
    out = Path(out_dir)
    ckpt_path = out / "checkpoints" / LAST
    if resume and not ckpt_path.is_file():
        raise VreidError(f"resume: no checkpoint at {ckpt_path}")
    if not resume and ckpt_path.is_file():
        raise VreidError(f"{ckpt_path} exists: resume to continue that run, or choose another output folder")
    images_a, images_b = find_images(source_dir), find_images(target_dir)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("vreid").addHandler(handler)
    try:
        return _train(images_a, images_b, out, options, resume)
    finally:
        logging.getLogger("vreid").removeHandler(handler)
        handler.close()


def _train(images_a: list[Path], images_b: list[Path], out: Path, options: UnitOptions,
           resume: bool) -> dict[str, Any]:
    device = _device(options)
    amp_dtype = AMP_DTYPES[options.amp]
    if amp_dtype is not None and device.type != "cuda":
        log.warning("UNIT amp=%s is used on a GPU only: training in float32 on %s", options.amp, device)
        amp_dtype = None
    ckpt_path = out / "checkpoints" / LAST
    losses_path = out / "losses.jsonl"

    random.seed(options.seed)
    torch.manual_seed(options.seed)
    model = build_model(options).to(device)
    gen_params, dis_params = model.generator_parameters(), model.discriminator_parameters()
    adam = {"lr": options.lr, "betas": tuple(options.betas), "weight_decay": options.weight_decay}
    gen_opt = torch.optim.Adam(gen_params, **adam)
    dis_opt = torch.optim.Adam(dis_params, **adam)
    fp16 = amp_dtype is torch.float16
    scaler_g = torch.amp.GradScaler(device.type, enabled=fp16)
    scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
    log.info("UNIT: %d source (a) and %d target (b) images, %d generator + %d discriminator parameters, "
             "device %s, amp %s", len(images_a), len(images_b), count_parameters(model.generator),
             count_parameters(model.dis_a) + count_parameters(model.dis_b), device, options.amp)

    start = 0
    if resume:
        state = load_checkpoint(ckpt_path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise VreidError(f"{ckpt_path}: not a UNIT training checkpoint")
        saved = UnitOptions.from_dict(state["options"])
        if saved.architecture() != options.architecture():
            raise VreidError(f"{ckpt_path}: network options {saved.architecture()} differ from the requested "
                             f"{options.architecture()}")
        changed = {k: v for k, v in options.to_dict().items() if state["options"].get(k) != v}
        if changed:
            log.info("resuming with changed options: %s", changed)
        model.generator.load_state_dict(state["generator"])
        model.dis_a.load_state_dict(state["discriminator"]["a"])
        model.dis_b.load_state_dict(state["discriminator"]["b"])
        gen_opt.load_state_dict(state["gen_opt"])
        dis_opt.load_state_dict(state["dis_opt"])
        if fp16 and state.get("scaler_g"):
            scaler_g.load_state_dict(state["scaler_g"])
            scaler_d.load_state_dict(state["scaler_d"])
        start = int(state["iteration"])
        set_rng_state(state["rng"])
        _truncate_log(losses_path, start)
        log.info("resumed from %s at iteration %d", ckpt_path, start)

    def save(iteration: int) -> None:
        save_checkpoint({
            "format": CHECKPOINT_FORMAT, "version": 1, "iteration": iteration,
            "model": options.architecture(), "options": options.to_dict(),
            "generator": model.generator.state_dict(),
            "discriminator": {"a": model.dis_a.state_dict(), "b": model.dis_b.state_dict()},
            "gen_opt": gen_opt.state_dict(), "dis_opt": dis_opt.state_dict(),
            "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
            "rng": rng_state(),
        }, ckpt_path)

    fixed_a = _load_fixed(images_a, options.sample_count, options.image_size).to(device)
    fixed_b = _load_fixed(images_b, options.sample_count, options.image_size).to(device)
    samples: list[str] = []

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def write_samples(iteration: int) -> None:
        with torch.no_grad(), autocast():  # the mean latent: no noise, so the RNG stream is untouched
            rows = [fixed_a, model.translate_a2b(fixed_a), fixed_b, model.translate_b2a(fixed_b)]
        samples.append(str(_save_grid(rows, out / "samples" / f"iter_{iteration:06d}.png")))

    sampler = _IterationSampler((len(images_a), len(images_b)), options.batch_size, options.seed,
                                start, options.iterations)
    loader = torch.utils.data.DataLoader(
        _PairDataset(images_a, images_b, options), batch_sampler=sampler, num_workers=options.workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(options.seed),
        persistent_workers=False)
    weights = {"recon_x_w": options.recon_x_w, "recon_kl_w": options.recon_kl_w,
               "recon_x_cyc_w": options.recon_x_cyc_w, "recon_kl_cyc_w": options.recon_kl_cyc_w}

    iteration, sums, count, last = start, {}, 0, {}
    t0, t_log = time.perf_counter(), time.perf_counter()
    model.train()
    for x_a, x_b in loader:
        lr = options.lr * options.lr_gamma ** (iteration // options.lr_step)
        for opt in (gen_opt, dis_opt):
            for group in opt.param_groups:
                group["lr"] = lr
        x_a = x_a.to(device, non_blocking=True)
        x_b = x_b.to(device, non_blocking=True)

        with autocast():
            d_loss, d_stats = discriminator_loss(model, x_a, x_b, gan_w=options.gan_w)
        dis_opt.zero_grad(set_to_none=True)
        scaler_d.scale(d_loss).backward()
        scaler_d.step(dis_opt)
        scaler_d.update()

        model.dis_a.requires_grad_(False)  # D is only a critic in the generator step
        model.dis_b.requires_grad_(False)
        with autocast():
            g_loss, g_stats = generator_loss(model, x_a, x_b, gan_w=options.gan_w, **weights)
        gen_opt.zero_grad(set_to_none=True)
        scaler_g.scale(g_loss).backward()
        scaler_g.step(gen_opt)
        scaler_g.update()
        model.dis_a.requires_grad_(True)
        model.dis_b.requires_grad_(True)
        iteration += 1

        for k, v in {**d_stats, **g_stats}.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        count += 1
        if iteration % options.log_period == 0 or iteration == options.iterations:
            last = {k: float(v) / count for k, v in sums.items()}
            if not all(math.isfinite(v) for v in last.values()):
                raise VreidError(f"UNIT training diverged at iteration {iteration} (non-finite loss: {last}); "
                                 f"{ckpt_path} holds the last good state: lower lr and resume")
            now = time.perf_counter()
            record = {"iteration": iteration, "lr": lr, **last,
                      "iterations_per_second": count / max(now - t_log, 1e-9)}
            with losses_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            log.info("UNIT iter %d/%d  D %.4f  G %.4f  recon %.4f  cyc %.4f  (%.2f it/s)", iteration,
                     options.iterations, last["d_total"], last["g_total"], last["recon_x_a"] + last["recon_x_b"],
                     last["cyc_x_a"] + last["cyc_x_b"], record["iterations_per_second"])
            sums, count, t_log = {}, 0, now
        if options.sample_period and iteration % options.sample_period == 0:
            write_samples(iteration)
        if options.checkpoint_period and iteration % options.checkpoint_period == 0 and iteration < options.iterations:
            save(iteration)
        if options.time_limit and time.perf_counter() - t0 >= options.time_limit and iteration < options.iterations:
            log.info("UNIT: time limit of %.0f s reached at iteration %d/%d; resume to continue",
                     options.time_limit, iteration, options.iterations)
            break

    seconds = time.perf_counter() - t0
    if iteration > start or not ckpt_path.exists():
        save(iteration)
    if not samples or not samples[-1].endswith(f"iter_{iteration:06d}.png"):
        write_samples(iteration)
    translator = save_translator(model.generator, options, out / TRANSLATOR, iteration)
    log.info("UNIT: %d iterations done, translator written to %s", iteration, translator)
    return {
        "iteration": iteration, "checkpoint": str(ckpt_path), "translator": str(translator),
        "losses": str(losses_path), "samples": samples, "last_losses": last, "seconds": seconds,
        "iterations_per_second": (iteration - start) / seconds if seconds > 0 and iteration > start else 0.0,
        "generator_parameters": count_parameters(model.generator),
        "discriminator_parameters": count_parameters(model.dis_a) + count_parameters(model.dis_b),
    }


def unit_options(cfg):
    """``cfg.UNIT`` -> the translator's options (the one place that maps them)."""
    u = cfg.UNIT
    return UnitOptions(image_size=u.IMAGE_SIZE, width=u.WIDTH, n_downsample=u.N_DOWNSAMPLE, n_res=u.N_RES,
                       n_shared=u.N_SHARED, dis_width=u.DIS_WIDTH, dis_layers=u.DIS_LAYERS,
                       dis_scales=u.DIS_SCALES, batch_size=u.BATCH_SIZE, iterations=u.ITERATIONS, lr=u.LR,
                       gan_w=u.GAN_W, recon_x_w=u.RECON_X_W, recon_kl_w=u.RECON_KL_W,
                       recon_x_cyc_w=u.RECON_X_CYC_W, recon_kl_cyc_w=u.RECON_KL_CYC_W,
                       sample_period=u.SAMPLE_PERIOD, checkpoint_period=u.CHECKPOINT_PERIOD, amp=u.AMP,
                       time_limit=u.TIME_LIMIT,
                       seed=cfg.SEED, workers=cfg.DATALOADER.NUM_WORKERS)
