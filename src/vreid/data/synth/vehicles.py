"""Synthetic vehicles: identity attributes, a box-model 3-D body, its projection and its drawing.

Coordinates
-----------
Vehicle frame (metres): ``x`` points forward (the front bumper is at ``x = +length/2``), ``y`` to the vehicle's
own left, ``z`` up; the ground is ``z = 0``.

Orientation convention
----------------------
``orientation`` (theta) is in degrees, in ``[0, 360)``, and says which way the vehicle faces *relative to the
camera*:

* ``0``   -- the vehicle's front faces the camera (we see the headlights);
* ``90``  -- the vehicle points to the image's right. The camera then sees the vehicle's own right-hand flank
  (a car driving left-to-right past you shows you its right side);
* ``180`` -- the rear faces the camera (we see the red tail-lights);
* ``270`` -- the vehicle points to the image's left and the camera sees its own left flank.

Projection is orthographic (weak perspective: the renderer scales the result to the crop size) from a camera at
``elevation`` degrees above the horizon. In the vehicle frame the unit vector towards the camera is
``d = (cos e cos t, -cos e sin t, sin e)``; image-right is ``r = (sin t, cos t, 0)`` and image-up ``u = r x (-d)``.
A face is visible when its outward normal has ``n . d > 0``.

Hidden-surface removal is the painter's algorithm at two levels: parts (convex boxes, frusta, wheel prisms) are
ordered back to front through axis-aligned separating planes, and inside a convex part back faces are culled,
so the remaining faces never overlap each other.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import ImageDraw

from vreid.data.synth.seeding import make_rng

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]

# --- The VehicleX label tables: the ONE place where colorID / typeID numbering lives. ---------------------------
# (name, base paint RGB, relative frequency among generated groups)
VEHICLEX_COLORS: tuple[tuple[str, RGB, float], ...] = (
    ("yellow", (222, 186, 40), 0.04),
    ("orange", (226, 112, 28), 0.03),
    ("green", (44, 112, 60), 0.05),
    ("gray", (126, 128, 132), 0.16),
    ("red", (172, 28, 34), 0.10),
    ("blue", (36, 74, 160), 0.10),
    ("white", (228, 229, 226), 0.20),
    ("golden", (192, 158, 86), 0.04),
    ("brown", (104, 68, 44), 0.04),
    ("black", (32, 32, 35), 0.16),
    ("purple", (98, 50, 126), 0.03),
    ("pink", (220, 132, 168), 0.02),
)
# (name, relative frequency)
VEHICLEX_TYPES: tuple[tuple[str, float], ...] = (
    ("sedan", 0.20),
    ("suv", 0.16),
    ("van", 0.08),
    ("hatchback", 0.10),
    ("mpv", 0.08),
    ("pickup", 0.08),
    ("bus", 0.05),
    ("truck", 0.07),
    ("estate", 0.07),
    ("sportscar", 0.06),
    ("RV", 0.05),
)
COLOR_NAMES: tuple[str, ...] = tuple(c[0] for c in VEHICLEX_COLORS)
TYPE_NAMES: tuple[str, ...] = tuple(t[0] for t in VEHICLEX_TYPES)
_COLOR_P = np.array([c[2] for c in VEHICLEX_COLORS]) / sum(c[2] for c in VEHICLEX_COLORS)
_TYPE_P = np.array([t[1] for t in VEHICLEX_TYPES]) / sum(t[1] for t in VEHICLEX_TYPES)

# Fixed part colours. Lights are emissive (not shaded) so that front and rear stay recognisable in any light.
HEADLIGHT_RGB: RGB = (255, 244, 196)
TAILLIGHT_RGB: RGB = (214, 22, 30)
_TYRE: RGB = (30, 30, 32)
_GRILLE: RGB = (40, 42, 46)
_PLATE: RGB = (226, 228, 220)
_BUMPER: RGB = (52, 52, 56)
_RACK: RGB = (48, 48, 52)
_BED: RGB = (54, 52, 50)
_HUB: RGB = (70, 70, 74)
_GLASS_LIGHT: RGB = (84, 104, 124)
_GLASS_DARK: RGB = (26, 30, 38)
_STRIPE_PALETTE: tuple[RGB, ...] = ((240, 240, 236), (24, 24, 26), (200, 30, 36), (236, 200, 40),
                                    (232, 120, 30), (40, 90, 200), (40, 150, 70), (186, 190, 196))
_STICKER_PALETTE: tuple[RGB, ...] = ((248, 248, 248), (246, 214, 40), (214, 40, 44), (44, 96, 214),
                                     (50, 170, 80), (240, 130, 30), (20, 20, 22), (236, 110, 170), (40, 190, 210))
_RIM_PALETTE: tuple[RGB, ...] = ((196, 198, 204), (36, 36, 38), (204, 164, 66), (236, 236, 236), (146, 100, 60))
_CARGO_PALETTE: tuple[RGB, ...] = ((236, 236, 232), (200, 202, 206), (226, 222, 200), (170, 176, 182))
_STICKER_FACES = ("left", "right", "rear")
_STICKER_SHAPES = ("rect", "disc", "diamond")

# Distinctive binary features. Within a group every member gets a different code word of an even-parity code,
# so any two members of a group differ in at least two of these features.
SIGNATURE_FEATURES = ("stripes", "roof_rack", "sticker", "two_tone", "spoiler", "dark_tint")
_SIGNATURES: tuple[tuple[bool, ...], ...] = tuple(
    tuple(bool(c >> b & 1) for b in range(len(SIGNATURE_FEATURES)))
    for c in range(1 << len(SIGNATURE_FEATURES)) if bin(c).count("1") % 2 == 0
)
MAX_GROUP_SIZE = len(_SIGNATURES)


@dataclass(frozen=True)
class VehicleIdentity:
    """Everything that makes one vehicle look like itself, independent of camera and pose."""

    type_id: int
    color_id: int
    paint: RGB
    stripes: int = 0                 # 0 none, 1 single band, 2 double band (both flanks)
    stripe_color: RGB = (240, 240, 236)
    stripe_height: float = 0.45      # band centre as a fraction of the flank height
    roof_rack: bool = False
    sticker_face: str = ""           # "" none, else "left" | "right" (the vehicle's own flanks) | "rear"
    sticker_color: RGB = (248, 248, 248)
    sticker_shape: str = "rect"
    sticker_uv: tuple[float, float] = (0.5, 0.5)
    sticker_size: float = 0.3        # metres (doubled on trucks, buses and RVs)
    two_tone: bool = False
    roof_color: RGB = (24, 24, 26)
    spoiler: bool = False
    dark_tint: bool = False
    rim_color: RGB = (196, 198, 204)
    sunroof: bool = False
    black_bumpers: bool = False
    cargo_color: RGB = (236, 236, 232)   # truck box / RV body / pickup tonneau: shared within a group

    @property
    def type_name(self) -> str:
        return TYPE_NAMES[self.type_id]

    @property
    def color_name(self) -> str:
        return COLOR_NAMES[self.color_id]

    def signature(self) -> tuple[bool, ...]:
        """The binary features that distinguish members of one (type, colour) group."""
        return (self.stripes > 0, self.roof_rack, bool(self.sticker_face), self.two_tone, self.spoiler,
                self.dark_tint)

    def details(self) -> dict[str, str]:
        """Distinctive details as label attributes (written into the simulation XML)."""
        return {
            "stripes": str(self.stripes),
            "roofRack": str(int(self.roof_rack)),
            "sticker": self.sticker_face or "none",
            "twoTone": str(int(self.two_tone)),
            "spoiler": str(int(self.spoiler)),
            "darkTint": str(int(self.dark_tint)),
            "sunroof": str(int(self.sunroof)),
            "rimColor": "".join(f"{c:02x}" for c in self.rim_color),
        }

    def describe(self) -> str:
        """A short human-readable summary for contact sheets and logs."""
        bits = [f"stripe x{self.stripes}" if self.stripes else "",
                "rack" if self.roof_rack else "", f"sticker:{self.sticker_face}" if self.sticker_face else "",
                "2-tone" if self.two_tone else "", "spoiler" if self.spoiler else "",
                "dark glass" if self.dark_tint else "", "sunroof" if self.sunroof else ""]
        return " ".join(b for b in bits if b) or "plain"


def _color_distance(a: RGB | np.ndarray, b: RGB | np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, float) - np.asarray(b, float)))


def _pick_contrasting(rng: np.random.Generator, palette: tuple[RGB, ...], paint: RGB) -> RGB:
    """One palette colour visibly different from the paint (always exactly one draw from ``rng``)."""
    choices = [c for c in palette if _color_distance(c, paint) > 110] or list(palette)
    return choices[int(rng.integers(len(choices)))]


def identity_attributes(seed: int, index: int, group_size: int = 3, part: str = "real") -> VehicleIdentity:
    """Attributes of identity ``index`` (0-based) of ``part`` ("real" or "sim").

    Identities ``index // group_size`` form a group that shares type and exact paint (drawn from the group's
    own RNG), so colour and shape alone cannot tell them apart; the members' details come from each identity's
    own RNG, with the group's RNG assigning distinct feature code words. Nothing depends on how many
    identities exist, so the same ``(seed, index)`` always gives the same vehicle.
    """
    return _identity_attributes(int(seed), int(index), int(group_size), str(part))


@lru_cache(maxsize=8192)
def _identity_attributes(seed: int, index: int, group_size: int, part: str) -> VehicleIdentity:
    if not 1 <= group_size <= MAX_GROUP_SIZE:
        raise ValueError(f"group_size must be in 1..{MAX_GROUP_SIZE}, got {group_size}")
    group, member = divmod(index, group_size)
    g = make_rng(seed, part, "group", group)
    type_id = int(g.choice(len(TYPE_NAMES), p=_TYPE_P))
    color_id = int(g.choice(len(COLOR_NAMES), p=_COLOR_P))
    base = np.asarray(VEHICLEX_COLORS[color_id][1], float)
    paint_arr = np.clip(base * g.uniform(0.9, 1.08) + g.normal(0.0, 5.0, 3), 0, 255)
    paint: RGB = tuple(int(round(v)) for v in paint_arr)  # type: ignore[assignment]
    cargo = _CARGO_PALETTE[int(g.integers(len(_CARGO_PALETTE)))]
    code = _SIGNATURES[int(g.permutation(len(_SIGNATURES))[member])]
    has = dict(zip(SIGNATURE_FEATURES, code, strict=True))

    r = make_rng(seed, part, "identity", index)
    # Always draw every value in the same order so each one is stable whatever the flags are.
    stripe_count = 1 + int(r.integers(2))
    stripe_color = _pick_contrasting(r, _STRIPE_PALETTE, paint)
    stripe_height = float(r.uniform(0.3, 0.62))
    sticker_face = _STICKER_FACES[int(r.integers(len(_STICKER_FACES)))]
    sticker_color = _pick_contrasting(r, _STICKER_PALETTE, paint)
    sticker_shape = _STICKER_SHAPES[int(r.integers(len(_STICKER_SHAPES)))]
    sticker_uv = (float(r.uniform(0.2, 0.8)), float(r.uniform(0.35, 0.7)))
    sticker_size = float(r.uniform(0.28, 0.5))
    roof_color: RGB = (236, 236, 234) if sum(paint) < 150 else (22, 22, 24)
    rim_color = _RIM_PALETTE[int(r.integers(len(_RIM_PALETTE)))]
    sunroof = bool(r.random() < 0.3)
    black_bumpers = bool(r.random() < 0.4)
    return VehicleIdentity(
        type_id=type_id, color_id=color_id, paint=paint,
        stripes=stripe_count if has["stripes"] else 0, stripe_color=stripe_color, stripe_height=stripe_height,
        roof_rack=has["roof_rack"], sticker_face=sticker_face if has["sticker"] else "",
        sticker_color=sticker_color, sticker_shape=sticker_shape, sticker_uv=sticker_uv,
        sticker_size=sticker_size, two_tone=has["two_tone"], roof_color=roof_color, spoiler=has["spoiler"],
        dark_tint=has["dark_tint"], rim_color=rim_color, sunroof=sunroof, black_bumpers=black_bumpers,
        cargo_color=cargo,
    )


def generic_identity(vehicle_type: int | str, color: int | str = "blue") -> VehicleIdentity:
    """A plain vehicle of one type and colour (no sticker, stripes, ...), for tests and figures."""
    type_id = TYPE_NAMES.index(vehicle_type) if isinstance(vehicle_type, str) else int(vehicle_type)
    color_id = COLOR_NAMES.index(color) if isinstance(color, str) else int(color)
    return VehicleIdentity(type_id=type_id, color_id=color_id, paint=VEHICLEX_COLORS[color_id][1])


# --- 3-D body ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BodySpec:
    """Dimensions (metres) of one body type, all boxes/frusta in the vehicle frame."""

    length: float
    width: float
    wheel_r: float
    axles: tuple[float, ...]            # x of each axle
    clearance: float                    # bottom of the (narrow) sill between the wheels
    body_bottom: float                  # bottom of the main lower body, below the wheel tops (wheel arches)
    body_top: float
    cabin_x: tuple[float, float]        # cabin footprint (rear x, front x)
    cabin_inset: tuple[float, float]    # how much the cabin roof is pulled in at (rear, front): window slopes
    cabin_top: float
    tumble: float                       # the cabin roof is this much narrower per side than the body
    windows: str                        # window layout name, see _CABIN_WINDOWS
    body_inset: tuple[float, float] = (0.0, 0.0)   # sloping bonnet / boot lid
    cargo: tuple[float, float, float] | None = None  # (rear x, front x, top z) of a bed / box behind the cabin
    cargo_kind: str = ""                # "bed" | "box" | "living"
    deco_part: str = "body"             # where stripes and side/rear stickers go
    roof_part: str = "cabin"            # where the roof rack goes


BODY_SPECS: dict[str, BodySpec] = {
    "sedan": BodySpec(4.6, 1.8, 0.32, (1.42, -1.38), 0.18, 0.44, 0.95, (-1.3, 0.95), (0.45, 0.78), 1.43, 0.11,
                      "car2", body_inset=(0.08, 0.16)),
    "suv": BodySpec(4.7, 1.9, 0.38, (1.45, -1.42), 0.3, 0.58, 1.12, (-2.28, 0.8), (0.14, 0.62), 1.82, 0.09,
                    "car3", body_inset=(0.02, 0.14)),
    "van": BodySpec(5.0, 2.0, 0.36, (1.75, -1.75), 0.26, 0.52, 1.02, (-2.5, 1.55), (0.0, 0.62), 2.35, 0.04,
                    "van", body_inset=(0.0, 0.1)),
    "hatchback": BodySpec(3.95, 1.75, 0.31, (1.28, -1.22), 0.17, 0.42, 0.92, (-1.95, 0.62), (0.22, 0.74), 1.48,
                          0.1, "car2", body_inset=(0.02, 0.16)),
    "mpv": BodySpec(4.8, 1.86, 0.33, (1.5, -1.45), 0.2, 0.46, 0.98, (-2.38, 1.25), (0.14, 0.95), 1.74, 0.08,
                    "car3", body_inset=(0.02, 0.14)),
    "pickup": BodySpec(5.3, 1.92, 0.39, (1.72, -1.75), 0.32, 0.6, 1.12, (-0.35, 1.0), (0.04, 0.48), 1.9, 0.08,
                       "pickup", body_inset=(0.0, 0.12), cargo=(-2.65, -0.38, 1.42), cargo_kind="bed"),
    "bus": BodySpec(11.0, 2.5, 0.5, (3.6, -2.7), 0.3, 0.72, 1.25, (-5.5, 5.5), (0.04, 0.15), 3.1, 0.03, "bus"),
    "truck": BodySpec(7.6, 2.4, 0.5, (2.95, -1.9, -3.0), 0.42, 0.72, 1.05, (2.0, 3.8), (0.0, 0.14), 2.95, 0.04,
                      "cab", cargo=(-3.8, 1.9, 3.45), cargo_kind="box", deco_part="cargo"),
    "estate": BodySpec(4.75, 1.8, 0.32, (1.45, -1.4), 0.18, 0.44, 0.95, (-2.32, 0.95), (0.1, 0.78), 1.46, 0.09,
                       "car3", body_inset=(0.02, 0.16)),
    "sportscar": BodySpec(4.45, 1.92, 0.34, (1.38, -1.32), 0.12, 0.37, 0.8, (-1.45, 0.55), (0.6, 0.82), 1.17,
                          0.14, "car2", body_inset=(0.1, 0.22)),
    "RV": BodySpec(7.2, 2.3, 0.46, (2.3, -2.1), 0.36, 0.66, 1.2, (2.0, 3.6), (0.0, 0.7), 2.45, 0.05, "cab",
                   cargo=(-3.6, 1.96, 3.2), cargo_kind="living", deco_part="cargo", roof_part="cargo"),
}
assert set(BODY_SPECS) == set(TYPE_NAMES)

# Window layouts: per cabin face, a list of (s0, s1, v0, v1) rectangles. For the flanks s runs front -> rear;
# for front/rear faces s runs across the face. v runs bottom -> top of the face.
_Win = tuple[float, float, float, float]
_CABIN_WINDOWS: dict[str, dict[str, tuple[_Win, ...]]] = {
    "car2": {"side": ((0.05, 0.47, 0.1, 0.88), (0.53, 0.93, 0.1, 0.88)),
             "front": ((0.05, 0.95, 0.06, 0.94),), "rear": ((0.08, 0.92, 0.1, 0.9),)},
    "car3": {"side": ((0.04, 0.35, 0.1, 0.88), (0.39, 0.66, 0.1, 0.88), (0.7, 0.95, 0.12, 0.88)),
             "front": ((0.05, 0.95, 0.06, 0.94),), "rear": ((0.08, 0.92, 0.36, 0.9),)},
    "van": {"side": ((0.03, 0.2, 0.45, 0.9), (0.25, 0.46, 0.5, 0.88)),
            "front": ((0.04, 0.96, 0.1, 0.95),), "rear": ((0.06, 0.47, 0.5, 0.9), (0.53, 0.94, 0.5, 0.9))},
    "pickup": {"side": ((0.08, 0.48, 0.15, 0.88), (0.52, 0.9, 0.15, 0.88)),
               "front": ((0.05, 0.95, 0.08, 0.94),), "rear": ((0.14, 0.86, 0.38, 0.86),)},
    "bus": {"side": ((0.02, 0.09, 0.05, 0.92),) + tuple((0.12 + 0.121 * k, 0.225 + 0.121 * k, 0.38, 0.92)
                                                        for k in range(7)),
            "front": ((0.03, 0.97, 0.1, 0.96),), "rear": ((0.1, 0.9, 0.45, 0.9),)},
    "cab": {"side": ((0.12, 0.75, 0.45, 0.9),), "front": ((0.05, 0.95, 0.42, 0.94),),
            "rear": ((0.3, 0.7, 0.6, 0.86),)},
    "living": {"side": ((0.15, 0.3, 0.45, 0.75), (0.55, 0.72, 0.45, 0.75)), "front": (),
               "rear": ((0.3, 0.7, 0.5, 0.75),)},
}


@dataclass
class _Face:
    name: str
    verts: np.ndarray          # (n, 3) vehicle frame
    normal: np.ndarray         # outward unit normal
    rgb: np.ndarray            # base colour (float, 0..255)
    material: str              # "paint" | "glass" | "emissive" | "matte"
    overlays: list[tuple[np.ndarray, np.ndarray, str]]


@dataclass
class _Part:
    name: str
    lo: np.ndarray
    hi: np.ndarray
    faces: list[_Face]


def _newell_normal(verts: np.ndarray) -> np.ndarray:
    nxt = np.roll(verts, -1, axis=0)
    n = np.array([
        np.sum((verts[:, 1] - nxt[:, 1]) * (verts[:, 2] + nxt[:, 2])),
        np.sum((verts[:, 2] - nxt[:, 2]) * (verts[:, 0] + nxt[:, 0])),
        np.sum((verts[:, 0] - nxt[:, 0]) * (verts[:, 1] + nxt[:, 1])),
    ])
    return n / (np.linalg.norm(n) + 1e-12)


def _make_part(name: str, faces: list[tuple[str, np.ndarray, RGB, str]]) -> _Part:
    """A convex part; normals are made to point away from the part's centre, so vertex order does not matter."""
    allv = np.concatenate([f[1] for f in faces])
    centre = allv.mean(axis=0)
    out = []
    for fname, verts, rgb, material in faces:
        n = _newell_normal(verts)
        if float(n @ (verts.mean(axis=0) - centre)) < 0:
            n = -n
        out.append(_Face(fname, verts, n, np.asarray(rgb, float), material, []))
    return _Part(name, allv.min(axis=0), allv.max(axis=0), out)


def _frustum(name: str, x0: float, x1: float, hw_bottom: float, z0: float, z1: float, rgb: RGB,
             inset: tuple[float, float] = (0.0, 0.0), hw_top: float | None = None,
             top_rgb: RGB | None = None, material: str = "paint") -> _Part:
    """A box whose top face may be pulled in (rear, front, sides): faces are quads BL, BR, TR, TL from outside."""
    hb = hw_bottom
    ht = hb if hw_top is None else hw_top
    t0, t1 = x0 + inset[0], x1 - inset[1]
    p = np.array
    faces = [
        ("front", p([[x1, -hb, z0], [x1, hb, z0], [t1, ht, z1], [t1, -ht, z1]]), rgb, material),
        ("rear", p([[x0, hb, z0], [x0, -hb, z0], [t0, -ht, z1], [t0, ht, z1]]), rgb, material),
        ("left", p([[x1, hb, z0], [x0, hb, z0], [t0, ht, z1], [t1, ht, z1]]), rgb, material),
        ("right", p([[x0, -hb, z0], [x1, -hb, z0], [t1, -ht, z1], [t0, -ht, z1]]), rgb, material),
        ("top", p([[t0, -ht, z1], [t0, ht, z1], [t1, ht, z1], [t1, -ht, z1]]), top_rgb or rgb, material),
    ]
    return _make_part(name, [(n, v.astype(float), c, m) for n, v, c, m in faces])


def _wheel(name: str, xc: float, y_out: float, y_in: float, r: float, rim: RGB, sides: int = 12) -> _Part:
    a = np.linspace(0.0, 2 * math.pi, sides, endpoint=False) + math.pi / sides
    ring = np.stack([xc + r * np.cos(a), np.zeros(sides), r + r * np.sin(a)], axis=1)
    outer, inner = ring.copy(), ring.copy()
    outer[:, 1], inner[:, 1] = y_out, y_in
    faces: list[tuple[str, np.ndarray, RGB, str]] = [("cap", outer, _TYRE, "matte"), ("inner", inner, _TYRE, "matte")]
    for k in range(sides):
        j = (k + 1) % sides
        faces.append((f"tread{k}", np.array([outer[k], outer[j], inner[j], inner[k]]), _TYRE, "matte"))
    part = _make_part(name, faces)
    centre = np.array([xc, y_out, r])
    cap = part.faces[0]
    cap.overlays.append((centre + (outer - centre) * 0.62, np.asarray(rim, float), "paint"))
    cap.overlays.append((centre + (outer - centre) * 0.22, np.asarray(_HUB, float), "paint"))
    return part


def _on_face(q: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Map (u, v) in [0,1]^2 onto quad q = (BL, BR, TR, TL) bilinearly (works on trapezoids)."""
    u, v = uv[:, :1], uv[:, 1:]
    return (1 - v) * ((1 - u) * q[0] + u * q[1]) + v * ((1 - u) * q[3] + u * q[2])


def _rect(u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]], float)


def _side_u(face: str, s0: float, s1: float) -> tuple[float, float]:
    """Front-to-rear fraction -> the face's own u (the left flank's u runs front->rear, the right's rear->front)."""
    return (s0, s1) if face == "left" else (1.0 - s1, 1.0 - s0)


def _add(face: _Face, uv: np.ndarray, rgb: RGB | np.ndarray, material: str = "paint") -> None:
    face.overlays.append((_on_face(face.verts, uv), np.asarray(rgb, float), material))


def _face(part: _Part, name: str) -> _Face:
    return next(f for f in part.faces if f.name == name)


def _sticker_uv(identity: VehicleIdentity, face: _Face) -> np.ndarray:
    q = face.verts
    len_u = float(np.linalg.norm(q[1] - q[0]))
    len_v = float(np.linalg.norm(q[3] - q[0]))
    size = identity.sticker_size * (2.0 if identity.type_name in ("truck", "bus", "RV") else 1.0)
    su, sv = min(0.45, size / 2 / len_u), min(0.4, size / 2 / len_v)
    uc, vc = identity.sticker_uv
    if face.name == "rear":
        uc = 0.3 + 0.4 * uc
    uc, vc = min(max(uc, su + 0.02), 0.98 - su), min(max(vc, sv + 0.02), 0.98 - sv)
    if identity.sticker_shape == "disc":
        a = np.linspace(0, 2 * math.pi, 12, endpoint=False)
        return np.stack([uc + su * np.cos(a), vc + sv * np.sin(a)], axis=1)
    if identity.sticker_shape == "diamond":
        return np.array([[uc, vc - sv], [uc + su, vc], [uc, vc + sv], [uc - su, vc]])
    return _rect(uc - su, uc + su, vc - sv * 0.7, vc + sv * 0.7)


def _window_faces(part: _Part, layout: str, tint: RGB) -> None:
    wins = _CABIN_WINDOWS[layout]
    for fname in ("front", "rear", "left", "right"):
        face = _face(part, fname)
        for s0, s1, v0, v1 in wins["side" if fname in ("left", "right") else fname]:
            u0, u1 = _side_u(fname, s0, s1) if fname in ("left", "right") else (s0, s1)
            _add(face, _rect(u0, u1, v0, v1), tint, "glass")


def vehicle_parts(identity: VehicleIdentity) -> tuple[_Part, ...]:
    """The vehicle as convex parts with coloured faces and face details, in the vehicle frame (cached)."""
    return _vehicle_parts(identity)


@lru_cache(maxsize=1024)
def _vehicle_parts(identity: VehicleIdentity) -> tuple[_Part, ...]:
    spec = BODY_SPECS[identity.type_name]
    paint = identity.paint
    L, hw, r = spec.length, spec.width / 2, spec.wheel_r
    tint = _GLASS_DARK if identity.dark_tint else _GLASS_LIGHT
    roof = identity.roof_color if identity.two_tone else paint
    wheel_w = 0.2 + 0.06 * spec.width
    y_out = hw - 0.03
    y_in = y_out - wheel_w
    sill_hw = y_in - 0.03
    sill_rgb: RGB = tuple(int(c * 0.55) for c in paint)  # type: ignore[assignment]
    parts: list[_Part] = [
        _frustum("sill", -L / 2 + 0.12, L / 2 - 0.12, sill_hw, spec.clearance, spec.body_bottom, sill_rgb),
        _frustum("body", -L / 2, L / 2, hw, spec.body_bottom, spec.body_top, paint, inset=spec.body_inset,
                 hw_top=hw - 0.03),
    ]
    for k, ax in enumerate(spec.axles):
        parts.append(_wheel(f"wheel{k}L", ax, y_out, y_in, r, identity.rim_color))
        parts.append(_wheel(f"wheel{k}R", ax, -y_out, -y_in, r, identity.rim_color))
    cx0, cx1 = spec.cabin_x
    cabin = _frustum("cabin", cx0, cx1, hw - 0.05, spec.body_top, spec.cabin_top, paint, inset=spec.cabin_inset,
                     hw_top=hw - spec.tumble, top_rgb=roof)
    parts.append(cabin)
    _window_faces(cabin, spec.windows, tint)
    cargo = None
    if spec.cargo is not None:
        gx0, gx1, gtop = spec.cargo
        if spec.cargo_kind == "bed":
            cargo = _frustum("cargo", gx0, gx1, hw - 0.03, spec.body_top, gtop, paint, top_rgb=_BED)
        else:
            cargo_roof = identity.roof_color if identity.two_tone else identity.cargo_color
            cargo = _frustum("cargo", gx0, gx1, hw - 0.02, spec.body_top, gtop, identity.cargo_color,
                             top_rgb=cargo_roof)
            if spec.cargo_kind == "living":
                _window_faces(cargo, "living", tint)
            else:  # box doors: two dark seams on the rear
                rear = _face(cargo, "rear")
                _add(rear, _rect(0.495, 0.505, 0.03, 0.97), _GRILLE)
        parts.append(cargo)
    body = parts[1]

    # Front: headlights (emissive), grille, plate; rear: tail-lights (emissive), plate.
    front, back = _face(body, "front"), _face(body, "rear")
    if identity.black_bumpers:
        _add(front, _rect(0.0, 1.0, 0.0, 0.26), _BUMPER)
        _add(back, _rect(0.0, 1.0, 0.0, 0.26), _BUMPER)
    _add(front, _rect(0.3, 0.7, 0.45, 0.82), _GRILLE)
    _add(front, _rect(0.04, 0.25, 0.52, 0.86), HEADLIGHT_RGB, "emissive")
    _add(front, _rect(0.75, 0.96, 0.52, 0.86), HEADLIGHT_RGB, "emissive")
    _add(front, _rect(0.4, 0.6, 0.1, 0.32), _PLATE, "matte")
    _add(back, _rect(0.03, 0.21, 0.5, 0.86), TAILLIGHT_RGB, "emissive")
    _add(back, _rect(0.79, 0.97, 0.5, 0.86), TAILLIGHT_RGB, "emissive")
    _add(back, _rect(0.4, 0.6, 0.12, 0.36), _PLATE, "matte")
    if spec.windows == "cab":  # truck / RV cab: a grille under the windshield
        _add(_face(cabin, "front"), _rect(0.2, 0.8, 0.08, 0.34), _GRILLE)
    for fname in ("left", "right"):  # door seams on cars
        if spec.windows in ("car2", "car3", "pickup"):
            u0, u1 = _side_u(fname, 0.5, 0.51)
            seam: RGB = tuple(int(c * 0.6) for c in paint)  # type: ignore[assignment]
            _add(_face(body, fname), _rect(u0, u1, 0.08, 1.0), seam)

    deco = cargo if spec.deco_part == "cargo" and cargo is not None else body
    if identity.stripes:
        h = identity.stripe_height
        bands = [(h - 0.07, h + 0.07)] if identity.stripes == 1 else [(h - 0.1, h - 0.04), (h + 0.04, h + 0.1)]
        for fname in ("left", "right"):
            for v0, v1 in bands:
                _add(_face(deco, fname), _rect(0.02, 0.98, v0, v1), identity.stripe_color)
    if identity.sticker_face:
        face = _face(deco, identity.sticker_face)
        _add(face, _sticker_uv(identity, face), identity.sticker_color)
    roof_part = cargo if spec.roof_part == "cargo" and cargo is not None else cabin
    if identity.sunroof and spec.windows in ("car2", "car3", "pickup"):
        _add(_face(cabin, "top"), _rect(0.25, 0.75, 0.3, 0.7), _GLASS_DARK, "glass")

    # Roof extras: a rack (rails + cross bars) and a spoiler (boot wing, roof lip, light bar or roof unit by
    # type). They get disjoint stretches of the roof so no two extras interpenetrate (the painter's order of
    # interpenetrating boxes can be cyclic).
    top = _face(roof_part, "top").verts
    tx0, tx1 = float(top[:, 0].min()), float(top[:, 0].max())
    thw = float(top[:, 1].max())
    tz = float(top[0, 2])
    tl = tx1 - tx0
    rx0, rx1 = tx0 + 0.12 * tl, tx1 - 0.12 * tl
    if identity.spoiler:
        name = identity.type_name
        if name in ("sedan", "sportscar"):  # a wing on the boot lid, clear of the cabin
            bt = spec.body_top
            parts.append(_box_between("spoiler", (-L / 2 + 0.04, -hw + 0.1, bt + 0.02),
                                      (-L / 2 + 0.3, hw - 0.1, bt + 0.1), _BUMPER))
        elif name in ("bus", "truck", "RV"):  # a roof unit at the rear end of the roof
            ux0 = tx0 + 0.15
            ux1 = ux0 + min(1.6, 0.45 * tl)
            parts.append(_box_between("spoiler", (ux0, -thw * 0.55, tz), (ux1, thw * 0.55, tz + 0.32),
                                      (206, 208, 210)))
            rx0 = max(rx0, ux1 + 0.12)
        elif name == "pickup":  # a light bar above the windshield
            parts.append(_box_between("spoiler", (tx1 - 0.22, -thw + 0.05, tz), (tx1 - 0.08, thw - 0.05, tz + 0.08),
                                      _BUMPER))
            rx1 = min(rx1, tx1 - 0.3)
        else:  # a lip over the rear window
            parts.append(_box_between("spoiler", (tx0 - 0.1, -thw, tz), (tx0 + 0.15, thw, tz + 0.06), _BUMPER))
            rx0 = max(rx0, tx0 + 0.2)
    if identity.roof_rack and rx1 - rx0 > 0.25:
        for side, tag in ((1, "L"), (-1, "R")):
            ya, yb = sorted((side * (thw - 0.1), side * (thw - 0.17)))
            parts.append(_box_between(f"rail{tag}", (rx0, ya, tz), (rx1, yb, tz + 0.08), _RACK))
        inset = 0.1 * (rx1 - rx0)
        for k, bx in enumerate((rx0 + inset, rx1 - inset - 0.06)):  # cross bars sit on the rails
            parts.append(_box_between(f"bar{k}", (bx, -thw + 0.06, tz + 0.08), (bx + 0.06, thw - 0.06, tz + 0.11),
                                      _RACK))
    return tuple(parts)


def _box_between(name: str, lo: tuple[float, float, float], hi: tuple[float, float, float], rgb: RGB) -> _Part:
    (x0, y0, z0), (x1, y1, z1) = lo, hi
    yc, hwid = (y0 + y1) / 2, abs(y1 - y0) / 2
    part = _frustum(name, x0, x1, hwid, z0, z1, rgb, material="matte")
    for f in part.faces:
        f.verts = f.verts + np.array([0.0, yc, 0.0])
    part.lo, part.hi = part.lo + np.array([0.0, yc, 0.0]), part.hi + np.array([0.0, yc, 0.0])
    return part


# --- Projection ------------------------------------------------------------------------------------------------

def view_basis(orientation: float, elevation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image-right r, image-up u, towards-camera d) as unit vectors in the vehicle frame."""
    t, e = math.radians(orientation), math.radians(elevation)
    d = np.array([math.cos(e) * math.cos(t), -math.cos(e) * math.sin(t), math.sin(e)])
    r = np.array([math.sin(t), math.cos(t), 0.0])
    u = np.cross(r, -d)
    return r, u, d


def _compare_parts(a: _Part, b: _Part, d: np.ndarray, eps: float = 1e-6) -> int:
    """-1 if a must be drawn before b, 1 if after, 0 if either order is right."""
    separated = False
    verdicts = set()
    for k in range(3):
        if a.hi[k] <= b.lo[k] + eps:      # a on the low side of a plane x_k = const
            separated = True
            if abs(d[k]) > eps:
                verdicts.add(-1 if d[k] > 0 else 1)
        elif b.hi[k] <= a.lo[k] + eps:
            separated = True
            if abs(d[k]) > eps:
                verdicts.add(1 if d[k] > 0 else -1)
    if separated:
        # Two separating planes that disagree mean no view ray meets both parts: no constraint.
        return verdicts.pop() if len(verdicts) == 1 else 0
    # Interpenetrating bounds (a wheel tucked into its arch): the camera is never below the ground, so the
    # part that starts lower is the one that gets covered.
    return -1 if a.lo[2] < b.lo[2] else (1 if a.lo[2] > b.lo[2] else 0)


def _part_order(parts: tuple[_Part, ...], d: np.ndarray, m: np.ndarray) -> list[int]:
    """Back-to-front order of parts: a topological sort of pairwise constraints between parts whose screen
    bounding boxes overlap (constraining parts that cannot overlap would only risk cycles)."""
    n = len(parts)
    depth = [float((p.lo + p.hi) @ d) for p in parts]
    boxes = []
    for p in parts:
        pts = np.concatenate([f.verts for f in p.faces]) @ m
        boxes.append((pts.min(axis=0), pts.max(axis=0)))
    succ: list[list[int]] = [[] for _ in range(n)]
    indeg = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if np.any(boxes[i][1] <= boxes[j][0]) or np.any(boxes[j][1] <= boxes[i][0]):
                continue
            c = _compare_parts(parts[i], parts[j], d)
            if c < 0:
                succ[i].append(j)
                indeg[j] += 1
            elif c > 0:
                succ[j].append(i)
                indeg[i] += 1
    heap = [(depth[i], i) for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, i = heapq.heappop(heap)
        order.append(i)
        for j in succ[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, (depth[j], j))
    if len(order) < n:  # only possible with interpenetrating extras; fall back to depth order rather than fail
        log.debug("painter's order has a cycle; falling back to depth order for %d parts", n - len(order))
        order += sorted((i for i in range(n) if i not in order), key=lambda i: depth[i])
    return order


@dataclass(frozen=True)
class ViewFace:
    """One face as seen by the camera: image-plane points in metres (x right, y down)."""

    part: str
    name: str
    points: np.ndarray
    normal: np.ndarray
    visible: bool
    rgb: np.ndarray
    material: str
    overlays: tuple[tuple[np.ndarray, np.ndarray, str], ...]


def project_model(parts: tuple[_Part, ...], orientation: float, elevation: float) -> list[ViewFace]:
    """All faces, the visible ones first and in painter's order (back to front), then the hidden ones."""
    r, u, d = view_basis(orientation, elevation)
    m = np.stack([r, -u], axis=1)  # (3, 2): vehicle frame -> image plane (y down)
    shown: list[ViewFace] = []
    hidden: list[ViewFace] = []
    for i in _part_order(parts, d, m):
        for f in parts[i].faces:
            visible = float(f.normal @ d) > 1e-6
            ov = tuple((v @ m, c, mat) for v, c, mat in f.overlays) if visible else ()
            vf = ViewFace(parts[i].name, f.name, f.verts @ m, f.normal, visible, f.rgb, f.material, ov)
            (shown if visible else hidden).append(vf)
    return shown + hidden


@dataclass(frozen=True)
class ProjectedFace:
    """A named face's outline in the image plane (metres; x right, y down) and whether the camera sees it."""

    points: np.ndarray
    visible: bool
    order: int          # position in the painter's drawing order among visible faces; -1 when hidden


def project_vehicle(vehicle: VehicleIdentity | int | str, orientation: float,
                    elevation: float = 15.0) -> dict[str, ProjectedFace]:
    """Projected faces keyed ``"part.face"``, e.g. ``"body.front"``, ``"body.rear"``, ``"cabin.left"``.

    ``vehicle`` is an identity, or a type id / name for a plain vehicle of that type. Pure geometry: the
    renderer draws exactly these polygons, so tests of this function test the pictures' geometry.
    """
    ident = vehicle if isinstance(vehicle, VehicleIdentity) else generic_identity(vehicle)
    out: dict[str, ProjectedFace] = {}
    k = 0
    for vf in project_model(vehicle_parts(ident), orientation, elevation):
        out[f"{vf.part}.{vf.name}"] = ProjectedFace(vf.points, vf.visible, k if vf.visible else -1)
        k += vf.visible
    return out


# --- Drawing -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lighting:
    """Directional light: ``direction`` in the vehicle frame (unit, pointing towards the light)."""

    direction: np.ndarray
    ambient: float = 0.45
    diffuse: float = 0.65
    gain: float = 1.0


def light_direction(orientation: float, azimuth: float, elevation: float) -> np.ndarray:
    """Vehicle-frame light vector for a light at ``azimuth`` degrees (0 = behind the camera, 90 = from the
    image's right) and ``elevation`` degrees above the ground, for a vehicle at ``orientation``."""
    t, a, e = math.radians(orientation), math.radians(azimuth), math.radians(elevation)
    towards_cam = np.array([math.cos(t), -math.sin(t), 0.0])
    right = np.array([math.sin(t), math.cos(t), 0.0])
    return math.cos(e) * (math.cos(a) * towards_cam + math.sin(a) * right) + np.array([0.0, 0.0, math.sin(e)])


def _shade(rgb: np.ndarray, material: str, lam: float, light: Lighting) -> tuple[int, int, int]:
    if material == "emissive":
        c = rgb
    elif material == "glass":
        c = rgb * (0.75 + 0.45 * lam) * light.gain
    else:
        c = rgb * (light.ambient + light.diffuse * lam) * light.gain
        if material == "paint":  # a touch of sheen keeps dark paints readable
            c = c + 22.0 * lam ** 4 * light.gain
    c = np.clip(c, 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def draw_vehicle(draw: ImageDraw.ImageDraw, faces: list[ViewFace], scale: float, offset: tuple[float, float],
                 light: Lighting) -> None:
    """Paint the visible faces (already in back-to-front order) at ``pixel = point * scale + offset``."""
    off = np.asarray(offset, float)
    for vf in faces:
        if not vf.visible:
            break
        lam = max(0.0, float(vf.normal @ light.direction))
        fill = _shade(vf.rgb, vf.material, lam, light)
        edge = tuple(int(c * 0.72) for c in fill)
        draw.polygon((vf.points * scale + off).ravel().tolist(), fill=fill, outline=edge)
        for pts, rgb, mat in vf.overlays:
            draw.polygon((pts * scale + off).ravel().tolist(), fill=_shade(rgb, mat, lam, light))


def footprint(identity: VehicleIdentity, margin: float = 0.12) -> np.ndarray:
    """The ground rectangle under the vehicle (for its shadow), in the vehicle frame."""
    spec = BODY_SPECS[identity.type_name]
    x, y = spec.length / 2 + margin, spec.width / 2 + margin
    return np.array([[x, y, 0.0], [-x, y, 0.0], [-x, -y, 0.0], [x, -y, 0.0]])


def with_details(identity: VehicleIdentity, **changes: object) -> VehicleIdentity:
    """A copy with some attributes changed (tests and figures)."""
    return replace(identity, **changes)  # type: ignore[arg-type]
