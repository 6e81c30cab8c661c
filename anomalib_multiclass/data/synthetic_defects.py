"""The photos and defect families of the synthetic datasets (:mod:`anomalib_multiclass.data.synthetic`).

The photos are the ones scikit-image ships: texture categories are random crops of one texture photo
(``brick``, ``grass``, ``gravel``), object categories are the whole photo with small pose and lighting
changes (``coffee``, ``chelsea``, ``astronaut``, ``rocket``, ``coins``, ``camera``). Test defects come
from several families, each with its pixel mask, at sizes from small to large:

- ``texture``: a foreign texture pasted in a Perlin-noise-shaped region;
- ``scratch``: thin bright or dark random strokes;
- ``stain``: a smooth dark/coloured blob blended into the surface;
- ``blur``: a region blurred away (missing detail);
- ``cutpaste``: a patch of the same image pasted elsewhere.

A second set, for checking that a choice made on the first carries over (issue 26: a test proxy used for no
choice), has other photos (``tissue``: scikit-image's immunohistochemistry slide, ``moon``: its lunar surface, as
textures; ``astronaut``, ``rocket``, ``coins``, ``camera`` as objects, see :data:`HELDOUT_CATEGORIES`) and other
defect shapes (:data:`HELDOUT_DEFECT_TYPES`):

- ``crack``: a thin dark branching line;
- ``hole``: a sharp-edged dark region of irregular outline (missing material);
- ``warp``: a local swirl of the surface (deformation, no colour change);
- ``speckle``: a cluster of small dots (contamination);
- ``hue``: a region whose colours are shifted (discolouration, texture intact).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

TEXTURE_CATEGORIES = ("brick", "grass", "gravel")
OBJECT_CATEGORIES = ("coffee", "chelsea", "astronaut", "rocket", "coins", "camera")
ALL_CATEGORIES = TEXTURE_CATEGORIES + OBJECT_CATEGORIES
DEFECT_TYPES = ("texture", "scratch", "stain", "blur", "cutpaste")

# The second set: photos the benchmark proxy (brick, grass, gravel, coffee, chelsea) does not use, other defects.
EXTRA_TEXTURE_CATEGORIES = ("tissue", "moon")
PHOTO_NAMES = {"tissue": "immunohistochemistry"}  # category name -> scikit-image function, where they differ
HELDOUT_CATEGORIES = ("tissue", "moon", "astronaut", "rocket", "coins", "camera")
HELDOUT_DEFECT_TYPES = ("crack", "hole", "warp", "speckle", "hue")
PHOTO_CATEGORIES = ALL_CATEGORIES + EXTRA_TEXTURE_CATEGORIES  # every category a dataset can have


def _photo(name: str) -> np.ndarray:
    """Return the scikit-image photo ``name`` as an RGB uint8 array."""
    import skimage.data

    function = PHOTO_NAMES.get(name, name)
    if name not in PHOTO_CATEGORIES or not hasattr(skimage.data, function):
        msg = f"Unknown photo category {name!r}. Available: {', '.join(PHOTO_CATEGORIES)}."
        raise ValueError(msg)
    image = getattr(skimage.data, function)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def _normal_image(category: str, photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A normal sample: a random crop for textures, a slightly moved and relit whole photo for objects."""
    h, w = photo.shape[:2]
    if category in TEXTURE_CATEGORIES or category in EXTRA_TEXTURE_CATEGORIES:
        crop = int(min(h, w) * rng.uniform(0.45, 0.6))
        top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        image = photo[top : top + crop, left : left + crop]
        image = np.rot90(image, k=int(rng.integers(0, 4))).copy()
    else:
        side = min(h, w)
        crop = int(side * rng.uniform(0.9, 0.97))
        cy, cx = (h - crop) // 2, (w - crop) // 2
        top = int(np.clip(cy + rng.integers(-side // 40, side // 40 + 1), 0, h - crop))
        left = int(np.clip(cx + rng.integers(-side // 40, side // 40 + 1), 0, w - crop))
        image = photo[top : top + crop, left : left + crop]
        angle = rng.uniform(-3.0, 3.0)
        image = ndimage.rotate(image, angle, axes=(0, 1), reshape=False, mode="reflect", order=1)
    image = _resize(np.ascontiguousarray(image), size).astype(np.float32)
    gain, bias = rng.uniform(0.92, 1.08), rng.uniform(-8.0, 8.0)
    return np.clip(image * gain + bias, 0, 255).astype(np.uint8)


def _perlin_mask(size: int, rng: np.random.Generator, coverage: float) -> np.ndarray:
    """A blob-shaped binary mask from smoothed noise (a cheap Perlin substitute), covering ~``coverage``."""
    scale = max(2, int(rng.integers(3, 7)))
    noise = rng.standard_normal((scale, scale))
    field = np.asarray(Image.fromarray(noise.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
    field = ndimage.gaussian_filter(field, sigma=size / 32)
    threshold = np.quantile(field, 1.0 - coverage)
    mask = field > threshold
    labels, count = ndimage.label(mask)
    if count > 1:  # keep the largest component so a defect is one region
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return mask


def _ellipse_mask(size: int, rng: np.random.Generator, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    ry, rx = radius * size * rng.uniform(0.7, 1.3, size=2)
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _defect_texture(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = _perlin_mask(size, rng, coverage=0.01 + 0.07 * severity)
    source = _photo(str(rng.choice([c for c in ALL_CATEGORIES if c not in ("coins", "camera")])))
    foreign = _resize(source, size).astype(np.float32)
    foreign = np.roll(foreign, int(rng.integers(0, size)), axis=int(rng.integers(0, 2)))
    out = image.astype(np.float32)
    out[mask] = 0.15 * out[mask] + 0.85 * foreign[mask]
    return out.clip(0, 255).astype(np.uint8), mask


def _defect_scratch(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, 3))):
        start = rng.uniform(0.2, 0.8, size=2) * size
        angle = rng.uniform(0, np.pi)
        length = (0.15 + 0.35 * severity) * size
        t = np.linspace(0, 1, int(length * 2) + 2)
        bend = rng.uniform(-0.15, 0.15) * length
        ys = start[0] + t * length * np.sin(angle) + bend * np.sin(np.pi * t)
        xs = start[1] + t * length * np.cos(angle)
        ys, xs = np.clip(ys.astype(int), 0, size - 1), np.clip(xs.astype(int), 0, size - 1)
        mask[ys, xs] = True
    mask = ndimage.binary_dilation(mask, iterations=max(1, size // 64))
    out = image.astype(np.float32)
    value = 250.0 if rng.random() < 0.5 else 10.0
    out[mask] = value
    return out.astype(np.uint8), mask


def _defect_stain(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = _ellipse_mask(size, rng, radius=0.05 + 0.1 * severity)
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), sigma=size / 100) * 0.8
    color = rng.uniform(0, 120, size=3).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha[..., None]) + color * alpha[..., None]
    return out.clip(0, 255).astype(np.uint8), alpha > 0.2


def _defect_blur(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = _ellipse_mask(size, rng, radius=0.07 + 0.1 * severity)
    blurred = ndimage.gaussian_filter(image.astype(np.float32), sigma=(size / 20, size / 20, 0))
    blurred = blurred * rng.uniform(0.6, 0.85)  # missing material looks darker as well as smooth
    out = image.astype(np.float32)
    out[mask] = blurred[mask]
    return out.clip(0, 255).astype(np.uint8), mask


def _defect_cutpaste(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    patch = max(4, int(size * (0.1 + 0.15 * severity)))
    sy, sx = rng.integers(0, size - patch + 1, size=2)
    ty, tx = rng.integers(0, size - patch + 1, size=2)
    piece = np.rot90(image[sy : sy + patch, sx : sx + patch], k=int(rng.integers(1, 4)))
    piece = np.clip(piece.astype(np.float32) * rng.uniform(1.15, 1.35), 0, 255).astype(np.uint8)
    out = image.copy()
    out[ty : ty + patch, tx : tx + patch] = piece
    mask = np.zeros((size, size), dtype=bool)
    mask[ty : ty + patch, tx : tx + patch] = True
    return out, mask


def _defect_crack(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = np.zeros((size, size), dtype=bool)
    tips = [(rng.uniform(0.25, 0.75, size=2) * size, rng.uniform(0, 2 * np.pi))]
    steps = int((0.2 + 0.4 * severity) * size)
    for _ in range(2 + int(rng.integers(0, 2))):  # the trunk and one or two branches
        (y, x), angle = tips[int(rng.integers(0, len(tips)))]
        for step in range(steps):
            angle += rng.normal(0.0, 0.35)
            y, x = y + np.sin(angle), x + np.cos(angle)
            if not (0 <= y < size and 0 <= x < size):
                break
            mask[int(y), int(x)] = True
            if step == steps // 2:
                tips.append((np.array([y, x]), angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)))
        steps = max(4, steps // 2)
    if size >= 128:
        mask = ndimage.binary_dilation(mask, iterations=size // 128)
    out = image.astype(np.float32)
    out[mask] *= rng.uniform(0.15, 0.35)
    return out.astype(np.uint8), mask


def _defect_hole(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.uniform(0.25, 0.75, size=2) * size
    ry, rx = (0.04 + 0.07 * severity) * size * rng.uniform(0.6, 1.4, size=2)
    noise = rng.standard_normal((6, 6)).astype(np.float32)
    ragged = np.asarray(Image.fromarray(noise, mode="F").resize((size, size), Image.BICUBIC))
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0 + 0.6 * ragged  # an ellipse with a ragged rim
    labels, count = ndimage.label(mask)
    if count > 1:  # one region: the one holding the centre, or the largest
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    depth = ndimage.distance_transform_edt(mask)
    shade = 35.0 - 25.0 * depth / max(float(depth.max()), 1.0)  # darker towards the middle, a sharp rim
    out = image.astype(np.float32)
    out[mask] = (shade[mask, None] + rng.normal(0.0, 3.0, size=(int(mask.sum()), 3))).clip(0, 255)
    return out.astype(np.uint8), mask


def _defect_warp(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    radius = (0.08 + 0.1 * severity) * size
    # a swirl of a flat region changes nothing: of a few candidate centres, take the most detailed one
    detail = ndimage.uniform_filter(ndimage.gaussian_gradient_magnitude(image.mean(axis=-1), 1.0), int(radius))
    candidates = rng.uniform(0.25, 0.75, size=(8, 2)) * size
    cy, cx = max(candidates, key=lambda c: detail[int(c[0]), int(c[1])])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    distance = np.hypot(dy, dx)
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(1.5, 3.0) * np.clip(1 - distance / radius, 0, 1) ** 2
    source_y = cy + dy * np.cos(turn) - dx * np.sin(turn)
    source_x = cx + dy * np.sin(turn) + dx * np.cos(turn)
    out = np.stack(
        [ndimage.map_coordinates(image[..., c].astype(np.float32), [source_y, source_x], order=1, mode="reflect")
         for c in range(3)],
        axis=-1,
    )  # fmt: skip
    moved = np.hypot(source_y - yy, source_x - xx) > 0.75  # pixels whose content moved by most of a pixel
    changed = np.abs(out - image.astype(np.float32)).max(axis=-1) > 12
    return out.clip(0, 255).astype(np.uint8), moved & ndimage.binary_dilation(changed, iterations=1)


def _defect_speckle(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = np.zeros((size, size), dtype=bool)
    centre = rng.uniform(0.25, 0.75, size=2) * size
    spread = (0.04 + 0.08 * severity) * size
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(6, 16))):
        y, x = centre + rng.normal(0.0, spread, size=2)
        radius = max(1.0, rng.uniform(0.006, 0.015) * size)
        mask |= (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
    out = image.astype(np.float32)
    out[mask] = rng.uniform(0, 255, size=3)
    return out.astype(np.uint8), mask


def _defect_hue(image: np.ndarray, rng: np.random.Generator, severity: float) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    mask = _perlin_mask(size, rng, coverage=0.02 + 0.08 * severity)
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), sigma=size / 150) * 0.85
    pixels = image.astype(np.float32)
    grey = pixels.mean(axis=-1, keepdims=True)
    tint = rng.uniform(0.4, 1.6, size=3).astype(np.float32)
    tinted = grey + (pixels - grey) * 0.3 + grey * (tint - 1.0) * 0.6  # the colour changes, the texture stays
    out = pixels * (1 - alpha[..., None]) + tinted * alpha[..., None]
    changed = np.abs(out - pixels).max(axis=-1) > 10
    return out.clip(0, 255).astype(np.uint8), (alpha > 0.3) & changed


DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator, float], tuple[np.ndarray, np.ndarray]]] = {
    "texture": _defect_texture,
    "scratch": _defect_scratch,
    "stain": _defect_stain,
    "blur": _defect_blur,
    "cutpaste": _defect_cutpaste,
    "crack": _defect_crack,
    "hole": _defect_hole,
    "warp": _defect_warp,
    "speckle": _defect_speckle,
    "hue": _defect_hue,
}
