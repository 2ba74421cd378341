# -*- coding: utf-8 -*-
"""
A small generated dataset ("panet_synth") in COCO instance + COCO panoptic format.

Every split is generated deterministically from a seed (same seed -> byte-identical files)
and written once to a cache directory (see :func:`get_synthetic_dataset_root`). Each image
(default 192x192, RGB PNG) contains:

* 2 or 3 "stuff" regions of the classes :data:`SYNTHETIC_STUFF_CLASSES` (sky / grass / road:
  textured bands separated by random wavy boundaries);
* in some images a void (unlabelled) area: a blob or a border strip, with id 0 in the panoptic
  PNG (not in ``segments_info``) and 255 in the semantic PNG;
* 2 to 8 textured instances of :data:`SYNTHETIC_THING_CLASSES` (square / disk / triangle) of
  sizes from ~10 px to half the image, painted in order (later ones occlude earlier ones).
  Every instance mask is its *visible* part; instances with a visible area < 20 px are dropped
  (their pixels are given back to the background).

Category ids in the json files (dataset ids): things 1, 2, 3; stuff 4, 5, 6.

Files of one split, under ``<root>/v<VERSION>_<split>_seed<seed>_n<num_images>_<H>x<W>/``::

    images/000001.png       RGB image, uint8, HxWx3
    panoptic/000001.png     COCO panoptic PNG: segment id = R + 256 * G + 256 * 256 * B, 0 = void
    sem_seg/000001.png      uint8 HxW, Detectron2's "panoptic_separated" convention:
                            0 = any thing pixel, 1..S = stuff classes, 255 = void
    instances.json          COCO instances json (segmentation: RLE, counts as str)
    panoptic.json           COCO panoptic json (segments_info with id/category_id/iscrowd/bbox/area)

Because the instance masks are stored as RLE, Detectron2 configs must use
``cfg.INPUT.MASK_FORMAT = "bitmask"``.

Registered datasets (lazily: nothing is generated before the first ``DatasetCatalog.get``),
for each split ``S`` in ("train", "val"):

* ``panet_synth_S``: instance view (``load_coco_json``), evaluator_type "coco".
* ``panet_synth_S_panoptic``: panoptic view in Detectron2's ``*_panoptic_separated``
  convention (instance "annotations" + ``sem_seg_file_name`` + ``pan_seg_file_name`` +
  ``segments_info``), evaluator_type "coco_panoptic_seg"; works with COCOPanopticEvaluator,
  COCOEvaluator and SemSegEvaluator.
* ``panet_synth_S_sem_seg``: semantic view, evaluator_type "sem_seg".
"""
import copy
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util

__all__ = [
    "SYNTHETIC_THING_CLASSES",
    "SYNTHETIC_STUFF_CLASSES",
    "SYNTHETIC_CATEGORIES",
    "DEFAULT_SPLITS",
    "get_synthetic_dataset_root",
    "get_synthetic_split_paths",
    "generate_synthetic_dataset",
    "get_synthetic_metadata",
    "load_synthetic_instances",
    "load_synthetic_panoptic_separated",
    "load_synthetic_sem_seg",
    "register_synthetic_dataset",
]

logger = logging.getLogger(__name__)

# Bump when the generated content changes: it is part of the cache folder name.
_VERSION = 1

SYNTHETIC_THING_CLASSES = ["square", "disk", "triangle"]
SYNTHETIC_STUFF_CLASSES = ["sky", "grass", "road"]

_THING_IDS = [1, 2, 3]
_STUFF_IDS = [4, 5, 6]

# COCO-style categories (dataset ids); colors are RGB, for visualization only.
SYNTHETIC_CATEGORIES = [
    {"id": 1, "name": "square", "isthing": 1, "supercategory": "shape", "color": [220, 60, 40]},
    {"id": 2, "name": "disk", "isthing": 1, "supercategory": "shape", "color": [230, 200, 30]},
    {"id": 3, "name": "triangle", "isthing": 1, "supercategory": "shape", "color": [200, 50, 200]},
    {"id": 4, "name": "sky", "isthing": 0, "supercategory": "stuff", "color": [110, 170, 235]},
    {"id": 5, "name": "grass", "isthing": 0, "supercategory": "stuff", "color": [60, 150, 50]},
    {"id": 6, "name": "road", "isthing": 0, "supercategory": "stuff", "color": [120, 120, 120]},
]

# split -> number of images and seed (different seeds per split)
DEFAULT_SPLITS = {
    "train": {"num_images": 64, "seed": 2018},
    "val": {"num_images": 16, "seed": 7},
}
DEFAULT_IMAGE_SIZE = 192

MIN_VISIBLE_AREA = 20
_MAX_SEGMENTS_PER_CATEGORY = 1000  # segment id = category_id * 1000 + instance index
_DONE_MARKER = "DONE"


def get_synthetic_dataset_root() -> str:
    """
    Returns:
        str: the cache directory of the generated datasets: ``$PANET_D2_DATASETS`` if set,
        else ``~/.cache/panet_d2`` (user and variables expanded, absolute).
    """
    root = os.environ.get("PANET_D2_DATASETS", "~/.cache/panet_d2")
    return os.path.abspath(os.path.expanduser(os.path.expandvars(root)))


def _normalize_size(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
        h, w = (int(x) for x in image_size)
    if h < 32 or w < 32:
        raise ValueError(f"image_size must be at least 32x32, got {h}x{w}")
    return h, w


def get_synthetic_split_paths(
    root: Optional[str],
    split: str,
    num_images: int,
    seed: int,
    image_size: Union[int, Sequence[int]] = DEFAULT_IMAGE_SIZE,
) -> Dict[str, str]:
    """
    Computes (without generating anything) the paths of one generated split.

    Returns:
        dict with keys "dir", "image_root", "panoptic_root", "sem_seg_root",
        "instances_json", "panoptic_json" (absolute paths).
    """
    h, w = _normalize_size(image_size)
    root = get_synthetic_dataset_root() if root is None else os.path.abspath(
        os.path.expanduser(str(root))
    )
    d = os.path.join(root, f"v{_VERSION}_{split}_seed{int(seed)}_n{int(num_images)}_{h}x{w}")
    return {
        "dir": d,
        "image_root": os.path.join(d, "images"),
        "panoptic_root": os.path.join(d, "panoptic"),
        "sem_seg_root": os.path.join(d, "sem_seg"),
        "instances_json": os.path.join(d, "instances.json"),
        "panoptic_json": os.path.join(d, "panoptic.json"),
    }


# ------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------
def _low_freq_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1] of shape (h, w), float32: a small random grid upsampled."""
    small = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _stuff_texture(rng: np.random.Generator, name: str, h: int, w: int) -> np.ndarray:
    """Returns a full-image texture of one stuff class, float32 (h, w, 3), RGB, ~[0, 255]."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    jitter = rng.uniform(-20, 20, size=3).astype(np.float32)
    if name == "sky":
        base = np.array([110, 170, 235], np.float32) + jitter
        grad = (yy / h - 0.5)[..., None] * np.array([-40, -30, -10], np.float32)
        clouds = np.clip(_low_freq_noise(rng, h, w, 5), 0, 1)[..., None] * 90.0
        tex = base + grad + clouds + rng.normal(0, 3, size=(h, w, 3)).astype(np.float32)
    elif name == "grass":
        base = np.array([60, 150, 50], np.float32) + jitter
        blades = 25.0 * np.sign(np.sin(xx * rng.uniform(1.2, 2.0) + 3 * np.sin(yy / 5.0)))
        tex = (
            base
            + blades[..., None] * np.array([0.3, 1.0, 0.3], np.float32)
            + 20.0 * _low_freq_noise(rng, h, w, 8)[..., None]
            + rng.normal(0, 14, size=(h, w, 3)).astype(np.float32)
        )
    elif name == "road":
        base = np.array([120, 120, 120], np.float32) + jitter.mean()
        period = rng.uniform(5, 9)
        stripes = 18.0 * np.sign(np.sin(2 * np.pi * yy / period))
        tex = base + stripes[..., None] + rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)
    else:
        raise ValueError(f"Unknown stuff class {name!r}")
    return tex


def _wavy_boundary(rng: np.random.Generator, length: int, center: float, amp: float):
    """A random boundary (float32 array of `length` positions around `center`)."""
    t = np.arange(length, dtype=np.float32)
    wave = amp * np.sin(2 * np.pi * t / length * rng.uniform(0.5, 2.5) + rng.uniform(0, 2 * np.pi))
    walk = np.cumsum(rng.normal(0, 1.5, size=length)).astype(np.float32)
    walk = cv2.GaussianBlur(walk[None, :], (0, 0), sigmaX=3).ravel()
    return center + wave + walk - walk.mean()


def _stuff_layout(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """
    Returns:
        int32 array (h, w) with values in {0, 1, 2}: index into SYNTHETIC_STUFF_CLASSES.
    """
    order = rng.permutation(len(SYNTHETIC_STUFF_CLASSES))
    num_bands = 3 if rng.random() < 0.75 else 2
    transpose = rng.random() < 0.3
    hh, ww = (w, h) if transpose else (h, w)
    if num_bands == 3:
        c1, c2 = np.sort(rng.uniform(0.2, 0.8, size=2))
        c2 = max(c2, c1 + 0.2)
        centers = [c1 * hh, c2 * hh]
    else:
        centers = [rng.uniform(0.3, 0.7) * hh]
    yy = np.arange(hh, dtype=np.float32)[:, None]
    band = np.zeros((hh, ww), np.int32)
    for c in centers:
        b = _wavy_boundary(rng, ww, c, amp=rng.uniform(2, 0.08 * hh))
        band += (yy >= b[None, :]).astype(np.int32)
    labels = order[:num_bands][band].astype(np.int32)
    return labels.T.copy() if transpose else labels


def _void_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A bool (h, w) mask of a random blob or border strip."""
    m = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(6, max(7, w // 6))), int(rng.integers(6, max(7, h // 6))))
        cv2.ellipse(m, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        t = int(rng.integers(4, 13))
        side = int(rng.integers(0, 4))
        if side == 0:
            m[:t] = 1
        elif side == 1:
            m[-t:] = 1
        elif side == 2:
            m[:, :t] = 1
        else:
            m[:, -t:] = 1
    return m.astype(bool)


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int, size: float) -> np.ndarray:
    """
    Draws one full (unoccluded) shape of class `cls` (index into SYNTHETIC_THING_CLASSES),
    of extent `size` px, at a random position (it may be cut by the image border).

    Returns:
        bool array (h, w).
    """
    m = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    theta = rng.uniform(0, 2 * np.pi)
    shift = 4  # sub-pixel precision for cv2 drawing
    scale = float(1 << shift)
    name = SYNTHETIC_THING_CLASSES[cls]
    if name == "disk":
        cv2.circle(
            m, (int(round(cx * scale)), int(round(cy * scale))),
            int(round(size / 2 * scale)), 1, -1, lineType=cv2.LINE_8, shift=shift,
        )
    else:
        if name == "square":
            angles = theta + np.pi / 4 + np.arange(4) * np.pi / 2
            radius = size / np.sqrt(2)
        elif name == "triangle":
            angles = theta + np.arange(3) * 2 * np.pi / 3
            radius = size / np.sqrt(3)
        else:
            raise ValueError(f"Unknown thing class {name!r}")
        pts = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
        pts = np.round(pts * scale).astype(np.int32)
        cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=shift)
    return m.astype(bool)


def _thing_texture(
    rng: np.random.Generator, cls: int, box: Tuple[int, int, int, int]
) -> np.ndarray:
    """
    Texture of one instance (class-biased colour + random stripes + noise) over the
    box (x0, y0, x1, y1) (exclusive ends): float32 (y1 - y0, x1 - x0, 3), RGB.
    """
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    base = np.array(SYNTHETIC_CATEGORIES[cls]["color"], np.float32)
    base = base + rng.uniform(-45, 45, size=3).astype(np.float32)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    period = rng.uniform(4, 12)
    coord = xx * np.cos(ang) + yy * np.sin(ang)
    stripes = rng.uniform(20, 50) * np.sin(2 * np.pi * coord / period)
    return base + stripes[..., None] + rng.normal(0, 8, size=(h, w, 3)).astype(np.float32)


def _mask_to_rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _generate_one(rng: np.random.Generator, h: int, w: int, force_void: bool):
    """
    Generates one image and its labels.

    Returns:
        image (uint8 (h, w, 3) RGB), pan (int32 (h, w) segment ids, 0 = void),
        sem (uint8 (h, w), separated convention), segments (list of dicts with
        "id", "category_id" (dataset id), "mask" (bool (h, w))): things first, in paint order.
    """
    # stuff + void background
    stuff = _stuff_layout(rng, h, w)
    image = np.zeros((h, w, 3), np.float32)
    for i, name in enumerate(SYNTHETIC_STUFF_CLASSES):
        sel = stuff == i
        if sel.any():
            image[sel] = _stuff_texture(rng, name, h, w)[sel]
    void = _void_mask(rng, h, w) if (force_void or rng.random() < 0.4) else np.zeros((h, w), bool)
    if void.any():
        clutter = rng.uniform(0, 255, size=3).astype(np.float32) + rng.normal(
            0, 40, size=(h, w, 3)
        ).astype(np.float32)
        image[void] = clutter[void]
    background = image.copy()

    # things, painted in order; later ones occlude earlier ones
    num = int(rng.integers(2, 9))
    log_sizes = rng.uniform(np.log(10.0), np.log(min(h, w) / 2.0), size=num)
    classes = rng.integers(0, len(SYNTHETIC_THING_CLASSES), size=num)
    order = np.argsort(-(log_sizes + rng.normal(0, 0.6, size=num)), kind="stable")
    inst = np.zeros((h, w), np.int32)  # 1-based index of the visible instance, 0 = background
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
    segments = []
    per_cat = {}
    for k, j in enumerate(order, start=1):
        m = inst == k
        cat_id = _THING_IDS[int(classes[j])]
        if areas[k] < MIN_VISIBLE_AREA:
            # dropped: its visible pixels go back to the background (stuff or void)
            image[m] = background[m]
            inst[m] = 0
            continue
        per_cat[cat_id] = per_cat.get(cat_id, 0) + 1
        seg_id = cat_id * _MAX_SEGMENTS_PER_CATEGORY + per_cat[cat_id]
        pan[m] = seg_id
        sem[m] = 0
        segments.append({"id": seg_id, "category_id": cat_id, "mask": m})
    free = (inst == 0) & ~void
    for i, cat_id in enumerate(_STUFF_IDS):
        m = free & (stuff == i)
        if not m.any():
            continue
        seg_id = cat_id * _MAX_SEGMENTS_PER_CATEGORY
        pan[m] = seg_id
        sem[m] = i + 1
        segments.append({"id": seg_id, "category_id": cat_id, "mask": m})
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, pan, sem, segments


def _write_png(path: str, array: np.ndarray, rgb: bool = False) -> None:
    if rgb:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, array):
        raise OSError(f"Failed to write {path}")


def _write_split(d: str, split: str, num_images: int, seed: int, h: int, w: int) -> None:
    from panopticapi.utils import id2rgb

    for sub in ("images", "panoptic", "sem_seg"):
        os.makedirs(os.path.join(d, sub))
    categories = [{k: c[k] for k in ("id", "name", "supercategory")} for c in SYNTHETIC_CATEGORIES]
    images, inst_anns, pan_anns = [], [], []
    ann_id = 0
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), index]))
        image, pan, sem, segments = _generate_one(rng, h, w, force_void=index == 0)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        _write_png(os.path.join(d, "images", file_name), image, rgb=True)
        _write_png(os.path.join(d, "panoptic", file_name), id2rgb(pan).astype(np.uint8), rgb=True)
        _write_png(os.path.join(d, "sem_seg", file_name), sem)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        segments_info = []
        for seg in segments:
            rle = _mask_to_rle(seg["mask"])
            bbox = [float(x) for x in mask_util.toBbox(rle)]
            area = int(seg["mask"].sum())
            segments_info.append(
                {
                    "id": int(seg["id"]),
                    "category_id": int(seg["category_id"]),
                    "iscrowd": 0,
                    "bbox": [int(x) for x in bbox],
                    "area": area,
                }
            )
            if seg["category_id"] in _THING_IDS:
                ann_id += 1
                inst_anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": int(seg["category_id"]),
                        "bbox": bbox,
                        "area": area,
                        "iscrowd": 0,
                        "segmentation": rle,
                    }
                )
        pan_anns.append(
            {"image_id": image_id, "file_name": file_name, "segments_info": segments_info}
        )
    info = {
        "description": f"panet_d2 synthetic dataset, split {split}",
        "version": _VERSION,
        "seed": int(seed),
    }
    instances = {
        "info": info,
        "images": images,
        "annotations": inst_anns,
        "categories": [c for c in categories if c["id"] in _THING_IDS],
    }
    panoptic = {
        "info": info,
        "images": images,
        "annotations": pan_anns,
        "categories": [
            dict(c, isthing=int(c["id"] in _THING_IDS), color=list(src["color"]))
            for c, src in zip(categories, SYNTHETIC_CATEGORIES)
        ],
    }
    with open(os.path.join(d, "instances.json"), "w") as f:
        json.dump(instances, f)
    with open(os.path.join(d, "panoptic.json"), "w") as f:
        json.dump(panoptic, f)
    with open(os.path.join(d, _DONE_MARKER), "w") as f:
        f.write(f"{num_images}\n")


def _check_split(paths: Dict[str, str], num_images: int) -> None:
    """Raises FileNotFoundError / ValueError if a generated split is incomplete or corrupt."""
    d = paths["dir"]
    hint = f"Delete '{d}' to regenerate it."
    names = []  # file names listed in the panoptic json
    for key in ("instances_json", "panoptic_json"):
        p = paths[key]
        if not os.path.isfile(p):
            raise FileNotFoundError(f"Generated file '{p}' is missing. {hint}")
        try:
            with open(p) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"Generated file '{p}' is corrupt ({e}). {hint}") from e
        if len(data.get("images", [])) != num_images:
            raise ValueError(
                f"Generated file '{p}' lists {len(data.get('images', []))} images, "
                f"expected {num_images}. {hint}"
            )
        if key == "panoptic_json":
            names = [a["file_name"] for a in data["annotations"]]
    for key in ("image_root", "panoptic_root", "sem_seg_root"):
        for name in names:
            p = os.path.join(paths[key], name)
            if not os.path.isfile(p) or os.path.getsize(p) == 0:
                raise FileNotFoundError(f"Generated file '{p}' is missing or empty. {hint}")


def generate_synthetic_dataset(
    root: Optional[str],
    split: str,
    num_images: int,
    seed: int,
    image_size: Union[int, Sequence[int]] = DEFAULT_IMAGE_SIZE,
) -> Dict[str, str]:
    """
    Generates one split (if not already in the cache) and returns its paths.

    Generation is deterministic (same arguments -> byte-identical files) and atomic: the
    split is written to a temporary folder next to its final location, then renamed; if
    another process finished first, its result is reused.

    Args:
        root (str or None): cache directory; None: :func:`get_synthetic_dataset_root`.
        split (str): split name, e.g. "train"; only used in the folder name and json info.
        num_images (int): number of images (>= 1).
        seed (int): random seed of the split.
        image_size (int or (H, W)): image size in pixels.

    Returns:
        dict: see :func:`get_synthetic_split_paths`.
    """
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    h, w = _normalize_size(image_size)
    paths = get_synthetic_split_paths(root, split, num_images, seed, (h, w))
    final = paths["dir"]
    if os.path.isdir(final):
        _check_split(paths, int(num_images))
        return paths

    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=parent)
    except OSError as e:
        raise ValueError(
            f"Cannot write the generated dataset to '{parent}' ({e}). Set the environment "
            "variable PANET_D2_DATASETS (or pass root=) to a writable directory."
        ) from e
    start = time.perf_counter()
    try:
        _write_split(tmp, split, int(num_images), int(seed), h, w)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
            logger.info(f"Synthetic split '{final}' was generated by another process; reusing it.")
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        f"Generated synthetic split '{split}' ({num_images} images of {h}x{w}, seed {seed}) "
        f"in {time.perf_counter() - start:.2f}s at {final}"
    )
    _check_split(paths, int(num_images))
    return paths


# ------------------------------------------------------------------------------------------
# Detectron2 views
# ------------------------------------------------------------------------------------------
def get_synthetic_metadata() -> dict:
    """
    Returns:
        dict: metadata shared by all views: thing_classes, thing_colors,
        thing_dataset_id_to_contiguous_id ({1: 0, 2: 1, 3: 2}), stuff_classes
        (["things", "sky", "grass", "road"]), stuff_colors, stuff_dataset_id_to_contiguous_id
        ({0: 0, 4: 1, 5: 2, 6: 3}; 0 -> 0 is the "things" class, as in Detectron2's
        ``_get_coco_panoptic_separated_meta``), ignore_label (255), label_divisor (1000).
    """
    things = [c for c in SYNTHETIC_CATEGORIES if c["isthing"]]
    stuff = [c for c in SYNTHETIC_CATEGORIES if not c["isthing"]]
    stuff_map = {0: 0}
    stuff_map.update({c["id"]: i + 1 for i, c in enumerate(stuff)})
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [list(c["color"]) for c in things],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_classes": ["things"] + [c["name"] for c in stuff],
        "stuff_colors": [[82, 18, 128]] + [list(c["color"]) for c in stuff],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
        "ignore_label": 255,
        "label_divisor": _MAX_SEGMENTS_PER_CATEGORY,
    }


def load_synthetic_instances(paths: Dict[str, str], dataset_name: Optional[str] = None):
    """Instance view: Detectron2 dicts from the instance json (``load_coco_json``)."""
    from detectron2.data.datasets import load_coco_json

    return load_coco_json(paths["instances_json"], paths["image_root"], dataset_name)


def load_synthetic_sem_seg(paths: Dict[str, str]):
    """
    Semantic view.

    Returns:
        list[dict]: with "file_name", "sem_seg_file_name", "image_id", "height", "width".
    """
    with open(paths["panoptic_json"]) as f:
        pan = json.load(f)
    ret = []
    for img in sorted(pan["images"], key=lambda x: x["id"]):
        ret.append(
            {
                "file_name": os.path.join(paths["image_root"], img["file_name"]),
                "sem_seg_file_name": os.path.join(paths["sem_seg_root"], img["file_name"]),
                "image_id": img["id"],
                "height": img["height"],
                "width": img["width"],
            }
        )
    return ret


def load_synthetic_panoptic_separated(paths: Dict[str, str], dataset_name: Optional[str] = None):
    """
    Panoptic view in Detectron2's ``*_panoptic_separated`` convention.

    Returns:
        list[dict]: each with "file_name", "image_id", "height", "width", "annotations"
        (instance annotations, contiguous thing ids, RLE segmentation, bbox_mode XYWH_ABS),
        "sem_seg_file_name", "pan_seg_file_name" and "segments_info" (list of dicts with
        "id", "category_id" (contiguous: things 0..T-1, stuff 1..S), "isthing", "iscrowd",
        "bbox", "area").
    """
    meta = get_synthetic_metadata()
    thing_map = meta["thing_dataset_id_to_contiguous_id"]
    stuff_map = meta["stuff_dataset_id_to_contiguous_id"]
    dicts = load_synthetic_instances(paths, dataset_name)
    with open(paths["panoptic_json"]) as f:
        pan = json.load(f)
    by_image = {a["image_id"]: a for a in pan["annotations"]}
    for d in dicts:
        ann = by_image[d["image_id"]]
        segments_info = []
        for s in ann["segments_info"]:
            s = copy.deepcopy(s)
            if s["category_id"] in thing_map:
                s["category_id"] = thing_map[s["category_id"]]
                s["isthing"] = True
            else:
                s["category_id"] = stuff_map[s["category_id"]]
                s["isthing"] = False
            segments_info.append(s)
        d["pan_seg_file_name"] = os.path.join(paths["panoptic_root"], ann["file_name"])
        d["sem_seg_file_name"] = os.path.join(paths["sem_seg_root"], ann["file_name"])
        d["segments_info"] = segments_info
    return dicts


def register_synthetic_dataset(
    name_prefix: str = "panet_synth",
    root: Optional[str] = None,
    splits: Optional[Dict[str, dict]] = None,
    image_size: Union[int, Sequence[int]] = DEFAULT_IMAGE_SIZE,
) -> list:
    """
    Registers the instance, panoptic and semantic views of each split with Detectron2.
    Nothing is generated here; a split is generated on the first ``DatasetCatalog.get``.
    Names that are already registered are skipped (safe to call twice).

    Args:
        name_prefix (str): names are ``{prefix}_{split}``, ``{prefix}_{split}_panoptic``,
            ``{prefix}_{split}_sem_seg``.
        root (str or None): cache directory; None: :func:`get_synthetic_dataset_root` (read now).
        splits (dict or None): split -> {"num_images": int, "seed": int}; None: DEFAULT_SPLITS.
        image_size (int or (H, W)).

    Returns:
        list[str]: the names registered by this call.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    splits = DEFAULT_SPLITS if splits is None else splits
    registered = []
    for split, spec in splits.items():
        num_images, seed = int(spec["num_images"]), int(spec["seed"])
        paths = get_synthetic_split_paths(root, split, num_images, seed, image_size)
        meta = get_synthetic_metadata()

        def _gen(split=split, num_images=num_images, seed=seed):
            return generate_synthetic_dataset(root, split, num_images, seed, image_size)

        inst_name = f"{name_prefix}_{split}"
        pan_name = f"{name_prefix}_{split}_panoptic"
        sem_name = f"{name_prefix}_{split}_sem_seg"
        views = [
            (
                inst_name,
                lambda _g=_gen, _n=inst_name: load_synthetic_instances(_g(), _n),
                dict(
                    evaluator_type="coco",
                    json_file=paths["instances_json"],
                    image_root=paths["image_root"],
                    thing_classes=meta["thing_classes"],
                    thing_colors=meta["thing_colors"],
                    thing_dataset_id_to_contiguous_id=meta["thing_dataset_id_to_contiguous_id"],
                ),
            ),
            (
                pan_name,
                lambda _g=_gen, _n=pan_name: load_synthetic_panoptic_separated(_g(), _n),
                dict(
                    evaluator_type="coco_panoptic_seg",
                    json_file=paths["instances_json"],
                    image_root=paths["image_root"],
                    panoptic_root=paths["panoptic_root"],
                    panoptic_json=paths["panoptic_json"],
                    sem_seg_root=paths["sem_seg_root"],
                    **meta,
                ),
            ),
            (
                sem_name,
                lambda _g=_gen: load_synthetic_sem_seg(_g()),
                dict(
                    evaluator_type="sem_seg",
                    image_root=paths["image_root"],
                    sem_seg_root=paths["sem_seg_root"],
                    stuff_classes=meta["stuff_classes"],
                    stuff_colors=meta["stuff_colors"],
                    stuff_dataset_id_to_contiguous_id=meta["stuff_dataset_id_to_contiguous_id"],
                    ignore_label=meta["ignore_label"],
                ),
            ),
        ]
        for name, func, md in views:
            if name in DatasetCatalog.list():
                logger.debug(f"Dataset '{name}' is already registered; skipping.")
                continue
            DatasetCatalog.register(name, func)
            MetadataCatalog.get(name).set(**md)
            registered.append(name)
    return registered


# Register the default splits at import (cheap: no generation).
try:
    register_synthetic_dataset()
except ImportError:  # pragma: no cover - detectron2 missing: generation still usable
    logger.warning("detectron2 is not installed: the synthetic datasets are not registered.")
