# -*- coding: utf-8 -*-
"""Draws one image of the generated dataset and its labels: numpy and OpenCV only, no files."""

import cv2
import numpy as np

__all__ = ["SYNTHETIC_THING_CLASSES", "SYNTHETIC_STUFF_CLASSES", "SYNTHETIC_CATEGORIES"]

SYNTHETIC_THING_CLASSES = ["square", "disk", "triangle"]
SYNTHETIC_STUFF_CLASSES = ["sky", "grass", "road"]
# COCO panoptic categories (dataset ids: things 1-3, stuff 4-6); colors are RGB.
SYNTHETIC_CATEGORIES = [
    {"id": 1, "name": "square", "isthing": 1, "supercategory": "shape", "color": [220, 60, 40]},
    {"id": 2, "name": "disk", "isthing": 1, "supercategory": "shape", "color": [230, 200, 30]},
    {"id": 3, "name": "triangle", "isthing": 1, "supercategory": "shape", "color": [200, 50, 200]},
    {"id": 4, "name": "sky", "isthing": 0, "supercategory": "stuff", "color": [110, 170, 235]},
    {"id": 5, "name": "grass", "isthing": 0, "supercategory": "stuff", "color": [60, 150, 50]},
    {"id": 6, "name": "road", "isthing": 0, "supercategory": "stuff", "color": [120, 120, 120]},
]
_THING_IDS = [1, 2, 3]
_STUFF_IDS = [4, 5, 6]
MIN_VISIBLE_AREA = 20
LABEL_DIVISOR = 1000  # segment id = category_id * LABEL_DIVISOR + instance number


def _low_freq_noise(rng, h, w, cells):
    """Smooth noise in [-1, 1], float32 (h, w): a small random grid upsampled."""
    small = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _stuff_texture(rng, name, h, w):
    """A full-image texture of one stuff class: float32 (h, w, 3), RGB, about [0, 255]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter = rng.uniform(-20, 20, size=3).astype(np.float32)
    if name == "sky":
        base = np.array([110, 170, 235], np.float32) + jitter
        grad = (yy / h - 0.5)[..., None] * np.array([-40, -30, -10], np.float32)
        clouds = np.clip(_low_freq_noise(rng, h, w, 5), 0, 1)[..., None] * 90.0
        return base + grad + clouds + rng.normal(0, 3, size=(h, w, 3)).astype(np.float32)
    if name == "grass":
        base = np.array([60, 150, 50], np.float32) + jitter
        blades = 25.0 * np.sign(np.sin(xx * rng.uniform(1.2, 2.0) + 3 * np.sin(yy / 5.0)))
        tex = base + blades[..., None] * np.array([0.3, 1.0, 0.3], np.float32)
        tex = tex + 20.0 * _low_freq_noise(rng, h, w, 8)[..., None]
        return tex + rng.normal(0, 14, size=(h, w, 3)).astype(np.float32)
    base = np.array([120, 120, 120], np.float32) + jitter.mean()  # road
    stripes = 18.0 * np.sign(np.sin(2 * np.pi * yy / rng.uniform(5, 9)))
    return base + stripes[..., None] + rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)


def _wavy_boundary(rng, length, center, amp):
    """A random boundary: float32 (length,) positions around ``center``."""
    t = np.arange(length, dtype=np.float32)
    wave = amp * np.sin(2 * np.pi * t / length * rng.uniform(0.5, 2.5) + rng.uniform(0, 2 * np.pi))
    walk = np.cumsum(rng.normal(0, 1.5, size=length)).astype(np.float32)
    walk = cv2.GaussianBlur(walk[None, :], (0, 0), sigmaX=3).ravel()
    return center + wave + walk - walk.mean()


def _stuff_layout(rng, h, w):
    """int32 (h, w): index into SYNTHETIC_STUFF_CLASSES of each pixel (2 or 3 bands)."""
    order = rng.permutation(len(SYNTHETIC_STUFF_CLASSES))
    num_bands = 3 if rng.random() < 0.75 else 2
    transpose = rng.random() < 0.3
    hh, ww = (w, h) if transpose else (h, w)
    if num_bands == 3:
        c1, c2 = np.sort(rng.uniform(0.2, 0.8, size=2))
        centers = [c1 * hh, max(c2, c1 + 0.2) * hh]
    else:
        centers = [rng.uniform(0.3, 0.7) * hh]
    yy = np.arange(hh, dtype=np.float32)[:, None]
    band = np.zeros((hh, ww), np.int32)
    for c in centers:
        b = _wavy_boundary(rng, ww, c, amp=rng.uniform(2, 0.08 * hh))
        band += (yy >= b[None, :]).astype(np.int32)
    labels = order[:num_bands][band].astype(np.int32)
    return labels.T.copy() if transpose else labels


def _void_mask(rng, h, w):
    """bool (h, w): a random ellipse or a strip along one border."""
    m = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(6, max(7, w // 6))), int(rng.integers(6, max(7, h // 6))))
        cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        t = int(rng.integers(4, 13))
        side = int(rng.integers(0, 4))
        strip = [np.s_[:t], np.s_[-t:], np.s_[:, :t], np.s_[:, -t:]][side]
        m[strip] = 1
    return m.astype(bool)


def _shape_mask(rng, cls, h, w, size):
    """bool (h, w): one whole shape of thing class ``cls``, ``size`` px, at a random place."""
    m = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    theta = rng.uniform(0, 2 * np.pi)
    shift = 4  # sub-pixel precision of cv2 drawing
    scale = float(1 << shift)
    name = SYNTHETIC_THING_CLASSES[cls]
    if name == "disk":
        center = (int(round(cx * scale)), int(round(cy * scale)))
        cv2.circle(m, center, int(round(size / 2 * scale)), 1, -1, cv2.LINE_8, shift)
        return m.astype(bool)
    if name == "square":
        angles, radius = theta + np.pi / 4 + np.arange(4) * np.pi / 2, size / np.sqrt(2)
    else:  # triangle
        angles, radius = theta + np.arange(3) * 2 * np.pi / 3, size / np.sqrt(3)
    pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    cv2.fillPoly(m, [np.round(pts * scale).astype(np.int32)], 1, cv2.LINE_8, shift)
    return m.astype(bool)


def _thing_texture(rng, cls, box):
    """Texture of one instance over ``box`` (x0, y0, x1, y1), ends exclusive: float32 RGB."""
    x0, y0, x1, y1 = box
    base = np.array(SYNTHETIC_CATEGORIES[cls]["color"], np.float32)
    base = base + rng.uniform(-45, 45, size=3).astype(np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ang, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
    coord = xx * np.cos(ang) + yy * np.sin(ang)
    stripes = rng.uniform(20, 50) * np.sin(2 * np.pi * coord / period)
    noise = rng.normal(0, 8, size=(y1 - y0, x1 - x0, 3)).astype(np.float32)
    return base + stripes[..., None] + noise


def draw_synthetic_image(rng, h, w, force_void=False):
    """
    Draws one image and its labels with ``rng`` (a ``np.random.Generator``).

    Returns:
        image: uint8 (h, w, 3), RGB.
        pan: int32 (h, w) segment ids, 0 = void.
        sem: uint8 (h, w) in Detectron2's separated convention: 0 = thing, 1..3 = stuff, 255 = void.
        segments: list of dicts with "id", "category_id" (dataset id) and "mask" (bool (h, w)),
            things first in paint order, then stuff.
    """
    stuff = _stuff_layout(rng, h, w)
    image = np.zeros((h, w, 3), np.float32)
    for i, name in enumerate(SYNTHETIC_STUFF_CLASSES):
        sel = stuff == i
        if sel.any():
            image[sel] = _stuff_texture(rng, name, h, w)[sel]
    void = _void_mask(rng, h, w) if (force_void or rng.random() < 0.4) else np.zeros((h, w), bool)
    if void.any():
        clutter = rng.uniform(0, 255, size=3).astype(np.float32)
        clutter = clutter + rng.normal(0, 40, size=(h, w, 3)).astype(np.float32)
        image[void] = clutter[void]
    background = image.copy()

    num = int(rng.integers(2, 9))
    log_sizes = rng.uniform(np.log(10.0), np.log(min(h, w) / 2.0), size=num)
    classes = rng.integers(0, len(SYNTHETIC_THING_CLASSES), size=num)
    order = np.argsort(-(log_sizes + rng.normal(0, 0.6, size=num)), kind="stable")
    inst = np.zeros((h, w), np.int32)  # 1-based paint index of the visible instance, 0 = none
    for k, j in enumerate(order, start=1):
        m = _shape_mask(rng, int(classes[j]), h, w, float(np.exp(log_sizes[j])))
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if len(rows) == 0:  # entirely outside the image
            continue
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        sub = m[box[1] : box[3], box[0] : box[2]]
        tex = _thing_texture(rng, int(classes[j]), box)
        image[box[1] : box[3], box[0] : box[2]][sub] = tex[sub]
        inst[m] = k
    areas = np.bincount(inst.ravel(), minlength=num + 1)

    pan = np.zeros((h, w), np.int32)
    sem = np.full((h, w), 255, np.uint8)
    segments, per_cat = [], {}
    for k, j in enumerate(order, start=1):
        m = inst == k
        cat_id = _THING_IDS[int(classes[j])]
        if areas[k] < MIN_VISIBLE_AREA:  # dropped: its pixels go back to the background
            image[m] = background[m]
            inst[m] = 0
            continue
        per_cat[cat_id] = per_cat.get(cat_id, 0) + 1
        seg_id = cat_id * LABEL_DIVISOR + per_cat[cat_id]
        pan[m], sem[m] = seg_id, 0
        segments.append({"id": seg_id, "category_id": cat_id, "mask": m})
    free = (inst == 0) & ~void
    for i, cat_id in enumerate(_STUFF_IDS):
        m = free & (stuff == i)
        if m.any():
            pan[m], sem[m] = cat_id * LABEL_DIVISOR, i + 1
            segments.append({"id": cat_id * LABEL_DIVISOR, "category_id": cat_id, "mask": m})
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, pan, sem, segments
