"""The generated dataset "panet_synth": drawing, its files in a cache folder, and registration."""

import json
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import merge_to_panoptic
from detectron2.utils.file_io import PathManager

from ..errors import DatasetError
from .coco_panoptic import coco_panoptic_separated_metadata

logger = logging.getLogger(__name__)

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
MIN_VISIBLE_AREA = 20
LABEL_DIVISOR = 1000  # segment id = category_id * LABEL_DIVISOR + instance number


def _low_freq_noise(rng, h, w, cells):
    """Smooth noise in [-1, 1], float32 (h, w)."""
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
    yy, band = np.arange(hh, dtype=np.float32)[:, None], np.zeros((hh, ww), np.int32)
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
        t, side = int(rng.integers(4, 13)), int(rng.integers(0, 4))
        strip = [np.s_[:t], np.s_[-t:], np.s_[:, :t], np.s_[:, -t:]][side]
        m[strip] = 1
    return m.astype(bool)


def _shape_mask(rng, cls, h, w, size):
    """bool (h, w): one whole shape of thing class ``cls``, ``size`` px, at a random place."""
    m = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    theta = rng.uniform(0, 2 * np.pi)
    shift = 4  # sub-pixel precision of cv2 drawing
    scale, name = float(1 << shift), SYNTHETIC_THING_CLASSES[cls]
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
    """Draws with ``rng``: image (uint8 (h, w, 3), RGB), pan (int32 (h, w) segment ids, 0 = void),
    sem (uint8 (h, w), separated labels, 255 = void), segments ("id", "category_id", "mask")."""
    stuff, image = _stuff_layout(rng, h, w), np.zeros((h, w, 3), np.float32)
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

    pan, sem = np.zeros((h, w), np.int32), np.full((h, w), 255, np.uint8)
    segments, per_cat = [], {}
    for k, j in enumerate(order, start=1):
        m, cat_id = inst == k, int(classes[j]) + 1  # (dataset ids: things 1-3, stuff 4-6)
        if areas[k] < MIN_VISIBLE_AREA:  # dropped: its pixels go back to the background
            image[m] = background[m]
            inst[m] = 0
            continue
        per_cat[cat_id] = per_cat.get(cat_id, 0) + 1
        seg_id = cat_id * LABEL_DIVISOR + per_cat[cat_id]
        pan[m], sem[m] = seg_id, 0
        segments.append({"id": seg_id, "category_id": cat_id, "mask": m})
    free = (inst == 0) & ~void
    for i, cat_id in enumerate((4, 5, 6)):
        m = free & (stuff == i)
        if m.any():
            pan[m], sem[m] = cat_id * LABEL_DIVISOR, i + 1
            segments.append({"id": cat_id * LABEL_DIVISOR, "category_id": cat_id, "mask": m})
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, pan, sem, segments


_VERSION = 1  # part of the folder name: bump it when the generated content changes
DEFAULT_IMAGE_SIZE = 192
_FOLDERS = {"image_root": "images", "panoptic_root": "panoptic", "sem_seg_root": "sem_seg"}


def get_synthetic_dataset_root() -> str:
    """The cache folder, read now: ``$PANET_D2_DATASETS`` if set, else ``~/.cache/panet_d2``."""
    root = os.environ.get("PANET_D2_DATASETS", "~/.cache/panet_d2")
    return os.path.abspath(os.path.expanduser(os.path.expandvars(root)))


def _write_split(d, split, num_images, seed, h, w):
    images, inst_anns, pan_anns = [], [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        image, pan, sem, segments = draw_synthetic_image(rng, h, w, force_void=index == 0)
        image_id, file_name = index + 1, f"{index + 1:06d}.png"
        arrays = (image[..., ::-1], id2rgb(pan)[..., ::-1], sem)
        for folder, array in zip(_FOLDERS.values(), arrays):
            os.makedirs(os.path.join(d, folder), exist_ok=True)
            if not cv2.imwrite(os.path.join(d, folder, file_name), array.astype(np.uint8)):
                raise OSError(f"Failed to write {os.path.join(d, folder, file_name)}")
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        pan_anns.append({"image_id": image_id, "file_name": file_name, "segments_info": []})
        for seg in segments:
            rle = mask_util.encode(np.asfortranarray(seg["mask"].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            bbox, area = [float(x) for x in mask_util.toBbox(rle)], int(seg["mask"].sum())
            ann = {"id": int(seg["id"]), "category_id": int(seg["category_id"]), "iscrowd": 0}
            pan_anns[-1]["segments_info"].append(dict(ann, bbox=[int(x) for x in bbox], area=area))
            if SYNTHETIC_CATEGORIES[seg["category_id"] - 1]["isthing"]:
                ann = dict(id=len(inst_anns) + 1, image_id=image_id, category_id=ann["category_id"])
                inst_anns.append(dict(ann, bbox=bbox, area=area, iscrowd=0, segmentation=rle))
    keys = ("id", "name", "supercategory", "isthing", "color")
    inst_cats = [{k: c[k] for k in keys[:3]} for c in SYNTHETIC_CATEGORIES if c["isthing"]]
    pan_cats = [{k: c[k] for k in keys} for c in SYNTHETIC_CATEGORIES]
    description = f"panet_d2 synthetic dataset, split {split}"
    info = dict(description=description, version=_VERSION, seed=seed)
    for name, anns, cats in (("instances", inst_anns, inst_cats), ("panoptic", pan_anns, pan_cats)):
        data = {"info": info, "images": images, "annotations": anns, "categories": cats}
        with open(os.path.join(d, name + ".json"), "w") as f:
            json.dump(data, f)


def generate_synthetic_dataset(root, split, num_images, seed, image_size=DEFAULT_IMAGE_SIZE):
    """Generates a split (the same files for the same arguments) into ``root`` (None:
    :func:`get_synthetic_dataset_root`) unless it is there; returns its paths."""
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    h, w = (image_size, image_size) if np.ndim(image_size) == 0 else image_size
    if min(h, w) < 32:
        raise ValueError(f"image_size must be at least 32x32, got {image_size!r}")
    h, w, num_images, seed = int(h), int(w), int(num_images), int(seed)
    root = get_synthetic_dataset_root() if root is None else os.path.expanduser(str(root))
    d = os.path.abspath(os.path.join(root, f"v{_VERSION}_{split}_seed{seed}_n{num_images}_{h}x{w}"))
    paths = {k: os.path.join(d, v) for k, v in _FOLDERS.items()}
    paths.update({f"{k}_json": os.path.join(d, f"{k}.json") for k in ("instances", "panoptic")})
    paths["dir"] = d
    if not os.path.isdir(paths["dir"]):
        parent = os.path.dirname(paths["dir"])
        try:
            os.makedirs(parent, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=os.path.basename(paths["dir"]) + ".tmp-", dir=parent)
        except OSError as e:
            raise DatasetError(
                f"Cannot write the generated dataset to '{parent}' ({e}). Set the environment "
                "variable PANET_D2_DATASETS (or pass root=) to a writable folder."
            ) from e
        try:
            _write_split(tmp, split, num_images, seed, h, w)
            os.rename(tmp, paths["dir"])
            logger.info(f"Generated synthetic split {split!r} in {paths['dir']}")
        except OSError:
            if not os.path.isdir(paths["dir"]):
                raise  # else a concurrent process wrote it first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    fix = f"Delete '{paths['dir']}' to generate it again."
    for p in (paths["instances_json"], paths["panoptic_json"]):
        try:
            with open(p) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(f"Generated file '{p}' is missing or corrupt ({e}). {fix}") from None
    names = [f"{i:06d}.png" for i in range(1, num_images + 1)]
    for p in [os.path.join(paths[k], n) for k in _FOLDERS for n in names]:
        if not os.path.isfile(p) or os.path.getsize(p) == 0:
            raise DatasetError(f"Generated file '{p}' is missing or empty. {fix}")
    return paths


DEFAULT_SPLITS = {"train": {"num_images": 64, "seed": 2018}, "val": {"num_images": 16, "seed": 7}}
_SPLIT_ARGS = ("root", "split", "num_images", "seed", "image_size")  # of generate_synthetic_dataset
_FILES = {"json_file": "instances_json"}  # metadata key -> key of the split's paths, if not same


def get_synthetic_metadata() -> dict:
    """Metadata of the views, in Detectron2's separated convention (things 0..2, stuff 1..3)."""
    meta = coco_panoptic_separated_metadata(SYNTHETIC_CATEGORIES)
    return dict(meta, ignore_label=255, label_divisor=LABEL_DIVISOR)


def load_synthetic_instances(paths, dataset_name=None):
    return load_coco_json(paths["instances_json"], paths["image_root"], dataset_name)


def load_synthetic_sem_seg(paths, dataset_name=None):
    return load_sem_seg(paths["sem_seg_root"], paths["image_root"], "png", "png")


def load_synthetic_panoptic_separated(paths, dataset_name=None):
    """``register_coco_panoptic_separated``'s dicts + ``pan_seg_file_name``, ``segments_info``."""
    meta = get_synthetic_metadata()
    things = meta["thing_dataset_id_to_contiguous_id"]
    contiguous = {**meta["stuff_dataset_id_to_contiguous_id"], **things}
    instances = load_synthetic_instances(paths, dataset_name)
    dicts = merge_to_panoptic(instances, load_synthetic_sem_seg(paths))
    with PathManager.open(paths["panoptic_json"]) as f:
        by_id = {a["image_id"]: a for a in json.load(f)["annotations"]}
    for d in dicts:
        ann = by_id[d["image_id"]]
        d["pan_seg_file_name"] = os.path.join(paths["panoptic_root"], ann["file_name"])
        d["segments_info"] = [
            dict(s, category_id=contiguous[s["category_id"]], isthing=s["category_id"] in things)
            for s in ann["segments_info"]
        ]
    return dicts


class _SyntheticMetadata(Metadata):
    """``Metadata`` whose file keys (``json_file``, ``image_root``, ...) generate the split (once)
    when read, as loading it does."""

    def __getattr__(self, key):
        spec = self.__dict__.get("synthetic_split")
        if spec is not None and key in spec["files"]:
            return generate_synthetic_dataset(*(spec[k] for k in _SPLIT_ARGS))[_FILES.get(key, key)]
        return super().__getattr__(key)


def register_synthetic_dataset(name_prefix="panet_synth", root=None, splits=None):
    """Registers the views ``{prefix}_{split}{,_panoptic,_sem_seg}`` of each split of ``splits``
    (split -> {"num_images", "seed"}; None: DEFAULT_SPLITS) not registered yet; returns their
    names. ``root``: as :func:`generate_synthetic_dataset`'s, when a split is generated."""
    meta = get_synthetic_metadata()
    things = {k: v for k, v in meta.items() if k.startswith("thing_")}
    stuff = {k: v for k, v in meta.items() if k.startswith("stuff_") or k == "ignore_label"}
    pan_files = ["json_file", "panoptic_root", "panoptic_json", "sem_seg_root"]
    views = [  # suffix, loader, evaluator_type, file keys besides image_root, metadata
        ("", load_synthetic_instances, "coco", ["json_file"], things),
        ("_panoptic", load_synthetic_panoptic_separated, "coco_panoptic_seg", pan_files, meta),
        ("_sem_seg", load_synthetic_sem_seg, "sem_seg", ["sem_seg_root"], stuff),
    ]
    registered = []
    for split, spec in (DEFAULT_SPLITS if splits is None else splits).items():
        args = (root, split, int(spec["num_images"]), int(spec["seed"]), DEFAULT_IMAGE_SIZE)
        for suffix, load, evaluator_type, files, md in views:
            name = f"{name_prefix}_{split}{suffix}"
            if name in DatasetCatalog.list():
                continue
            DatasetCatalog.register(
                name, lambda f=load, a=args, n=name: f(generate_synthetic_dataset(*a), n)
            )
            split_spec = dict(zip(_SPLIT_ARGS, args), files=["image_root"] + files)
            MetadataCatalog[name] = _SyntheticMetadata(
                name=name, evaluator_type=evaluator_type, synthetic_split=split_spec, **md
            )
            registered.append(name)
    return registered
