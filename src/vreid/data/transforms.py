"""Image transforms: the training augmentation of the paper's official code, minus its defects, and the test transform.

The training order follows the official pipeline (docs/method.md, Augmentation): resize (aspect not kept) -> horizontal
flip -> zero pad + random crop -> random patch -> colour jitter -> AugMix -> Gaussian blur -> tensor +
normalise -> random erasing. The official defects are not reproduced: AugMix returns a PIL image (not a
numpy array that only works because the blur happens to be OpenCV), its geometric ops use the image's own
size (not a hard-coded square), and random erasing fills with noise or zero *after* normalisation instead
of ImageNet-mean constants written into an already normalised tensor (docs/method.md, Augmentation).

Every random draw comes from torch's global generator (torchvision's v2 transforms and the two written
here alike), so a caller who seeds the global RNGs per sample gets exactly reproducible augmentation,
whichever loader worker runs it. The one exception by design is :class:`RandomPatch`, whose output also
depends on the patches the same process has seen before (see its docstring).

A step whose probability is 0 is not part of the pipeline at all, so it costs nothing and draws no random
numbers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

if TYPE_CHECKING:
    from yacs.config import CfgNode

log = logging.getLogger(__name__)

ERASING_VALUES = ("random", "zero")
BLUR_KERNEL = 5  # the official cv2.GaussianBlur((5, 5), 1.3)
BLUR_SIGMA = 1.3
ERASING_MIN_AREA = 0.02  # random erasing: sl of the official RandomErasing
ERASING_MIN_ASPECT = 0.3  # random erasing: r1 (aspects in [0.3, 1/0.3])


# --------------------------------------------------------------------------------------------------
# Random draws, all from torch's global generator


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _randint(low: int, high: int) -> int:
    """An integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, ()).item())


def _coin(p: float) -> bool:
    """True with probability p (no draw at all for p in {0, 1}, so switched-off branches cost nothing)."""
    if p <= 0.0:
        return False
    if p >= 1.0:
        return True
    return torch.rand(()).item() < p


def _random_rect(width: int, height: int, min_area: float, max_area: float,
                 draw_aspect: Callable[[], float], tries: int = 100) -> tuple[int, int, int, int] | None:
    """(left, top, w, h) of a rectangle of area U(min_area, max_area) x the image and aspect h/w from
    ``draw_aspect`` that fits strictly inside the image, or None after ``tries`` draws."""
    for _ in range(tries):
        area = _uniform(min_area, max_area) * width * height
        aspect = draw_aspect()
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if 0 < w < width and 0 < h < height:
            return _randint(0, width - w), _randint(0, height - h), w, h
    return None


# --------------------------------------------------------------------------------------------------
# Scale: aspect-preserving resize and random resolution


RESIZE_MODES = ("stretch", "pad")


def _scaled(img: Image.Image, scale: float) -> Image.Image:
    """``img`` with both sides multiplied by ``scale`` (at least 1 pixel), bilinear."""
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.BILINEAR, reducing_gap=None) if size != img.size else img


class PadResize:
    """Resize to fit inside ``size`` keeping the aspect ratio, then centre on a canvas of the mean colour.

    Stretching every crop to a square (the paper's choice) distorts a motorcycle and a bus differently, and a camera
    that frames vehicles at another aspect distorts them differently again; padding keeps shapes comparable.
    ``fill`` is the RGB mean, which normalisation maps to zero.
    """

    def __init__(self, size: tuple[int, int], fill: tuple[int, int, int]) -> None:
        self.size, self.fill = size, fill

    def __call__(self, img: Image.Image) -> Image.Image:
        height, width = self.size
        fitted = _scaled(img.convert("RGB"), min(width / img.width, height / img.height))
        canvas = Image.new("RGB", (width, height), self.fill)
        canvas.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
        return canvas

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, fill={self.fill})"


class RandomResolution:
    """With probability ``p``, downscale the image by a factor drawn from [min_scale, 1] (the resize that follows
    brings it back to the network's size).

    A camera farther away or with a lower resolution gives the same vehicle with fewer pixels; training on images
    of one recording only, the model otherwise learns that recording's sharpness as part of what a vehicle looks like.
    """

    def __init__(self, p: float, min_scale: float) -> None:
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale!r}")
        self.p, self.min_scale = p, min_scale

    def __call__(self, img: Image.Image) -> Image.Image:
        return _scaled(img, _uniform(self.min_scale, 1.0)) if _coin(self.p) else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, min_scale={self.min_scale})"


# --------------------------------------------------------------------------------------------------
# RandomPatch


class RandomPatch:
    """Paste a patch cut from an earlier training image: cheap occlusion (OSNet's "random patch").

    Each call cuts one patch (area ``min_area``..``max_area`` of the image, aspect h/w log-uniform in
    [``min_aspect``, 1/``min_aspect``]) from the incoming image into a FIFO pool of at most
    ``pool_size`` patches. Once the pool holds ``min_pool`` patches, with probability ``p`` a random
    pooled patch (h-flipped with p=0.5, rotated by U(-10, 10) degrees with p=0.5) is pasted at a random
    position of a copy of the image. The input image is never modified.

    The pool lives in the process that calls the transform (one per loader worker), so the output depends
    on what that process saw before, not only on the RNG state: per-sample seeding makes the draws
    reproducible, but the pasted content is reproducible only for the same image stream per worker.
    Memory: up to ``pool_size`` patches per process (at 320x320 about 25 kB each on average).
    """

    def __init__(
        self,
        p: float = 0.5,
        pool_size: int = 50_000,
        min_pool: int = 100,
        min_area: float = 0.01,
        max_area: float = 0.16,
        min_aspect: float = 0.1,
        flip_prob: float = 0.5,
        rotate_prob: float = 0.5,
        max_degrees: float = 10.0,
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomPatch probability must be in [0, 1], got {p}")
        if not 0.0 < min_area <= max_area < 1.0:
            raise ValueError(f"RandomPatch needs 0 < min_area <= max_area < 1, got {min_area}, {max_area}")
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"RandomPatch min_aspect must be in (0, 1], got {min_aspect}")
        if pool_size < 1 or min_pool < 1:
            raise ValueError(f"RandomPatch pool_size and min_pool must be >= 1, got {pool_size}, {min_pool}")
        self.p = p
        self.min_pool = min_pool
        self.min_area, self.max_area = min_area, max_area
        self.min_aspect = min_aspect
        self.flip_prob, self.rotate_prob, self.max_degrees = flip_prob, rotate_prob, max_degrees
        self.pool: deque[Image.Image] = deque(maxlen=pool_size)

    def _sample_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """(left, top, w, h) of a patch that fits strictly inside the image, or None after 100 tries."""
        log_aspect = math.log(self.min_aspect)
        return _random_rect(width, height, self.min_area, self.max_area,
                            lambda: math.exp(_uniform(log_aspect, -log_aspect)))

    def _transform_patch(self, patch: Image.Image) -> Image.Image:
        if _coin(self.flip_prob):
            patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if _coin(self.rotate_prob):
            patch = patch.rotate(_uniform(-self.max_degrees, self.max_degrees), resample=Image.Resampling.BILINEAR)
        return patch

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(f"RandomPatch expects a PIL image, got {type(img).__name__}")
        width, height = img.size
        box = self._sample_box(width, height)
        if box is not None:
            left, top, w, h = box
            self.pool.append(img.crop((left, top, left + w, top + h)))
        if len(self.pool) < self.min_pool or not _coin(self.p):
            return img
        patch = self.pool[_randint(0, len(self.pool) - 1)]
        patch = self._transform_patch(patch)
        if patch.mode != img.mode:
            patch = patch.convert(img.mode)
        # Patches from a larger image (only if sizes differ between calls) are cut down to fit.
        patch = patch.crop((0, 0, min(patch.width, width), min(patch.height, height)))
        out = img.copy()
        out.paste(patch, (_randint(0, width - patch.width), _randint(0, height - patch.height)))
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(p={self.p}, pool_size={self.pool.maxlen}, min_pool={self.min_pool}, "
                f"area=({self.min_area}, {self.max_area}), min_aspect={self.min_aspect})")


# --------------------------------------------------------------------------------------------------
# AugMix (the official lib/data/transforms/augmix.py semantics, on PIL images)


def _sample_level(severity: float) -> float:
    return _uniform(0.1, severity)


def _int_parameter(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_parameter(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _signed(value: float) -> float:
    return -value if _coin(0.5) else value


def _autocontrast(img: Image.Image, severity: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def _equalize(img: Image.Image, severity: float) -> Image.Image:
    return ImageOps.equalize(img)


def _posterize(img: Image.Image, severity: float) -> Image.Image:
    return ImageOps.posterize(img, 4 - _int_parameter(_sample_level(severity), 4))  # severity 1: 4 bits


def _rotate(img: Image.Image, severity: float) -> Image.Image:
    degrees = _signed(_int_parameter(_sample_level(severity), 30))  # severity 1: 0..2 degrees
    return img.rotate(degrees, resample=Image.Resampling.BILINEAR)


def _solarize(img: Image.Image, severity: float) -> Image.Image:
    return ImageOps.solarize(img, 256 - _int_parameter(_sample_level(severity), 256))  # severity 1: 231..254


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    # The image's own size, not the official hard-coded square IMAGE_SIZE.
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def _shear_x(img: Image.Image, severity: float) -> Image.Image:
    return _affine(img, (1, _signed(_float_parameter(_sample_level(severity), 0.3)), 0, 0, 1, 0))


def _shear_y(img: Image.Image, severity: float) -> Image.Image:
    return _affine(img, (1, 0, 0, _signed(_float_parameter(_sample_level(severity), 0.3)), 1, 0))


def _translate_x(img: Image.Image, severity: float) -> Image.Image:
    return _affine(img, (1, 0, _signed(_int_parameter(_sample_level(severity), img.width / 3)), 0, 1, 0))


def _translate_y(img: Image.Image, severity: float) -> Image.Image:
    return _affine(img, (1, 0, 0, 0, 1, _signed(_int_parameter(_sample_level(severity), img.height / 3))))


AUGMIX_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "posterize": _posterize,
    "rotate": _rotate,
    "solarize": _solarize,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}


class AugMix:
    """AugMix as the official code runs it: ``(1 - m) * img + m * sum_i w_i * chain_i(img)``.

    ``width`` chains of ``depth`` ops each (depth <= 0: 1..3 ops per chain), ops drawn uniformly from
    :data:`AUGMIX_OPS` at ``severity``; chain weights ~ Dirichlet(alpha, ...), m ~ Beta(alpha, alpha).
    torchvision's AugMix differs (other ops and magnitudes, its own mixing), hence this one. Mixing is
    done in float64 and rounded to uint8; the result is a PIL image of the input's size and mode (the
    official code returned a numpy array, also when not applied).
    """

    def __init__(self, p: float = 1.0, severity: float = 1.0, width: int = 3, depth: int = 1, alpha: float = 0.1):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"AugMix probability must be in [0, 1], got {p}")
        if not 0.1 <= severity <= 10 or width < 1 or alpha <= 0:
            raise ValueError(f"AugMix needs 0.1 <= severity <= 10, width >= 1, alpha > 0; "
                             f"got {severity}, {width}, {alpha}")
        self.p, self.severity, self.width, self.depth, self.alpha = p, severity, width, depth, alpha

    def sample_mixing(self) -> tuple[list[float], float]:
        """Chain weights ~ Dirichlet(alpha) and the mix weight m ~ Beta(alpha, alpha) (a seam for tests)."""
        conc = torch.full((self.width,), float(self.alpha), dtype=torch.float64)
        weights = torch.distributions.Dirichlet(conc).sample()
        a = torch.tensor(float(self.alpha), dtype=torch.float64)
        m = torch.distributions.Beta(a, a).sample()
        return weights.tolist(), float(m)

    def _chain(self, img: Image.Image) -> Image.Image:
        ops = list(AUGMIX_OPS.values())
        depth = self.depth if self.depth > 0 else _randint(1, 3)
        for _ in range(depth):
            img = ops[_randint(0, len(ops) - 1)](img, self.severity)
        return img

    def augment_and_mix(
        self, img: Image.Image, weights: Sequence[float] | None = None, m: float | None = None
    ) -> Image.Image:
        """Always apply AugMix; ``weights`` / ``m`` override the sampled values (tests, analysis)."""
        if img.mode not in ("RGB", "L"):
            raise ValueError(f"AugMix supports RGB and L images, got mode {img.mode!r}")
        sampled_w, sampled_m = self.sample_mixing()
        weights = sampled_w if weights is None else list(weights)
        m = sampled_m if m is None else float(m)
        if len(weights) != self.width:
            raise ValueError(f"AugMix needs {self.width} chain weights, got {len(weights)}")
        base = np.asarray(img, dtype=np.float64)
        mix = np.zeros_like(base)
        for w in weights:
            mix += w * np.asarray(self._chain(img), dtype=np.float64)
        mixed = (1.0 - m) * base + m * mix
        return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), mode=img.mode)

    def __call__(self, img: Image.Image) -> Image.Image:
        if not isinstance(img, Image.Image):
            raise TypeError(f"AugMix expects a PIL image, got {type(img).__name__}")
        return self.augment_and_mix(img) if _coin(self.p) else img

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(p={self.p}, severity={self.severity}, width={self.width}, "
                f"depth={self.depth}, alpha={self.alpha})")


# --------------------------------------------------------------------------------------------------
# Random erasing


ERASING_TRIES = 100  # the official RandomErasing tries this often to place a rectangle


class RandomErasing:
    """Erase one rectangle of a normalised (C, H, W) tensor with probability ``p`` (Zhong et al., AAAI 2020).

    The official geometry: up to 100 tries to place a rectangle of area U(``min_area``, ``max_area``) x H x W
    and aspect h/w uniform in [``min_aspect``, 1/``min_aspect``] (torchvision draws the aspect log-uniformly
    and gives up after 10 tries, which erases squarer and, for large areas, fewer rectangles). The fill is
    per-pixel N(0, 1) noise (``"random"``) or 0, the mean colour (``"zero"``), never the ImageNet-mean
    constants the official code wrote into the normalised tensor.
    """

    def __init__(self, p: float = 0.5, min_area: float = ERASING_MIN_AREA, max_area: float = 0.4,
                 min_aspect: float = ERASING_MIN_ASPECT, value: str = "random"):
        if value not in ERASING_VALUES:
            raise ValueError(f"erasing value must be one of {', '.join(ERASING_VALUES)}, got {value!r}")
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"erasing min_aspect must be in (0, 1], got {min_aspect}")
        self.p, self.min_area, self.max_area, self.min_aspect, self.value = p, min_area, max_area, min_aspect, value

    def sample_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """(top, left, h, w) of a rectangle strictly inside the image, or None after 100 tries."""
        rect = _random_rect(width, height, self.min_area, self.max_area,
                            lambda: _uniform(self.min_aspect, 1.0 / self.min_aspect), ERASING_TRIES)
        if rect is None:
            return None
        left, top, w, h = rect
        return top, left, h, w

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if not _coin(self.p):
            return image
        box = self.sample_box(image.shape[-2], image.shape[-1])
        if box is None:
            return image
        top, left, h, w = box
        out = image.clone()
        region = out[..., top : top + h, left : left + w]
        region.copy_(torch.randn(region.shape, dtype=out.dtype) if self.value == "random" else torch.zeros_like(region))
        return out

    def __repr__(self) -> str:
        return (f"RandomErasing(p={self.p}, area=({self.min_area}, {self.max_area}), "
                f"aspect=({self.min_aspect}, {1 / self.min_aspect:.3g}), value={self.value!r})")


# --------------------------------------------------------------------------------------------------
# Builders


def _size(value: Any, key: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be (height, width), got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{key} must be positive, got {value!r}")
    return h, w


def _prob(value: Any, key: str) -> float:
    p = float(value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{key} must be a probability in [0, 1], got {value!r}")
    return p


def _resize(cfg: CfgNode, size: tuple[int, int]) -> Callable[..., Any]:
    """The resize to the network's input size: stretched (aspect not kept) or padded (aspect kept)."""
    mode = cfg.INPUT.RESIZE_MODE
    if mode not in RESIZE_MODES:
        raise ValueError(f"INPUT.RESIZE_MODE must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if mode == "pad":
        fill = tuple(int(round(255 * float(m))) for m in cfg.INPUT.PIXEL_MEAN)
        return PadResize(size, fill)  # type: ignore[arg-type]
    return v2.Resize(size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def _to_normalised_tensor(cfg: CfgNode) -> list[Callable[..., Any]]:
    mean, std = [float(v) for v in cfg.INPUT.PIXEL_MEAN], [float(v) for v in cfg.INPUT.PIXEL_STD]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"INPUT.PIXEL_MEAN / PIXEL_STD must be 3 values (std > 0), got {mean}, {std}")
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)]


def build_train_transform(cfg: CfgNode) -> Callable[[Image.Image], torch.Tensor]:
    """The training augmentation from ``cfg.INPUT``: a PIL RGB image -> normalised float tensor (3, H, W)."""
    inp = cfg.INPUT
    size = _size(inp.SIZE_TRAIN, "INPUT.SIZE_TRAIN")
    padding = int(inp.PADDING)
    if padding < 0:
        raise ValueError(f"INPUT.PADDING must be >= 0, got {padding}")
    flip = _prob(inp.FLIP_PROB, "INPUT.FLIP_PROB")
    patch = _prob(inp.RANDOM_PATCH_PROB, "INPUT.RANDOM_PATCH_PROB")
    jitter = _prob(inp.COLOR_JITTER.PROB, "INPUT.COLOR_JITTER.PROB")
    augmix = _prob(inp.AUGMIX_PROB, "INPUT.AUGMIX_PROB")
    blur = _prob(inp.BLUR_PROB, "INPUT.BLUR_PROB")
    erasing = _prob(inp.ERASING.PROB, "INPUT.ERASING.PROB")

    low_res = _prob(inp.RANDOM_RESOLUTION.PROB, "INPUT.RANDOM_RESOLUTION.PROB")

    steps: list[Callable[..., Any]] = []
    if low_res > 0:
        try:
            steps.append(RandomResolution(low_res, float(inp.RANDOM_RESOLUTION.MIN_SCALE)))
        except ValueError as exc:
            raise ValueError(f"INPUT.RANDOM_RESOLUTION.MIN_SCALE: {exc}") from None
    steps.append(_resize(cfg, size))
    if flip > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip))
    if padding > 0:
        steps.append(v2.RandomCrop(size, padding=padding, fill=0, padding_mode="constant"))
    if patch > 0:
        steps.append(RandomPatch(p=patch))
    if jitter > 0:
        cj = inp.COLOR_JITTER
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=float(cj.BRIGHTNESS), contrast=float(cj.CONTRAST),
                                                    saturation=float(cj.SATURATION), hue=float(cj.HUE))], p=jitter))
    if augmix > 0:
        steps.append(AugMix(p=augmix))
    if blur > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL, sigma=BLUR_SIGMA)], p=blur))
    steps += _to_normalised_tensor(cfg)
    if erasing > 0:
        value = inp.ERASING.VALUE
        if value not in ERASING_VALUES:
            raise ValueError(f"INPUT.ERASING.VALUE must be one of {', '.join(ERASING_VALUES)}, got {value!r}")
        max_area = float(inp.ERASING.MAX_AREA)
        if not ERASING_MIN_AREA <= max_area <= 1.0:
            raise ValueError(f"INPUT.ERASING.MAX_AREA must be in [{ERASING_MIN_AREA}, 1], got {max_area}")
        # "random": per-pixel N(0, 1) noise; "zero": 0 on the normalised tensor, i.e. the mean colour.
        steps.append(RandomErasing(p=erasing, max_area=max_area, value=value))
    transform = v2.Compose(steps)
    log.debug("training transform: %s", transform)
    return transform


class TestTransform(v2.Compose):
    """The test pipeline, also in two halves for batched extraction: ``per_image`` (resize, uint8 tensor) runs in
    the loader, ``per_batch`` (float conversion, normalisation) once per batch on the model's device.

    Per image, the float steps are a dozen tiny tensor ops whose thread start-up dominates (13 ms per 224x224
    image with 1 thread, 100-200 ms with 2 threads on a loaded 2-core machine); per batch they are one vectorised
    pass, and loader workers hand over uint8 batches, 4x smaller. Calling the object on one image runs every step,
    the same elementwise operations, so both ways give the same tensor.
    """

    def __init__(self, steps: Sequence[Callable[..., Any]], split: int):
        super().__init__(list(steps))
        self.per_image = v2.Compose(list(steps[:split]))
        self.per_batch = v2.Compose(list(steps[split:]))


def build_test_transform(cfg: CfgNode) -> TestTransform:
    """Resize to ``INPUT.SIZE_TEST`` (as ``INPUT.RESIZE_MODE`` says), to tensor, normalise: nothing random."""
    size = _size(cfg.INPUT.SIZE_TEST, "INPUT.SIZE_TEST")
    to_tensor, to_float, normalize = _to_normalised_tensor(cfg)
    steps = [_resize(cfg, size), to_tensor, to_float, normalize]
    return TestTransform(steps, split=2)
