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
import logging
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vreid.config import get_defaults
from vreid.data.formats.common import IMAGE_SUFFIXES
from vreid.data.images import read_image
from vreid.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from vreid.engine.distributed import default_device
from vreid.engine.hooks import CheckpointHook, HookBase, LogFileHook, MetricsLog, TrainerBase
from vreid.engine.precision import AMP_DTYPES
from vreid.errors import ConfigError, VreidError
from vreid.fileio import atomic_write_bytes
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
from vreid.runfiles import CHECKPOINT_DIR, LAST_CHECKPOINT, LOG_FILE, LOSSES_FILE, SAMPLES_DIR, TRANSLATOR_FILE

log = logging.getLogger(__name__)

TRANSLATOR_FORMAT = "vreid-unit-translator"
CHECKPOINT_FORMAT = "vreid-unit-checkpoint"
# Options that fix the network shapes: a checkpoint only resumes/loads with the same values.
ARCH_KEYS = ("image_size", "width", "n_downsample", "n_res", "n_shared", "dis_width", "dis_layers", "dis_scales")


_UNIT = get_defaults().UNIT  # the defaults of every option config.py maps (UNIT.*) are written there, once
_CONFIG_KEYS = {"workers": "DATALOADER.NUM_WORKERS", "seed": "SEED"}  # options not under UNIT.*


@dataclass
class UnitOptions:
    """UNIT hyper-parameters; defaults from the official release (configs/unit_*.yaml) unless noted."""

    image_size: int = _UNIT.IMAGE_SIZE  # square training/translation size (official crop 256)
    width: int = _UNIT.WIDTH  # generator channels after the stem (official gen.dim)
    n_downsample: int = _UNIT.N_DOWNSAMPLE  # stride-2 convolutions in each encoder (official)
    n_res: int = _UNIT.N_RES  # residual blocks per encoder and per generator (official)
    n_shared: int = _UNIT.N_SHARED  # of which shared between the domains: last of E, first of G (paper's NIPS code)
    dis_width: int = _UNIT.DIS_WIDTH  # discriminator channels of the first layer (official dis.dim)
    dis_layers: int = _UNIT.DIS_LAYERS  # stride-2 convolutions per discriminator scale (official dis.n_layer)
    dis_scales: int = _UNIT.DIS_SCALES  # multi-scale discriminator scales (official dis.num_scales)
    crop_min_scale: float = 0.8  # random crop of this area fraction..1 (image aspect kept), then resize
    hflip: bool = True
    lr: float = _UNIT.LR
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-4
    lr_step: int = 100_000  # lr *= lr_gamma every lr_step iterations (official step policy)
    lr_gamma: float = 0.5
    batch_size: int = _UNIT.BATCH_SIZE  # official value
    iterations: int = _UNIT.ITERATIONS  # official max_iter is 1,000,000
    time_limit: float = _UNIT.TIME_LIMIT  # stop (checkpoint + translator written) after this many seconds; 0: none
    gan_w: float = GAN_W
    recon_x_w: float = RECON_X_W
    recon_kl_w: float = RECON_KL_W
    recon_x_cyc_w: float = RECON_X_CYC_W
    recon_kl_cyc_w: float = RECON_KL_CYC_W
    sample_period: int = _UNIT.SAMPLE_PERIOD  # samples/iter_XXXXXX.png every N iterations (0: at the end)
    sample_count: int = 4  # images per row of the sample grid (official display_size)
    checkpoint_period: int = _UNIT.CHECKPOINT_PERIOD  # also written at the end (official snapshot_save_iter)
    log_period: int = 10
    seed: int = 0
    amp: str = _UNIT.AMP  # "off", "bf16" or "fp16"; used on a GPU only
    workers: int = 4  # image-decoding worker processes
    device: str = ""  # "" = cuda when available, else cpu

    def check(self) -> None:
        """Raise ConfigError naming the first bad option (by its config key where the config sets it)."""
        def need(ok: bool, name: str, msg: str) -> None:
            if not ok:
                key = _CONFIG_KEYS.get(name, f"UNIT.{name.upper()}" if name.upper() in _UNIT else "")
                what = f"{key}" if key else f"UNIT option {name}"
                raise ConfigError(f"{what}: {getattr(self, name)!r} {msg}")

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


def build_unit_model(options: UnitOptions) -> UnitModel:
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
    return default_device()


def save_translator(generator: UnitGenerator, options: UnitOptions, path: str | Path, iteration: int = 0) -> Path:
    """``translator.pth``: the generator weights and the options that rebuild it (read by apply.py)."""
    return save_checkpoint({
        "format": TRANSLATOR_FORMAT, "version": 1, "iteration": iteration, "model": options.architecture(),
        "options": options.to_dict(),
        "generator": {k: v.detach().cpu() for k, v in generator.state_dict().items()},
    }, path)


class UnitTrainer(TrainerBase):
    """UNIT's state and step: one "epoch" of ``options.iterations`` steps, discriminators then generators."""

    def __init__(self, images_a: list[Path], images_b: list[Path], out: Path, options: UnitOptions, resume: bool,
                 hooks: Sequence[HookBase] = ()):
        super().__init__(hooks)
        self.images_a, self.images_b, self.out, self.options, self.resume = images_a, images_b, out, options, resume
        self.ckpt_path = out / CHECKPOINT_DIR / LAST_CHECKPOINT
        self.iters_per_epoch, self.max_epochs = options.iterations, 1
        self.lr, self.stats = options.lr, {}  # of the last step

    def setup(self) -> None:
        options = self.options
        self.device = device = _device(options)
        self.amp_dtype = AMP_DTYPES[options.amp]
        if self.amp_dtype is not None and device.type != "cuda":
            log.warning("UNIT amp=%s is used on a GPU only: training in float32 on %s", options.amp, device)
            self.amp_dtype = None
        random.seed(options.seed)
        torch.manual_seed(options.seed)
        self.model = model = build_unit_model(options).to(device)
        adam = {"lr": options.lr, "betas": tuple(options.betas), "weight_decay": options.weight_decay}
        self.gen_opt = torch.optim.Adam(model.generator_parameters(), **adam)
        self.dis_opt = torch.optim.Adam(model.discriminator_parameters(), **adam)
        self.fp16 = self.amp_dtype is torch.float16
        self.scaler_g = torch.amp.GradScaler(device.type, enabled=self.fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=self.fp16)
        log.info("UNIT: %d source (a) and %d target (b) images, %d generator + %d discriminator parameters, "
                 "device %s, amp %s", len(self.images_a), len(self.images_b), count_parameters(model.generator),
                 count_parameters(model.dis_a) + count_parameters(model.dis_b), device, options.amp)
        self.losses = MetricsLog(self.out / LOSSES_FILE)
        if self.resume:
            self._restore()
        self.fixed_a = _load_fixed(self.images_a, options.sample_count, options.image_size).to(device)
        self.fixed_b = _load_fixed(self.images_b, options.sample_count, options.image_size).to(device)
        sampler = _IterationSampler((len(self.images_a), len(self.images_b)), options.batch_size, options.seed,
                                    self.start_batch, options.iterations)
        self.loader = torch.utils.data.DataLoader(
            _PairDataset(self.images_a, self.images_b, options), batch_sampler=sampler,
            num_workers=options.workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(options.seed), persistent_workers=False)
        model.train()

    def _restore(self) -> None:
        state = load_checkpoint(self.ckpt_path)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise VreidError(f"{self.ckpt_path}: not a UNIT training checkpoint")
        options, model = self.options, self.model
        saved = UnitOptions.from_dict(state["options"])
        if saved.architecture() != options.architecture():
            raise VreidError(f"{self.ckpt_path}: network options {saved.architecture()} differ from the requested "
                             f"{options.architecture()}")
        changed = {k: v for k, v in options.to_dict().items() if state["options"].get(k) != v}
        if changed:
            log.info("resuming with changed options: %s", changed)
        model.generator.load_state_dict(state["generator"])
        model.dis_a.load_state_dict(state["discriminator"]["a"])
        model.dis_b.load_state_dict(state["discriminator"]["b"])
        self.gen_opt.load_state_dict(state["gen_opt"])
        self.dis_opt.load_state_dict(state["dis_opt"])
        if self.fp16 and state.get("scaler_g"):
            self.scaler_g.load_state_dict(state["scaler_g"])
            self.scaler_d.load_state_dict(state["scaler_d"])
        self.start_batch, self.resumed = int(state["iteration"]), True
        set_rng_state(state["rng"])
        self.losses.truncate(lambda record: record.get("iteration", 0) <= self.start_batch, self.start_batch)
        log.info("resumed from %s at iteration %d", self.ckpt_path, self.start_batch)

    def checkpoint_state(self) -> dict[str, Any]:
        model = self.model
        return {
            "format": CHECKPOINT_FORMAT, "version": 1, "iteration": self.step,
            "model": self.options.architecture(), "options": self.options.to_dict(),
            "generator": model.generator.state_dict(),
            "discriminator": {"a": model.dis_a.state_dict(), "b": model.dis_b.state_dict()},
            "gen_opt": self.gen_opt.state_dict(), "dis_opt": self.dis_opt.state_dict(),
            "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
            "rng": rng_state(),
        }

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return self.loader

    def run_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> bool:
        o, model = self.options, self.model
        self.lr = o.lr * o.lr_gamma ** (self.step // o.lr_step)
        for opt in (self.gen_opt, self.dis_opt):
            for group in opt.param_groups:
                group["lr"] = self.lr
        x_a = batch[0].to(self.device, non_blocking=True)
        x_b = batch[1].to(self.device, non_blocking=True)

        with self.autocast():
            d_loss, d_stats = discriminator_loss(model, x_a, x_b, gan_w=o.gan_w)
        self.dis_opt.zero_grad(set_to_none=True)
        self.scaler_d.scale(d_loss).backward()
        self.scaler_d.step(self.dis_opt)
        self.scaler_d.update()

        model.dis_a.requires_grad_(False)  # D is only a critic in the generator step
        model.dis_b.requires_grad_(False)
        with self.autocast():
            g_loss, g_stats = generator_loss(model, x_a, x_b, gan_w=o.gan_w, recon_x_w=o.recon_x_w,
                                             recon_kl_w=o.recon_kl_w, recon_x_cyc_w=o.recon_x_cyc_w,
                                             recon_kl_cyc_w=o.recon_kl_cyc_w)
        self.gen_opt.zero_grad(set_to_none=True)
        self.scaler_g.scale(g_loss).backward()
        self.scaler_g.step(self.gen_opt)
        self.scaler_g.update()
        model.dis_a.requires_grad_(True)
        model.dis_b.requires_grad_(True)
        self.stats = {**d_stats, **g_stats}
        return True


class UnitLossHook(HookBase):
    """Every ``period`` iterations and at the last: the means of the losses over the period in losses.jsonl and a
    log line; a non-finite mean stops the run (the checkpoint keeps the last good state)."""

    def __init__(self, period: int):
        self.period = period
        self.sums: dict[str, torch.Tensor] = {}
        self.count, self.last, self.t_log = 0, {}, 0.0

    def before_epoch(self) -> None:
        self.t_log = time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        for k, v in t.stats.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1
        if t.step % self.period and t.step != t.max_steps:
            return
        last = {k: float(v) / self.count for k, v in self.sums.items()}
        if not all(math.isfinite(v) for v in last.values()):
            raise VreidError(f"UNIT training diverged at iteration {t.step} (non-finite loss: {last}); "
                             f"{t.ckpt_path} holds the last good state: lower lr and resume")
        now = time.perf_counter()
        record = {"iteration": t.step, "lr": t.lr, **last,
                  "iterations_per_second": self.count / max(now - self.t_log, 1e-9)}
        t.losses.write(record, t.step)
        log.info("UNIT iter %d/%d  D %.4f  G %.4f  recon %.4f  cyc %.4f  (%.2f it/s)", t.step, t.max_steps,
                 last["d_total"], last["g_total"], last["recon_x_a"] + last["recon_x_b"],
                 last["cyc_x_a"] + last["cyc_x_b"], record["iterations_per_second"])
        self.sums, self.count, self.t_log, self.last = {}, 0, now, last


class SamplesHook(HookBase):
    """``samples/iter_XXXXXX.png`` every ``period`` iterations and at the end: rows source, source->target, target,
    target->source of fixed images, translated with the mean latent (no noise: the RNG stream is untouched)."""

    def __init__(self, folder: Path, period: int):
        self.folder, self.period = folder, period
        self.samples: list[str] = []

    def write(self) -> None:
        t = self.trainer
        with torch.no_grad(), t.autocast():
            rows = [t.fixed_a, t.model.translate_a2b(t.fixed_a), t.fixed_b, t.model.translate_b2a(t.fixed_b)]
        self.samples.append(str(_save_grid(rows, self.folder / f"iter_{t.step:06d}.png")))

    def after_step(self) -> None:
        if self.period and self.trainer.step % self.period == 0:
            self.write()

    def after_train(self) -> None:
        if not self.samples or not self.samples[-1].endswith(f"iter_{self.trainer.step:06d}.png"):
            self.write()


class TimeLimitHook(HookBase):
    """Stops the run once ``seconds`` have passed since the loop began (the checkpoint and translator are still
    written: resume to continue)."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, 0.0

    def before_epoch(self) -> None:
        self.t0 = time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        if time.perf_counter() - self.t0 >= self.seconds and t.step < t.max_steps:
            log.info("UNIT: time limit of %.0f s reached at iteration %d/%d; resume to continue", self.seconds,
                     t.step, t.max_steps)
            t.request_stop()


class TranslatorHook(HookBase):
    """At the end: ``translator.pth``, the generator that ``vreid prep translate apply`` loads."""

    def __init__(self, path: Path):
        self.path = path

    def after_train(self) -> None:
        t = self.trainer
        save_translator(t.model.generator, t.options, self.path, t.step)
        log.info("UNIT: %d iterations done, translator written to %s", t.step, self.path)


def train_unit(source_dir: str | Path, target_dir: str | Path, out_dir: str | Path, options: UnitOptions | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Train UNIT from ``source_dir`` (domain a) to ``target_dir`` (domain b); see the module docstring.

    Returns ``{"iteration", "checkpoint", "translator", "losses", "samples", "last_losses", "seconds",
    "iterations_per_second", "generator_parameters", "discriminator_parameters"}``.
    """
    options = options or UnitOptions()
    options.check()
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise VreidError(f"resume: no checkpoint at {ckpt_path}")
    if not resume and ckpt_path.is_file():
        raise VreidError(f"{ckpt_path} exists: resume to continue that run, or choose another output folder")
    images_a, images_b = find_images(source_dir), find_images(target_dir)
    out.mkdir(parents=True, exist_ok=True)
    losses = UnitLossHook(options.log_period)
    samples = SamplesHook(out / SAMPLES_DIR, options.sample_period)
    hooks: list[HookBase] = [LogFileHook(out / LOG_FILE), losses, samples,
                             CheckpointHook(ckpt_path, options.checkpoint_period)]
    if options.time_limit:
        hooks.append(TimeLimitHook(options.time_limit))
    hooks.append(TranslatorHook(out / TRANSLATOR_FILE))
    trainer = UnitTrainer(images_a, images_b, out, options, resume, hooks)
    trainer.train()
    model, seconds, done = trainer.model, trainer.loop_seconds, trainer.step - trainer.start_step
    return {
        "iteration": trainer.step, "checkpoint": str(ckpt_path), "translator": str(out / TRANSLATOR_FILE),
        "losses": str(out / LOSSES_FILE), "samples": samples.samples, "last_losses": losses.last, "seconds": seconds,
        "iterations_per_second": done / seconds if seconds > 0 and done > 0 else 0.0,
        "generator_parameters": count_parameters(model.generator),
        "discriminator_parameters": count_parameters(model.dis_a) + count_parameters(model.dis_b),
    }


def check_unit_config(cfg) -> UnitOptions:
    """The UNIT section (and the SEED / DATALOADER.NUM_WORKERS it uses) as checked options, each error naming its
    key; before anything is written (``vreid prep translate train``, the pipeline's translate stage)."""
    options = unit_options(cfg)
    options.check()
    return options


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
