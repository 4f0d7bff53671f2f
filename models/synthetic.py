"""Seeded synthetic camera frames of a part surface, with synthetic defects and their exact masks.

What it does: renders Mono8 frames of FRAME_SHAPE where the part surface fills ROI and the rest is
plain dark background. The surface is a random crop of a real texture shipped with scikit-image
(brick, grass, gravel, at three scales and eight orientations) under a random illumination gradient
and sensor noise, so "good" parts vary the way real ones do. A defect (scratch, spot or crack) is
painted on top; its mask marks every pixel where the defect has at least a quarter of its full
strength. `make_dataset` writes a class-per-folder image set with MVTec-style masks.
Rendering takes ~1-2 ms per frame on one CPU core (the textures are prepared once, on first use).

What it does not: model optics (blur, perspective) or part position jitter; defects never leave the
ROI, and nothing outside the ROI depends on the class (the simulator stamps data there).
Everything is local: the textures come from the scikit-image install, nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data, draw, transform

from models.dataset import write_info

CLASSES = ("good", "scratch", "spot", "crack")
"""The classes a model is trained on (and the simulated line's parts)."""
UNSEEN = ("dent", "chip")
"""Defect types kept out of training entirely, to measure how a model copes with the unexpected."""
ALL_CLASSES = CLASSES + UNSEEN
FRAME_SHAPE = (160, 160)
ROI = (16, 16, 128, 128)
"""(x, y, w, h) of the part surface on the frame."""

_BACKGROUND = 24.0  # a dark conveyor belt
_MASK_LEVEL = 0.25  # fraction of a defect's full strength from which a pixel counts as defective
_MARGIN = 4  # keep defects this far inside the ROI so they are never cut by its edge


@functools.cache
def _textures() -> tuple[np.ndarray, ...]:
    """Zero-mean, unit-std float32 textures at three scales, built once on first use (the brick
    image alone takes ~0.5 s to load; per-frame work must stay at array slicing)."""
    out = []
    for img in (data.brick(), data.grass(), data.gravel()):
        base = img.astype(np.float32)
        for scale in (0.5, 1.0, 2.0):
            # Zooming in 2x only needs the central quarter, which keeps every source >= 256 px.
            src = base[128:384, 128:384] if scale == 2.0 else base
            tex = transform.rescale(src, scale, order=1, anti_aliasing=scale < 1).astype(np.float32)
            out.append((tex - tex.mean()) / tex.std())
    return tuple(out)


SURFACES = ("brick", "grass", "gravel")
"""The surface finishes (scikit-image textures, three scales each); a product variant may have some only."""


def _surface(rng: np.random.Generator, h: int, w: int, surfaces: tuple[str, ...] | None = None) -> np.ndarray:
    """A lit, textured part surface (float32 grey levels), of one of `surfaces` (default: any)."""
    textures = _textures()
    if surfaces is None:
        tex = textures[rng.integers(len(textures))]
    else:
        allowed = [i for i in range(len(textures)) if SURFACES[i // 3] in surfaces]
        if not allowed:
            raise ValueError(f"surfaces must name some of {SURFACES}, got {surfaces!r}")
        tex = textures[allowed[rng.integers(len(allowed))]]
    y0 = rng.integers(tex.shape[0] - h + 1)
    x0 = rng.integers(tex.shape[1] - w + 1)
    crop = np.rot90(tex[y0 : y0 + h, x0 : x0 + w], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    base, contrast = rng.uniform(80, 170), rng.uniform(5, 16)
    gy, gx = rng.uniform(-25, 25, size=2)  # illumination falls off across the part
    ramp_y = np.linspace(-gy, gy, h, dtype=np.float32)[:, None]
    ramp_x = np.linspace(-gx, gx, w, dtype=np.float32)[None, :]
    return base + contrast * crop + ramp_y + ramp_x


def _rasterize(polylines: list[np.ndarray], shape: tuple[int, int], width: int) -> np.ndarray:
    """Draw polylines (each an N x 2 array of (row, col)) into a float32 alpha map, softened by a
    small blur so edges are anti-aliased like a real optical image."""
    alpha = np.zeros(shape, np.float32)
    for pts in polylines:
        # Resample every segment at <= 0.5 px steps: vectorised, no per-segment Python loop.
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        arc = np.concatenate(([0.0], np.cumsum(seg)))
        s = np.linspace(0.0, arc[-1], max(int(arc[-1] * 2), 2))
        rr = np.rint(np.interp(s, arc, pts[:, 0])).astype(int)
        cc = np.rint(np.interp(s, arc, pts[:, 1])).astype(int)
        alpha[rr, cc] = 1.0
        if width > 1:
            alpha[rr + 1, cc] = 1.0
    return np.minimum(ndimage.gaussian_filter(alpha, 0.6, truncate=2.0) * 1.6, 1.0)


def _scratch(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    """A thin straight or gently curved line (quadratic Bezier)."""
    lo, hi = _MARGIN, shape[0] - _MARGIN - 2
    length = size * rng.uniform(40, 100)
    p0 = rng.uniform(lo + 10, hi - 10, size=2)
    angle = rng.uniform(0, np.pi)
    p2 = np.clip(p0 + length * np.array([np.sin(angle), np.cos(angle)]), lo, hi)
    bend = rng.normal(0, 0.15) * length * np.array([np.cos(angle), -np.sin(angle)])
    p1 = np.clip((p0 + p2) / 2 + bend, lo, hi)
    t = np.linspace(0, 1, 24)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return _rasterize([curve], shape, width=int(rng.integers(1, 3)))


def _spot(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    """A contamination blob with an irregular, soft outline."""
    radius = size * rng.uniform(5, 12)
    m = int(radius * 1.6) + 2  # half-size of the window that holds the whole blob
    cy, cx = rng.uniform(_MARGIN + m, shape[0] - _MARGIN - m, size=2)
    y0, x0 = int(cy) - m, int(cx) - m
    # Only the window is evaluated: full-ROI trigonometry alone would cost most of the frame budget.
    yy, xx = np.mgrid[y0 : y0 + 2 * m, x0 : x0 + 2 * m].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    theta = np.arctan2(dy, dx)
    wobble = sum(rng.uniform(0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
    d = np.hypot(dy, dx) / (radius * (1 + wobble))
    alpha = np.zeros(shape, np.float32)
    alpha[y0 : y0 + 2 * m, x0 : x0 + 2 * m] = np.clip((1.2 - d) / 0.4, 0.0, 1.0)
    return alpha


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, length: float) -> np.ndarray:
    """A jagged path of 3 px steps: the heading drifts slowly (cracks run roughly straight) and
    jitters strongly step to step (the zig-zag)."""
    lo, hi = _MARGIN, ROI[3] - _MARGIN - 2
    n = max(int(length / 3), 2)
    headings = heading + np.cumsum(rng.normal(0, 0.12, size=n)) + rng.normal(0, 0.5, size=n)
    steps = 3 * np.stack([np.sin(headings), np.cos(headings)], axis=1)
    return np.clip(start + np.concatenate(([[0.0, 0.0]], np.cumsum(steps, axis=0))), lo, hi)


def _crack(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    """A jagged random walk with up to two shorter side branches."""
    lo, hi = _MARGIN + 20, shape[0] - _MARGIN - 22
    trunk = _walk(rng, rng.uniform(lo, hi, size=2), rng.uniform(0, 2 * np.pi), size * rng.uniform(40, 90))
    paths = [trunk]
    for _ in range(rng.integers(0, 3)):
        i = rng.integers(1, len(trunk))
        heading = np.arctan2(*(trunk[i] - trunk[i - 1])) + rng.choice((-1, 1)) * rng.uniform(0.4, 1.0)
        paths.append(_walk(rng, trunk[i], heading, len(trunk) * 3 * rng.uniform(0.2, 0.5)))
    return _rasterize(paths, shape, width=1)


def _dent(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    """A shallow dent under light from one side: no edge, only a bright flank facing the light and a
    dark one away from it (the derivative of a smooth bump), signed in [-1, 1]."""
    radius = size * rng.uniform(7, 15)
    m = int(radius * 2.2) + 2
    cy, cx = rng.uniform(_MARGIN + m, shape[0] - _MARGIN - m, size=2)
    y0, x0 = int(cy) - m, int(cx) - m
    yy, xx = np.mgrid[y0 : y0 + 2 * m, x0 : x0 + 2 * m].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    along = ((yy - cy) * np.sin(light) + (xx - cx) * np.cos(light)) / radius
    bump = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2))
    alpha = np.zeros(shape, np.float32)
    alpha[y0 : y0 + 2 * m, x0 : x0 + 2 * m] = -2.33 * along * bump  # peak |alpha| = 1
    # The far tails (under ~3 grey levels) are cut: they are no visible defect, and a defect must
    # stay near its mask.
    return np.where(np.abs(alpha) < 0.05, 0.0, np.clip(alpha, -1.0, 1.0)).astype(np.float32)


def _chip(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    """Material broken out: a small sharp-edged irregular polygon (the cavity lies in shadow)."""
    radius = size * rng.uniform(6, 12)
    m = int(radius) + 3
    cy, cx = rng.uniform(_MARGIN + m, shape[0] - _MARGIN - m, size=2)
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(5, 9))))
    radii = radius * rng.uniform(0.5, 1.0, size=len(angles))
    rr, cc = draw.polygon(cy + radii * np.sin(angles), cx + radii * np.cos(angles), shape)
    alpha = np.zeros(shape, np.float32)
    alpha[rr, cc] = 1.0
    return np.minimum(ndimage.gaussian_filter(alpha, 0.4, truncate=2.0) * 1.2, 1.0)


_PAINTERS = {"scratch": _scratch, "spot": _spot, "crack": _crack, "dent": _dent, "chip": _chip}
_CONTRAST = {"scratch": (70.0, 18.0), "spot": (70.0, 25.0), "crack": (80.0, 25.0), "dent": (60.0, 20.0),
             "chip": (80.0, 30.0)}  # at difficulty 0 and 1  # fmt: skip


def render_frame(
    rng: np.random.Generator, defect_class: int | str, difficulty: float = 0.5, surfaces: tuple[str, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one camera frame of class `defect_class` (a name in ALL_CLASSES or an index into it;
    the first indices are those of CLASSES).

    Returns (frame, mask), both uint8 of FRAME_SHAPE; mask is 255 on the defect and all zero for
    "good". `difficulty` in [0, 1] lowers the defect's contrast and size as it grows.
    """
    if isinstance(defect_class, int):
        if not 0 <= defect_class < len(ALL_CLASSES):
            raise ValueError(f"defect_class must be in 0..{len(ALL_CLASSES) - 1}, got {defect_class}")
        defect_class = ALL_CLASSES[defect_class]
    elif defect_class not in ALL_CLASSES:
        raise ValueError(f"defect_class must be one of {ALL_CLASSES}, got {defect_class!r}")
    x, y, w, h = ROI
    # Every class-independent draw comes first, so for one seed the frames of all classes share the
    # same surface and background and differ only where the defect is.
    frame = np.full(FRAME_SHAPE, _BACKGROUND, np.float32)
    frame[y : y + h, x : x + w] = _surface(rng, h, w, surfaces)
    noise = rng.uniform(1.5, 4.0) * rng.standard_normal(FRAME_SHAPE, dtype=np.float32)
    mask = np.zeros(FRAME_SHAPE, np.uint8)
    if defect_class != "good":
        d = float(np.clip(difficulty, 0.0, 1.0))
        hi, lo = _CONTRAST[defect_class]
        amplitude = (hi + (lo - hi) * d) * rng.uniform(0.8, 1.2)
        alpha = _PAINTERS[defect_class](rng, (h, w), 1.0 - 0.5 * d)
        part = frame[y : y + h, x : x + w]
        if defect_class == "spot":
            # Contamination covers the texture: blend towards a flat tone, more opaque when easy.
            tone = part.mean() + rng.choice((-1.0, 1.0)) * amplitude
            opacity = alpha * (0.9 - 0.3 * d)
            part += opacity * (tone - part)
        else:
            # Scratches mostly catch the light (bright), sometimes shade; cracks and chips are
            # shadows; a dent's alpha carries its own sign (lit and shaded flanks).
            sign = 1.0 if defect_class == "scratch" and rng.random() < 0.7 else -1.0
            part += sign * amplitude * alpha
        mask[y : y + h, x : x + w] = np.where(np.abs(alpha) >= _MASK_LEVEL, 255, 0)
    frame += noise  # after the defect: the sensor sees stains and scratches through its own noise
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8), mask


def render_set(
    seed: int, counts: dict[str, int], difficulty: tuple[float, float] = (0.1, 0.9),
    surfaces: tuple[str, ...] | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(frames (N, H, W), class names, difficulties) rendered in memory, classes interleaved as in
    make_dataset; for test sets that never touch the disk."""
    rng = np.random.default_rng(seed)
    frames, names, difficulties = [], [], []
    for i in range(max(counts.values(), default=0)):
        for name, n in counts.items():
            if i < n:
                d = rng.uniform(*difficulty)
                frames.append(render_frame(rng, name, d, surfaces)[0])
                names.append(name)
                difficulties.append(d if name != "good" else 0.0)
    return np.stack(frames), names, np.array(difficulties)


def make_dataset(
    path: str | Path,
    per_class: int,
    seed: int,
    difficulty: tuple[float, float] = (0.1, 0.9),
    *,
    classes: tuple[str, ...] = CLASSES,
    good: int | None = None,
    surfaces: tuple[str, ...] | None = None,
) -> Path:
    """Write `per_class` frames of every class in `classes` (`good` frames of "good", default
    `per_class`) to `path/<class>/<i:04d>.png`, and each defect's mask to
    `path/ground_truth/<class>/<i:04d>_mask.png` (none for "good", as in MVTec AD). Difficulty is
    drawn uniformly from the `difficulty` range per frame and recorded in dataset.json with the ROI.
    `surfaces`: a product variant's finishes only (default: all of SURFACES). Same arguments, same bytes."""
    root = Path(path)
    rng = np.random.default_rng(seed)
    count = {name: (good if good is not None and name == "good" else per_class) for name in classes}
    difficulties = {}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        if name != "good":
            (root / "ground_truth" / name).mkdir(parents=True, exist_ok=True)
    # Classes interleaved frame by frame, so a longer "good" run does not shift the defects' draws.
    for i in range(max(count.values(), default=0)):
        for name in classes:
            if i >= count[name]:
                continue
            d = rng.uniform(*difficulty)
            frame, mask = render_frame(rng, name, d, surfaces)
            Image.fromarray(frame).save(root / name / f"{i:04d}.png")
            if name != "good":
                difficulties[f"{name}/{i:04d}.png"] = round(d, 4)
            if name != "good":
                Image.fromarray(mask).save(root / "ground_truth" / name / f"{i:04d}_mask.png")
    # The part fills ROI; the rest of the frame is belt (and, on the line, data).
    write_info(root, ROI, classes=list(classes), difficulty=difficulties)
    return root
