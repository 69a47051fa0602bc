"""Cameras, backgrounds, tracklets and the two rendering styles of the synthetic city.

A camera fixes what stays constant in one view of the city (background, light, colour cast, blur, resolution,
elevation, the headings traffic takes past it), so that the same vehicle looks different across cameras, which
is what re-identification must learn to ignore. Two styles:

* ``"real"``: textured road backgrounds (asphalt noise, lane markings, kerbs, grass, pavements, building
  fronts), a per-camera colour cast and gain, blur, sensor noise, JPEG at a camera-specific quality and
  occasional occluders (a pole, the edge of another vehicle);
* ``"sim"``: VehicleX-like clean flat shading on a plain or gradient background, no noise, no blur; each image
  gets its own random light direction and intensity.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vreid.data.synth.seeding import make_rng
from vreid.data.synth.vehicles import (
    VEHICLEX_COLORS,
    Lighting,
    VehicleIdentity,
    draw_vehicle,
    footprint,
    light_direction,
    project_model,
    vehicle_parts,
    view_basis,
)

STYLES = ("real", "sim")
TEXELS_PER_M = 20.0            # background texture resolution
_TEX_SIZE = 512                # texels per side (25.6 m of road)
_SUPERSAMPLE = 2               # vehicles are drawn at 2x and box-filtered down: cheap anti-aliasing
MIN_LONG_SIDE, MAX_LONG_SIDE = 48, 240


@dataclass(frozen=True)
class Camera:
    """Everything about one camera that stays fixed across the vehicles it sees."""

    seed: int
    style: str
    index: int                       # 1-based: cameraID c{index:03d}
    elevation: float                 # degrees above the horizon
    heading: float                   # typical vehicle orientation seen by this camera (degrees)
    heading_spread: float            # +- degrees around it
    two_way: bool                    # traffic in both directions (heading or heading + 180)
    long_side: float                 # typical crop size, pixels on the long side
    gain: float
    cast: tuple[float, float, float]  # per-channel gains
    blur: float                      # Gaussian radius, pixels (0 = sharp)
    noise: float                     # sensor noise sigma (0..255 scale)
    jpeg_quality: int
    light_azimuth: float             # relative to the camera (0 = from behind the camera)
    light_elevation: float
    ambient: float
    occlusion_rate: float
    background: str                  # real: roadside kind; sim: "plain" | "gradient"
    bg_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    lane_angle: float                # degrees: how lane markings run through the texture

    @property
    def camera_id(self) -> str:
        return f"c{self.index:03d}"


def make_camera(seed: int, index: int, style: str = "real") -> Camera:
    """Camera ``index`` (1-based) of ``style``, a pure function of ``(seed, style, index)``."""
    return _make_camera(int(seed), int(index), str(style))


@lru_cache(maxsize=1024)
def _make_camera(seed: int, index: int, style: str) -> Camera:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    rng = make_rng(seed, style, "camera", index)
    if style == "real":
        cast = tuple(float(c) for c in np.clip(1.0 + rng.normal(0.0, 0.05, 3), 0.88, 1.12))
        road_tone = int(rng.integers(70, 122))
        kind = str(rng.choice(["grass", "pavement", "buildings", "none"], p=[0.3, 0.3, 0.25, 0.15]))
        return Camera(
            seed=seed, style=style, index=index,
            elevation=float(rng.uniform(6.0, 40.0)),
            heading=float(rng.uniform(0.0, 360.0)),
            heading_spread=float(rng.uniform(8.0, 35.0)),
            two_way=bool(rng.random() < 0.5),
            long_side=float(math.exp(rng.uniform(math.log(56.0), math.log(220.0)))),
            gain=float(rng.uniform(0.72, 1.22)),
            cast=cast,  # type: ignore[arg-type]
            blur=float(rng.choice([0.0, rng.uniform(0.3, 1.4)], p=[0.3, 0.7])),
            noise=float(rng.uniform(1.0, 7.0)),
            jpeg_quality=int(rng.integers(55, 93)),
            light_azimuth=float(rng.uniform(-170.0, 170.0)),
            light_elevation=float(rng.uniform(25.0, 75.0)),
            ambient=float(rng.uniform(0.35, 0.55)),
            occlusion_rate=float(rng.uniform(0.05, 0.25)),
            background=kind,
            bg_colors=((road_tone, road_tone, road_tone), (0, 0, 0)),
            lane_angle=float(rng.uniform(-35.0, 35.0)),
        )
    plain = bool(rng.random() < 0.5)
    c0 = tuple(int(v) for v in rng.integers(90, 225, 3))
    c1 = tuple(int(v) for v in np.clip(np.asarray(c0) + rng.integers(-70, 40, 3), 30, 240))
    return Camera(
        seed=seed, style=style, index=index,
        elevation=float(rng.uniform(10.0, 50.0)),
        heading=float(rng.uniform(0.0, 360.0)),
        heading_spread=180.0,                  # VehicleX: any orientation
        two_way=False,
        long_side=float(rng.uniform(96.0, 200.0)),
        gain=1.0, cast=(1.0, 1.0, 1.0), blur=0.0, noise=0.0, jpeg_quality=95,
        light_azimuth=0.0, light_elevation=45.0, ambient=0.5, occlusion_rate=0.0,
        background="plain" if plain else "gradient",
        bg_colors=(c0, c1),  # type: ignore[arg-type]
        lane_angle=0.0,
    )


@dataclass(frozen=True)
class Tracklet:
    """One sighting: consecutive frames of one vehicle passing one camera."""

    style: str
    vehicle: int                     # 0-based identity index within its style
    camera: int                      # 1-based camera index
    n_frames: int
    yaw0: float
    yaw_step: float
    elevation: float
    scale0: float
    scale_step: float
    bg_x: float                      # background window centre (fractions of the texture)
    bg_y: float
    bg_dx: float                     # per-frame drift of the window (fractions)
    bg_dy: float
    distance: float                  # nominal camera distance in metres (sim labels)


def make_tracklet(seed: int, camera: Camera, vehicle: int, min_frames: int, max_frames: int) -> Tracklet:
    """The sighting of ``vehicle`` by ``camera``: a pure function of ``(seed, style, vehicle, camera)``."""
    rng = make_rng(seed, camera.style, "track", vehicle, camera.index)
    n_frames = int(rng.integers(min_frames, max_frames + 1))  # first draw: cheap to plan from
    yaw = camera.heading + (180.0 if camera.two_way and rng.random() < 0.5 else 0.0)
    yaw += float(rng.uniform(-camera.heading_spread, camera.heading_spread))
    distance = float(rng.uniform(9.5, 14.5))
    return Tracklet(
        style=camera.style, vehicle=vehicle, camera=camera.index, n_frames=n_frames,
        yaw0=yaw % 360.0, yaw_step=float(rng.uniform(-4.0, 4.0)),
        elevation=float(np.clip(camera.elevation + rng.normal(0.0, 2.0), 3.0, 70.0)),
        scale0=12.0 / distance, scale_step=float(rng.uniform(-0.05, 0.06)),
        bg_x=float(rng.uniform(0.3, 0.7)), bg_y=float(rng.uniform(0.25, 0.75)),
        bg_dx=float(rng.uniform(-0.02, 0.02)), bg_dy=float(rng.uniform(-0.02, 0.02)),
        distance=distance,
    )


# --- Backgrounds ---------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]-ish: a coarse random grid upsampled bilinearly."""
    coarse = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


@lru_cache(maxsize=64)
def road_texture(camera: Camera) -> Image.Image:
    """A top-down road map for a real-like camera (cached per process, a pure function of the camera)."""
    rng = make_rng(camera.seed, camera.style, "background", camera.index)
    n = _TEX_SIZE
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / TEXELS_PER_M
    phi = math.radians(camera.lane_angle)
    s = xx * math.cos(phi) + yy * math.sin(phi)      # metres along the road
    t = -xx * math.sin(phi) + yy * math.cos(phi)     # metres across the road
    tone = float(camera.bg_colors[0][0])
    tint = rng.normal(0.0, 4.0, 3).astype(np.float32)
    lum = tone + 11.0 * _smooth_noise(rng, n, 14) + rng.normal(0.0, 7.0, (n, n)).astype(np.float32)
    img = lum[..., None] + tint
    # lane markings: dashed lines every lane width, one solid edge line, white or yellow
    lane_w = float(rng.uniform(3.2, 3.9))
    t0 = float(rng.uniform(0.0, lane_w))
    paint = np.array([226, 226, 218] if rng.random() < 0.75 else [222, 188, 70], np.float32)
    dash = (np.mod(s + float(rng.uniform(0, 9)), 9.0) < 3.0)
    on_line = np.abs(np.mod(t - t0 + lane_w / 2, lane_w) - lane_w / 2) < 0.07
    img = np.where((on_line & dash)[..., None], paint * 0.92 + (lum[..., None] - tone) * 0.3, img)
    if rng.random() < 0.3:  # a zebra crossing
        sc = float(rng.uniform(4.0, 18.0))
        zebra = (np.abs(s - sc) < 1.6) & (np.mod(t, 1.0) < 0.5)
        img = np.where(zebra[..., None], np.float32(214) + (lum[..., None] - tone) * 0.3, img)
    if camera.background != "none":  # roadside beyond a kerb, towards the top of the texture
        tk = float(rng.uniform(3.0, 8.0)) + float(t.min())
        kerb = (t < tk) & (t >= tk - 0.3)
        side = t < tk - 0.3
        if camera.background == "grass":
            g = 1.0 + 0.25 * _smooth_noise(rng, n, 40)
            side_rgb = np.stack([58 * g, 98 * g, 44 * g], -1) + rng.normal(0, 8, (n, n, 1)).astype(np.float32)
        elif camera.background == "pavement":
            joint = (np.mod(s, 0.6) < 0.035) | (np.mod(t, 0.6) < 0.035)
            base = float(rng.uniform(130, 170))
            side_rgb = (base - 28.0 * joint)[..., None] + np.array([4, 2, -3], np.float32) \
                + rng.normal(0, 5, (n, n, 1)).astype(np.float32)
        else:  # a building front: wall colour with a grid of dark windows
            wall = rng.uniform(110, 200, 3).astype(np.float32)
            win = (np.mod(s, 3.0) > 1.0) & (np.mod(t, 3.2) > 1.2)
            side_rgb = np.where(win[..., None], np.array([48, 56, 66], np.float32), wall) \
                + rng.normal(0, 5, (n, n, 1)).astype(np.float32)
        img = np.where(side[..., None], side_rgb, img)
        img = np.where(kerb[..., None], np.float32(170) + rng.normal(0, 6, (n, n, 1)).astype(np.float32), img)
    for _ in range(int(rng.integers(0, 4))):  # oil stains / patches
        cx, cy, rad = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(8, 30)
        blob = ((xx * TEXELS_PER_M - cx) ** 2 + (yy * TEXELS_PER_M - cy) ** 2) < rad ** 2
        img = np.where(blob[..., None], img * 0.8, img)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _sim_background(camera: Camera, size: tuple[int, int]) -> Image.Image:
    c0, c1 = camera.bg_colors
    if camera.background == "plain":
        return Image.new("RGB", size, c0)
    w, h = size
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = np.asarray(c0, np.float32) * (1 - ramp) + np.asarray(c1, np.float32) * ramp
    return Image.fromarray(np.repeat(col, w, axis=1).astype(np.uint8), "RGB")


# --- One frame -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FrameInfo:
    """What was rendered, for labels: VehicleX-style attributes of the frame."""

    orientation: float
    elevation: float
    light_intensity: float
    light_direction: float
    camera_height: float
    camera_distance: float
    size: tuple[int, int]


def _draw_occluder(img: Image.Image, rng: np.random.Generator) -> None:
    w, h = img.size
    d = ImageDraw.Draw(img)
    if rng.random() < 0.5:  # a pole with a lit side
        pw = max(3, int(w * rng.uniform(0.04, 0.09)))
        x = int(rng.uniform(0.05, 0.9) * w)
        col = np.array([[120, 122, 126], [70, 96, 72], [150, 140, 90]][int(rng.integers(3))], float)
        col *= rng.uniform(0.7, 1.1)
        d.rectangle([x, 0, x + pw, h], fill=tuple(int(c) for c in np.clip(col, 0, 255)))
        d.rectangle([x + pw // 3, 0, x + pw // 2, h], fill=tuple(int(c) for c in np.clip(col * 1.3, 0, 255)))
    else:  # the edge of another vehicle entering the crop from one side
        ew = int(w * rng.uniform(0.12, 0.32))
        top = int(h * rng.uniform(0.25, 0.6))
        col = VEHICLEX_COLORS[int(rng.integers(len(VEHICLEX_COLORS)))][1]
        shade = tuple(int(c * rng.uniform(0.6, 1.0)) for c in col)
        left = rng.random() < 0.5
        x0, x1 = (0, ew) if left else (w - ew, w)
        d.rectangle([x0, top, x1, h], fill=shade)
        win_h = max(2, int((h - top) * 0.25))
        d.rectangle([x0, top + 2, x1, top + 2 + win_h], fill=(36, 42, 52))
        wr = max(3, int((h - top) * 0.3))
        cx = x1 - wr if left else x0 + wr
        d.ellipse([cx - wr, h - wr, cx + wr, h + wr], fill=(28, 28, 30))


def render_frame(identity: VehicleIdentity, camera: Camera, track: Tracklet, frame: int) -> tuple[Image.Image,
                                                                                                     FrameInfo]:
    """Frame ``frame`` of ``track``, drawn with its own RNG keyed ``(seed, style, vehicle, camera, frame)``."""
    rng = make_rng(camera.seed, camera.style, "frame", track.vehicle, camera.index, frame)
    real = camera.style == "real"
    yaw = float((track.yaw0 + frame * track.yaw_step + rng.normal(0.0, 1.2)) % 360.0)
    yaw = round(yaw, 1) % 360.0  # the label is written with one decimal: draw exactly what is labelled
    elev = float(np.clip(track.elevation + rng.normal(0.0, 0.6), 2.0, 75.0))
    growth = max(0.5, 1.0 + track.scale_step * frame)
    long_side = camera.long_side * track.scale0 * growth * float(rng.uniform(0.96, 1.04))
    if real:
        long_side *= 1.0 if identity.type_name not in ("bus", "truck", "RV") else 1.25
    long_side = float(np.clip(long_side, MIN_LONG_SIDE, MAX_LONG_SIDE))
    margin = float(rng.uniform(0.03, 0.1))
    jitter = rng.normal(0.0, 0.025, 2)
    if real:
        light_az = camera.light_azimuth + float(rng.normal(0.0, 4.0))
        light_el = camera.light_elevation
        intensity = camera.gain * float(rng.uniform(0.95, 1.05))
        ambient, diffuse = camera.ambient, 0.62
    else:
        light_az = float(rng.uniform(-180.0, 180.0))
        light_el = float(rng.uniform(20.0, 75.0))
        intensity = float(rng.uniform(0.7, 1.3))
        ambient, diffuse = 0.5, 0.55

    faces = project_model(vehicle_parts(identity), yaw, elev)
    r, u, _ = view_basis(yaw, elev)
    shadow = footprint(identity) @ np.stack([r, -u], axis=1)
    pts = np.concatenate([f.points for f in faces if f.visible] + [shadow])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ext = hi - lo
    ppm = long_side / (float(ext.max()) * (1 + 2 * margin))      # final pixels per metre
    w = max(16, int(round(ext[0] * ppm * (1 + 2 * margin))))
    h = max(16, int(round(ext[1] * ppm * (1 + 2 * margin))))
    ss = _SUPERSAMPLE
    centre = (lo + hi) / 2 + jitter * ext
    scale = ppm * ss
    offset = (w * ss / 2 - centre[0] * scale, h * ss / 2 - centre[1] * scale)

    if real:
        tex = road_texture(camera)
        foreshort = max(math.sin(math.radians(elev)), 0.3)
        ww = min(w / ppm * TEXELS_PER_M, _TEX_SIZE - 2)
        wh = min(h / ppm / foreshort * TEXELS_PER_M, _TEX_SIZE - 2)
        cx = (track.bg_x + frame * track.bg_dx) * _TEX_SIZE
        cy = (track.bg_y + frame * track.bg_dy) * _TEX_SIZE
        cx = float(np.clip(cx, ww / 2, _TEX_SIZE - ww / 2))
        cy = float(np.clip(cy, wh / 2, _TEX_SIZE - wh / 2))
        box = (cx - ww / 2, cy - wh / 2, cx + ww / 2, cy + wh / 2)
        img = tex.resize((w * ss, h * ss), Image.BILINEAR, box=box)
    else:
        img = _sim_background(camera, (w * ss, h * ss))

    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).polygon((shadow * scale + np.asarray(offset)).ravel().tolist(), fill=120 if real else 90)
    img.paste((0, 0, 0), mask=mask)
    light = Lighting(light_direction(yaw, light_az, light_el), ambient, diffuse, intensity if not real else 1.0)
    draw_vehicle(ImageDraw.Draw(img), faces, scale, offset, light)
    if real and rng.random() < camera.occlusion_rate:
        _draw_occluder(img, rng)
    img = img.reduce(ss)

    if real:
        if camera.blur > 0:
            img = img.filter(ImageFilter.GaussianBlur(camera.blur * float(rng.uniform(0.8, 1.2))))
        arr = np.asarray(img, dtype=np.float32)
        arr = arr * (np.asarray(camera.cast, np.float32) * np.float32(intensity))
        arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(camera.noise)
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    dist = track.distance / growth
    info = FrameInfo(
        orientation=yaw, elevation=elev, light_intensity=intensity, light_direction=light_az % 360.0,
        camera_height=dist * math.sin(math.radians(elev)), camera_distance=dist, size=img.size,
    )
    return img, info


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    """JPEG bytes (deterministic for a given Pillow/libjpeg build)."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


def render_view(identity: VehicleIdentity, orientation: float, elevation: float = 15.0, long_side: int = 160,
                background: tuple[int, int, int] = (128, 128, 128)) -> Image.Image:
    """A clean, unlabelled picture of a vehicle at an exact pose (no noise, no JPEG): for tests and figures."""
    faces = project_model(vehicle_parts(identity), orientation, elevation)
    pts = np.concatenate([f.points for f in faces if f.visible])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ppm = long_side / (float((hi - lo).max()) * 1.1)
    w, h = (int(round(v * ppm * 1.1)) for v in (hi - lo))
    ss = _SUPERSAMPLE
    img = Image.new("RGB", (w * ss, h * ss), background)
    centre = (lo + hi) / 2
    offset = (w * ss / 2 - centre[0] * ppm * ss, h * ss / 2 - centre[1] * ppm * ss)
    light = Lighting(light_direction(orientation, 30.0, 50.0), 0.5, 0.55, 1.0)
    draw_vehicle(ImageDraw.Draw(img), faces, ppm * ss, offset, light)
    return img.reduce(ss)
