"""The built-in synthetic dataset: procedurally drawn shapes with a real two-level hierarchy.

Why it exists: every command, test and tutorial needs a dataset that is always available, tiny, fast to
make and byte-for-byte reproducible, yet behaves like the real task. :func:`write_synth` writes it in the
competition layout (the same files ``bench/make_protocol.py`` writes)::

    superclass_mapping.csv, subclass_mapping.csv   index,class  (seen classes 0..n-1, "novel" last)
    train_images/  + train_data.csv    image,superclass_index,subclass_index,description  (seen only)
    test_images/   + test_truth.csv    image,superclass_index,subclass_index,kind
    novel_images/  + novel_data.csv    image,superclass_index,subclass_index  (outlier-exposure pool)

A superclass is a *family* of drawings whose subclasses share visible structure and differ in parameter
values (see :data:`SYNTH_FAMILIES`):

* ``polygon``  - regular-ish polygons; subclasses differ by vertex count and fill (solid / outline);
  held out: ``pentagon-solid``, ``pentagon-outline`` (a vertex count between the seen ones).
* ``radial``   - stars, flowers and suns; subclasses differ by style and number of arms;
  held out: ``star-6``, ``flower-6`` (arm counts between the seen ones).
* ``stripes``  - two-tone elliptical blobs; subclasses differ by stripe count and orientation
  (across / along / diagonal / rings); held out: ``across-3``, ``rings-3`` (counts between the seen ones).

Held-out subclasses interpolate their family's parameters, as a new dog breed is still plainly a dog: a
model that learnt the family should place them in it and still find them novel at the subclass level.
* ``glyphs``   - text-like grids of pseudo-letters; never trained on: the novel superclass of the test set.
* ``arcs``     - crescents and spirals; never trained on and never in the test set: the outlier pool.

Each seen family has 6 seen subclasses (train + test) and 2 held-out subclasses (test only, labelled
``kind=novel_sub``: true seen superclass index, novel subclass index). ``glyphs`` images are labelled
novel at both levels (``kind=novel_super``); so is the whole ``novel_images`` pool.

Every image varies its background (solid, gradient, low-frequency noise, clutter; dark or light), object
colour (each subclass has a base hue, jittered, and a quarter of images get a random hue so colour is a
cue but not the answer), position, size, rotation and pixel noise. Images are drawn at twice the output
size, box-downsampled (anti-aliasing), and saved as ``size`` x ``size`` RGB JPEG (quality 90) under opaque
names ``0.jpg, 1.jpg, ...`` in shuffled order. Default counts: 1,080 train; 575 test (270 seen, 144 novel
subclass = 25%, 161 novel superclass = 28%); 600 pool images. One ``numpy`` Generator seeded from ``seed``
drives everything, so the same seed gives byte-identical files.
"""

from __future__ import annotations

import colorsys
import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from ..errors import SupersubError
from ..io import write_atomic

NOVEL_SUB_SHARE = 0.25  # share of novel-subclass images in the test set
NOVEL_SUPER_SHARE = 0.28  # share of novel-superclass images in the test set (as in make_protocol.py)
POOL_PER_TRAIN_CLASS = 10  # outlier-pool images per train_per_class
RANDOM_HUE_RATE = 0.25  # share of images whose colour ignores the subclass hue
JPEG_QUALITY = 90
MIN_SIZE = 16

Mask = Image.Image  # mode "L" coverage (255 = object) on the 2x canvas


@dataclass(frozen=True)
class Canvas:
    """The 2x drawing surface with its pixel-centre coordinate grids (computed once, reused)."""

    size: int
    xx: np.ndarray
    yy: np.ndarray

    @classmethod
    def of(cls, size: int) -> Canvas:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        return cls(size, xx, yy)


@dataclass(frozen=True)
class Pose:
    """Where an object sits on the canvas: centre, radius (pixels) and rotation (radians)."""

    cx: float
    cy: float
    r: float
    theta: float

    def point(self, u: float, v: float) -> tuple[float, float]:
        """Map object-frame coordinates (units of r) to canvas pixels."""
        c, s = math.cos(self.theta), math.sin(self.theta)
        return (self.cx + self.r * (u * c - v * s), self.cy + self.r * (u * s + v * c))

    def local(self, cv: Canvas) -> tuple[np.ndarray, np.ndarray]:
        """Object-frame coordinates (units of r) of every canvas pixel."""
        dx, dy = cv.xx - self.cx, cv.yy - self.cy
        c, s = math.cos(self.theta), math.sin(self.theta)
        return (dx * c + dy * s) / self.r, (-dx * s + dy * c) / self.r


Drawer = Callable[[Canvas, Pose, Mapping[str, Any], np.random.Generator], tuple[Mask, Mask | None]]


@dataclass(frozen=True)
class Variant:
    """One kind of drawing within a family; ``hue`` is its colour cue (None: any colour)."""

    name: str
    params: Mapping[str, Any]
    hue: float | None = None


@dataclass(frozen=True)
class Family:
    """A superclass: one drawing routine, its seen subclasses and its held-out ones.

    ``role`` is ``seen`` (trained on; ``held_out`` are its novel subclasses), ``novel_super`` (test-only
    novel superclass; all variants in ``held_out``) or ``pool`` (outlier-exposure pool only).
    """

    name: str
    role: str
    summary: str
    draw: Drawer = field(repr=False)
    seen: tuple[Variant, ...]
    held_out: tuple[Variant, ...]


# ----------------------------------------------------------------------------------------------- drawing


def _pil_mask(cv: Canvas, paint: Callable[[ImageDraw.ImageDraw], None]) -> Mask:
    """Coverage mask of whatever ``paint`` draws in white on a black canvas."""
    img = Image.new("L", (cv.size, cv.size), 0)
    paint(ImageDraw.Draw(img))
    return img


def _array_mask(inside: np.ndarray) -> Mask:
    """Mask from a boolean pixel array (shapes defined by inequalities rather than outlines)."""
    return Image.fromarray(inside.astype(np.uint8) * 255)


def _ring(pose: Pose, radii: Sequence[float]) -> list[tuple[float, float]]:
    """Points at evenly spaced angles with the given radii (units of r): polygons and stars."""
    step = 2 * math.pi / len(radii)
    return [pose.point(rad * math.cos(i * step), rad * math.sin(i * step)) for i, rad in enumerate(radii)]


def _closed_outline(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], width: int) -> None:
    draw.line(pts + pts[:2], fill=255, width=width, joint="curve")


def _stroke(pose: Pose, scale: float) -> int:
    """Line width in canvas pixels proportional to the object radius, never thinner than 3."""
    return max(3, round(scale * pose.r))


def _draw_polygon(cv: Canvas, pose: Pose, p: Mapping[str, Any], rng: np.random.Generator) -> tuple[Mask, None]:
    sides, fill = p["sides"], p["fill"]
    jitter = rng.uniform(0.92, 1.05, sides)
    width = _stroke(pose, 0.17)

    def paint(d: ImageDraw.ImageDraw) -> None:
        if fill == "solid":
            d.polygon(_ring(pose, jitter), fill=255)
            return
        _closed_outline(d, _ring(pose, jitter), width)
        if fill == "concentric":
            _closed_outline(d, _ring(pose, jitter * 0.58), width)
            d.polygon(_ring(pose, jitter * 0.22), fill=255)

    return _pil_mask(cv, paint), None


def _petal(pose: Pose, angle: float, dist: float, length: float, half_width: float) -> list[tuple[float, float]]:
    """An ellipse-shaped petal pointing along ``angle`` (object frame, units of r)."""
    c, s = math.cos(angle), math.sin(angle)
    pts = []
    for t in np.linspace(0, 2 * math.pi, 18, endpoint=False):
        a, b = dist + length * math.cos(t), half_width * math.sin(t)
        pts.append(pose.point(a * c - b * s, a * s + b * c))
    return pts


def _draw_radial(cv: Canvas, pose: Pose, p: Mapping[str, Any], rng: np.random.Generator) -> tuple[Mask, Mask | None]:
    style, arms = p["style"], p["arms"]
    angles = [2 * math.pi * i / arms for i in range(arms)]
    core = rng.uniform(0.26, 0.32)

    def star(d: ImageDraw.ImageDraw) -> None:
        inner = rng.uniform(0.36, 0.46)
        d.polygon(_ring(pose, [1.0 if i % 2 == 0 else inner for i in range(2 * arms)]), fill=255)

    def flower(d: ImageDraw.ImageDraw) -> None:
        half = min(0.24, 0.85 * math.pi * 0.6 / arms)
        for a in angles:
            d.polygon(_petal(pose, a, 0.58, 0.42, half), fill=255)
        d.polygon(_ring(pose, [core + 0.08] * 24), fill=255)

    def sun(d: ImageDraw.ImageDraw) -> None:
        d.polygon(_ring(pose, [0.45] * 32), fill=255)
        for a in angles:
            d.line([pose.point(0.58 * math.cos(a), 0.58 * math.sin(a)), pose.point(math.cos(a), math.sin(a))],
                   fill=255, width=_stroke(pose, 0.11))

    primary = _pil_mask(cv, {"star": star, "flower": flower, "sun": sun}[style])
    if style != "flower":
        return primary, None
    return primary, _pil_mask(cv, lambda d: d.polygon(_ring(pose, [core] * 24), fill=255))


def _bands(t: np.ndarray, lo: float, hi: float, stripes: int) -> np.ndarray:
    """True on ``stripes`` evenly spaced bands of ``t`` over [lo, hi] (2*stripes+1 alternating bands)."""
    k = np.floor((t - lo) / (hi - lo) * (2 * stripes + 1))
    return (k.astype(np.int32) % 2) == 1


def _draw_stripes(cv: Canvas, pose: Pose, p: Mapping[str, Any], rng: np.random.Generator) -> tuple[Mask, Mask]:
    pattern, count = p["pattern"], p["count"]
    u, v = pose.local(cv)
    aspect = rng.uniform(0.55, 0.72)
    vn = v / aspect
    rho = np.sqrt(u * u + vn * vn)
    ang = np.arctan2(vn, u)
    phase2, phase3 = rng.uniform(0, 2 * math.pi, 2)
    blob = rho <= 1.0 + 0.05 * np.sin(2 * ang + phase2) + 0.04 * np.sin(3 * ang + phase3)  # a wobbly ellipse
    if pattern == "across":
        mark = _bands(u, -1.05, 1.05, count)
    elif pattern == "along":
        mark = _bands(vn, -1.05, 1.05, count)
    elif pattern == "diagonal":
        mark = _bands((u + vn) / math.sqrt(2), -1.45, 1.45, count)
    elif pattern == "rings":
        mark = _bands(rho, 0.0, 1.05, count)
    else:  # grid: crossed stripes
        mark = _bands(u, -1.05, 1.05, count) ^ _bands(vn, -1.05, 1.05, count)
    return _array_mask(blob), _array_mask(mark)


def _glyph_strokes(cell: tuple[float, float, float], style: str,
                   rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """Polylines (object frame) of one pseudo-letter in a square cell (x0, y0, side)."""
    x0, y0, side = cell
    lattice = [(x0 + side * (0.2 + 0.3 * i), y0 + side * (0.15 + 0.35 * j)) for j in range(3) for i in range(3)]
    if style == "strokes":
        picks = rng.choice(9, size=(int(rng.integers(2, 5)), 2), replace=True)
        return [[lattice[a], lattice[b]] for a, b in picks if a != b] or [[lattice[0], lattice[8]]]
    if style == "dots":
        chosen = [i for i in range(9) if rng.random() < 0.5] or [4]
        return [[lattice[i]] for i in chosen]
    start = rng.uniform(0, 2 * math.pi)  # curls: an open loop like a cursive letter
    ts = np.linspace(start, start + rng.uniform(3.5, 5.5), 12)
    cx, cy, rad = x0 + side / 2, y0 + side / 2, side * 0.32
    return [[(cx + rad * math.cos(t), cy + rad * math.sin(t) * 0.8) for t in ts]]


def _draw_glyphs(cv: Canvas, pose: Pose, p: Mapping[str, Any], rng: np.random.Generator) -> tuple[Mask, None]:
    rows, cols, style = p["rows"], p["cols"], p["style"]
    side = 1.9 / max(rows, cols)
    cells = [(-cols * side / 2 + c * side, -rows * side / 2 + r * side, side)
             for r in range(rows) for c in range(cols)]
    width = max(3, round(0.16 * side * pose.r))
    lines = [line for cell in cells for line in _glyph_strokes(cell, style, rng)]

    def paint(d: ImageDraw.ImageDraw) -> None:
        for line in lines:
            pts = [pose.point(u, v) for u, v in line]
            if len(pts) == 1:
                (x, y), rad = pts[0], width * 0.8
                d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=255)
            else:
                d.line(pts, fill=255, width=width)

    return _pil_mask(cv, paint), None


def _draw_arcs(cv: Canvas, pose: Pose, p: Mapping[str, Any], rng: np.random.Generator) -> tuple[Mask, None]:
    if p["shape"] == "crescent":
        bx, by = pose.point(p["offset"], 0.0)
        r, br = pose.r, 0.92 * pose.r

        def crescent(d: ImageDraw.ImageDraw) -> None:
            d.ellipse([pose.cx - r, pose.cy - r, pose.cx + r, pose.cy + r], fill=255)
            d.ellipse([bx - br, by - br, bx + br, by + br], fill=0)

        return _pil_mask(cv, crescent), None
    turns = p["turns"]
    ts = np.linspace(0.0, 2 * math.pi * turns, 40 * turns)
    pts = [pose.point(t / ts[-1] * math.cos(t), t / ts[-1] * math.sin(t)) for t in ts]
    width = _stroke(pose, 0.3 / turns)
    return _pil_mask(cv, lambda d: d.line(pts, fill=255, width=width)), None


# ----------------------------------------------------------------------------------------------- families


def _hues(start: int, count: int) -> list[float]:
    """Well-spread base hues (golden-ratio sequence), so neighbouring subclasses differ in colour."""
    return [((start + i) * 0.6180339887) % 1.0 for i in range(count)]


def _variants(specs: Iterable[tuple[str, dict[str, Any]]], hues: Sequence[float | None]) -> tuple[Variant, ...]:
    return tuple(Variant(name, params, hue) for (name, params), hue in zip(specs, hues, strict=True))


def _seen_family(name: str, summary: str, draw: Drawer, specs: list[tuple[str, dict[str, Any]]],
                 first_hue: int) -> Family:
    """A trained family: first six specs are seen subclasses, the rest are held out (novel subclasses)."""
    variants = _variants(specs, _hues(first_hue, len(specs)))
    return Family(name, "seen", summary, draw, variants[:6], variants[6:])


def _unseen_family(name: str, role: str, summary: str, draw: Drawer,
                   specs: list[tuple[str, dict[str, Any]]]) -> Family:
    return Family(name, role, summary, draw, (), _variants(specs, [None] * len(specs)))


SYNTH_FAMILIES: tuple[Family, ...] = (
    _seen_family(
        "polygon", "regular-ish polygons; vertex count x fill", _draw_polygon,
        [(f"{shape}-{fill}", {"sides": n, "fill": fill})
         for fill in ("solid", "outline") for shape, n in (("triangle", 3), ("square", 4), ("hexagon", 6))]
        + [("pentagon-solid", {"sides": 5, "fill": "solid"}),
           ("pentagon-outline", {"sides": 5, "fill": "outline"})],
        first_hue=0,
    ),
    _seen_family(
        "radial", "stars, flowers and suns; style x number of arms", _draw_radial,
        [(f"{style}-{arms}", {"style": style, "arms": arms})
         for style, arms in (("star", 5), ("star", 8), ("flower", 5), ("flower", 8), ("sun", 6), ("sun", 12),
                             ("star", 6), ("flower", 6))],
        first_hue=8,
    ),
    _seen_family(
        "stripes", "two-tone blobs; stripe orientation x count", _draw_stripes,
        [(f"{pattern}-{count}", {"pattern": pattern, "count": count})
         for pattern, count in (("across", 2), ("across", 5), ("along", 3), ("diagonal", 3), ("rings", 2),
                                ("rings", 4), ("across", 3), ("rings", 3))],
        first_hue=16,
    ),
    _unseen_family(
        "glyphs", "novel_super", "text-like grids of pseudo-letters (novel superclass of the test set)",
        _draw_glyphs,
        [(f"{style}-{rows}x{cols}", {"style": style, "rows": rows, "cols": cols})
         for style, rows, cols in (("strokes", 2, 3), ("strokes", 3, 4), ("dots", 2, 4), ("curls", 2, 2))],
    ),
    _unseen_family(
        "arcs", "pool", "crescents and spirals (outlier-exposure pool only)", _draw_arcs,
        [("crescent-thick", {"shape": "crescent", "offset": 0.3}),
         ("crescent-thin", {"shape": "crescent", "offset": 0.15}),
         ("spiral-2", {"shape": "spiral", "turns": 2}),
         ("spiral-3", {"shape": "spiral", "turns": 3})],
    ),
)


def _family_with_role(role: str) -> list[Family]:
    return [f for f in SYNTH_FAMILIES if f.role == role]


# ----------------------------------------------------------------------------------------------- colour + background


Colour = tuple[float, float, float]  # RGB in [0, 1]; plain floats because numpy is slow on 3 values


def _hsv(h: float, s: float, v: float) -> Colour:
    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def _rgb255(colour: Colour) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, int(c * 255 + 0.5))) for c in colour)
    return r, g, b


def _interp_matrix(size: int, knots: int) -> np.ndarray:
    """(size, knots) linear-interpolation weights: upsamples a coarse grid with two matrix products."""
    pos = (np.arange(size, dtype=np.float32) + 0.5) / size * (knots - 1)
    return np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(knots, dtype=np.float32)[None, :]))


def _blend(a: Colour, b: Colour, t: np.ndarray) -> Image.Image:
    """Colour ``a`` where ``t`` is at its minimum, ``b`` at its maximum, linear between (done by PIL, fast)."""
    lo, hi = float(t.min()), float(t.max())
    weight = Image.fromarray(((t - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8))
    size = weight.size
    return Image.composite(Image.new("RGB", size, _rgb255(b)), Image.new("RGB", size, _rgb255(a)), weight)


def _gradient_field(cv: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Position along a random direction: blended, a linear gradient."""
    phi = rng.uniform(0, 2 * math.pi)
    return cv.xx * math.cos(phi) + cv.yy * math.sin(phi)


def _noise_field(cv: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Smooth random field: a coarse random grid upsampled bilinearly (low-frequency noise)."""
    m = _interp_matrix(cv.size, int(rng.integers(3, 7)))
    return m @ rng.random((m.shape[1], m.shape[1]), dtype=np.float32) @ m.T


def _clutter(img: Image.Image, base: Colour, rng: np.random.Generator) -> Image.Image:
    """Low-contrast lines, rings and dots on ``img``: distractors with no family structure."""
    d = ImageDraw.Draw(img)
    s = img.size[0]
    for _ in range(int(rng.integers(6, 14))):
        jitter = rng.uniform(-0.22, 0.22, 3)
        colour = _rgb255((base[0] + jitter[0], base[1] + jitter[1], base[2] + jitter[2]))
        x, y = rng.uniform(0, s, 2)
        rad = rng.uniform(0.02, 0.07) * s
        kind = rng.integers(3)
        if kind == 0:
            x2, y2 = rng.uniform(0, s, 2)
            d.line([(x, y), (x2, y2)], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:
            d.ellipse([x - rad, y - rad, x + rad, y + rad], outline=colour, width=2)
        else:
            d.ellipse([x - rad / 2, y - rad / 2, x + rad / 2, y + rad / 2], fill=colour)
    return img


def _background(cv: Canvas, rng: np.random.Generator) -> tuple[Image.Image, str, bool]:
    """A random background, its kind, and whether it is light (objects are then drawn dark)."""
    light = bool(rng.random() < 0.5)
    value = (lambda: rng.uniform(0.65, 0.92)) if light else (lambda: rng.uniform(0.06, 0.32))
    base = _hsv(rng.random(), rng.uniform(0.0, 0.5), value())
    kind = ("solid", "gradient", "noise", "clutter")[int(rng.integers(4))]
    solid = Image.new("RGB", (cv.size, cv.size), _rgb255(base))
    if kind == "solid":
        return solid, kind, light
    other = _hsv(rng.random(), rng.uniform(0.0, 0.5), value())
    if kind == "gradient":
        return _blend(base, other, _gradient_field(cv, rng)), kind, light
    if kind == "noise":
        return _blend(base, other, _noise_field(cv, rng)), kind, light
    under = solid if rng.random() < 0.5 else _blend(base, other, _gradient_field(cv, rng))
    return _clutter(under, base, rng), kind, light


def _object_colours(hue: float | None, light_bg: bool, rng: np.random.Generator) -> tuple[Colour, Colour]:
    """Primary colour standing out from the background; secondary contrasting with it in hue and brightness."""
    if hue is None or rng.random() < RANDOM_HUE_RATE:
        hue = rng.random()
    h = hue + rng.uniform(-0.04, 0.04)
    s = rng.uniform(0.55, 1.0)
    if light_bg:
        v = rng.uniform(0.25, 0.5)
        v2 = v + rng.uniform(0.35, 0.5)
    else:
        v = rng.uniform(0.7, 1.0)
        v2 = v * rng.uniform(0.35, 0.55)
    return _hsv(h, s, v), _hsv(h + rng.uniform(0.3, 0.7), s, v2)


# ----------------------------------------------------------------------------------------------- rendering


def _pose(cv: Canvas, rng: np.random.Generator) -> Pose:
    s = cv.size
    cx, cy = s / 2 + rng.uniform(-0.13, 0.13, 2) * s
    return Pose(float(cx), float(cy), float(rng.uniform(0.2, 0.32) * s), float(rng.uniform(0, 2 * math.pi)))


def _render(family: Family, variant: Variant, cv: Canvas, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One image (output size, RGB) of ``variant`` and the kind of background it got."""
    img, bg_kind, light = _background(cv, rng)
    primary, secondary = family.draw(cv, _pose(cv, rng), variant.params, rng)
    c1, c2 = _object_colours(variant.hue, light, rng)
    size = (cv.size, cv.size)
    img = Image.composite(Image.new("RGB", size, _rgb255(c1)), img, primary)
    if secondary is not None:
        img = Image.composite(Image.new("RGB", size, _rgb255(c2)), img, ImageChops.multiply(secondary, primary))
    small = np.asarray(img.reduce(2), dtype=np.int16)
    amp = int(rng.integers(3, 11))  # uniform pixel noise, std amp/sqrt(3): 2-6 grey levels
    noisy = small + rng.integers(-amp, amp + 1, small.shape, dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), bg_kind


# ----------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Item:
    """One image to draw and the labels/kind it is written with."""

    family: Family
    variant: Variant
    super_index: int
    sub_index: int
    kind: str


def _seen_plan() -> tuple[list[tuple[Family, Variant, int, int]], int, int]:
    """(family, variant, super, sub) for every seen subclass, plus the novel indices at both levels."""
    seen_families = _family_with_role("seen")
    subs = [(f, v, i) for i, f in enumerate(seen_families) for v in f.seen]
    return [(f, v, i, j) for j, (f, v, i) in enumerate(subs)], len(seen_families), len(subs)


def _test_counts(n_seen_test: int, n_held_out: int) -> tuple[int, int]:
    """Images per held-out subclass and novel-superclass images, so the shares hit the targets."""
    total = n_seen_test / (1.0 - NOVEL_SUB_SHARE - NOVEL_SUPER_SHARE)
    return max(1, round(NOVEL_SUB_SHARE * total / n_held_out)), max(1, round(NOVEL_SUPER_SHARE * total))


def _cycle(family: Family, count: int, novel_super: int, novel_sub: int) -> list[_Item]:
    """``count`` novel-at-both-levels items spread evenly over the family's variants."""
    vs = family.held_out
    return [_Item(family, vs[i % len(vs)], novel_super, novel_sub, "novel_super") for i in range(count)]


def _plan(train_per_class: int, test_per_class: int, rng: np.random.Generator) -> dict[str, list[_Item]]:
    seen, novel_super, novel_sub = _seen_plan()
    train = [_Item(f, v, i, j, "seen") for f, v, i, j in seen for _ in range(train_per_class)]
    test = [_Item(f, v, i, j, "seen") for f, v, i, j in seen for _ in range(test_per_class)]
    held = [(f, v, i) for i, f in enumerate(_family_with_role("seen")) for v in f.held_out]
    per_held, n_novel_super = _test_counts(len(test), len(held))
    test += [_Item(f, v, i, novel_sub, "novel_sub") for f, v, i in held for _ in range(per_held)]
    test += _cycle(_family_with_role("novel_super")[0], n_novel_super, novel_super, novel_sub)
    pool = _cycle(_family_with_role("pool")[0], POOL_PER_TRAIN_CLASS * train_per_class, novel_super, novel_sub)
    return {split: [items[k] for k in rng.permutation(len(items))]
            for split, items in (("train", train), ("test", test), ("novel", pool))}


# ----------------------------------------------------------------------------------------------- output


def _csv_writer(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Callable[[IO[str]], None]:
    """A writer for :func:`write_atomic` producing the competition's CSV dialect (LF line endings)."""

    def write(fh: IO[str]) -> None:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

    return write


def _mapping_rows(names: Sequence[str]) -> list[list[Any]]:
    return [[i, n] for i, n in enumerate(names)] + [[len(names), "novel"]]


def _check_args(out_dir: Path, seed: int, train_per_class: int, test_per_class: int, size: int) -> None:
    for name, value, low in (("seed", seed, 0), ("train_per_class", train_per_class, 1),
                             ("test_per_class", test_per_class, 1), ("size", size, MIN_SIZE)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SupersubError(f"synthetic dataset: {name} must be an integer >= {low}, got {value!r}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SupersubError(f"{out_dir}: output folder exists and is not empty; choose a new or empty folder")


def _write_images(folder: Path, items: Sequence[_Item], cv: Canvas, rng: np.random.Generator) -> list[str]:
    """Draw and save every item as ``<i>.jpg``; return each image's background kind."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = []
    for i, item in enumerate(items):
        img, bg_kind = _render(item.family, item.variant, cv, rng)
        img.save(folder / f"{i}.jpg", format="JPEG", quality=JPEG_QUALITY)
        kinds.append(bg_kind)
    return kinds


def _description(item: _Item, bg_kind: str) -> str:
    """Caption in the style of the competition's ``description`` column."""
    article = "an" if item.variant.name[0] in "aeiou" else "a"
    return (f"synthetic drawing of a {item.family.name} shape, specifically {article} {item.variant.name}, "
            f"on a {bg_kind} background")


def _write_split(out_dir: Path, split: str, items: Sequence[_Item], cv: Canvas,
                 rng: np.random.Generator) -> None:
    """Images of one split plus its CSV, with the columns the competition uses for that split."""
    folder, csv_name, last = _SPLIT_FILES[split]
    bg_kinds = _write_images(out_dir / folder, items, cv, rng)
    header = ["image", "superclass_index", "subclass_index"] + ([last] if last else [])
    rows: list[list[Any]] = []
    for i, (it, bg) in enumerate(zip(items, bg_kinds, strict=True)):
        extra = {"description": [_description(it, bg)], "kind": [it.kind], "": []}[last]
        rows.append([f"{i}.jpg", it.super_index, it.sub_index, *extra])
    write_atomic(out_dir / csv_name, _csv_writer(header, rows))


_SPLIT_FILES = {  # split -> (image folder, CSV file, extra last column)
    "train": ("train_images", "train_data.csv", "description"),
    "test": ("test_images", "test_truth.csv", "kind"),
    "novel": ("novel_images", "novel_data.csv", ""),
}
_KIND_ORDER = ("seen", "novel_sub", "novel_super")


def write_synth(out_dir: Path, seed: int = 0, train_per_class: int = 60, test_per_class: int = 15,
                size: int = 64) -> dict[str, dict[str, int]]:
    """Write the built-in dataset to ``out_dir`` (new or empty); return image counts per split and kind.

    Example result for the defaults: ``{"train": {"seen": 1080}, "test": {"seen": 270, "novel_sub": 144,
    "novel_super": 161}, "novel": {"novel_super": 600}}``. Refuses a non-empty ``out_dir`` rather than
    overwriting it: deleting user files is the caller's decision.
    """
    out_dir = Path(out_dir)
    _check_args(out_dir, seed, train_per_class, test_per_class, size)
    rng = np.random.default_rng(seed)
    seen, _, _ = _seen_plan()
    plan = _plan(train_per_class, test_per_class, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "superclass_mapping.csv",
                 _csv_writer(["index", "class"], _mapping_rows([f.name for f in _family_with_role("seen")])))
    write_atomic(out_dir / "subclass_mapping.csv",
                 _csv_writer(["index", "class"], _mapping_rows([f"{f.name}/{v.name}" for f, v, _, _ in seen])))
    cv = Canvas.of(2 * size)
    for split, items in plan.items():
        _write_split(out_dir, split, items, cv, rng)
    return {split: {k: n for k in _KIND_ORDER if (n := sum(it.kind == k for it in items))}
            for split, items in plan.items()}
