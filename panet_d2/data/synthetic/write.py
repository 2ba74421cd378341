# -*- coding: utf-8 -*-
"""
Writes the files of one generated split, once, into a cache folder (atomic, deterministic;
the layout: docs/design.md).
"""

import json
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np
import pycocotools.mask as mask_util
from panopticapi.utils import id2rgb

from ...errors import DatasetError
from .draw import SYNTHETIC_CATEGORIES, draw_synthetic_image

__all__ = ["get_synthetic_dataset_root", "get_synthetic_split_paths", "generate_synthetic_dataset"]

logger = logging.getLogger(__name__)

_VERSION = 1  # part of the folder name: bump it when the generated content changes
DEFAULT_IMAGE_SIZE = 192
_FOLDERS = {"image_root": "images", "panoptic_root": "panoptic", "sem_seg_root": "sem_seg"}


def get_synthetic_dataset_root() -> str:
    """The cache folder, read now: ``$PANET_D2_DATASETS`` if set, else ``~/.cache/panet_d2``."""
    root = os.environ.get("PANET_D2_DATASETS", "~/.cache/panet_d2")
    return os.path.abspath(os.path.expanduser(os.path.expandvars(root)))


def get_synthetic_split_paths(root, split, num_images, seed, image_size=DEFAULT_IMAGE_SIZE) -> dict:
    """
    The paths of a split (nothing is generated): a dict with "dir", "image_root",
    "panoptic_root", "sem_seg_root", "instances_json", "panoptic_json" (absolute).
    ``root`` None: :func:`get_synthetic_dataset_root`.
    """
    h, w = _hw(image_size)
    root = get_synthetic_dataset_root() if root is None else os.path.expanduser(str(root))
    name = f"v{_VERSION}_{split}_seed{int(seed)}_n{int(num_images)}_{h}x{w}"
    d = os.path.abspath(os.path.join(root, name))
    paths = {k: os.path.join(d, v) for k, v in _FOLDERS.items()}
    paths.update({f"{k}_json": os.path.join(d, f"{k}.json") for k in ("instances", "panoptic")})
    return dict(paths, dir=d)


def _hw(image_size):
    h, w = (image_size, image_size) if np.ndim(image_size) == 0 else image_size
    if min(h, w) < 32:
        raise ValueError(f"image_size must be at least 32x32, got {image_size!r}")
    return int(h), int(w)


def _write_png(path, array):
    if not cv2.imwrite(path, cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array):
        raise OSError(f"Failed to write {path}")


def _write_split(d, split, num_images, seed, h, w):
    images, inst_anns, pan_anns = [], [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        image, pan, sem, segments = draw_synthetic_image(rng, h, w, force_void=index == 0)
        image_id, file_name = index + 1, f"{index + 1:06d}.png"
        for folder, array in zip(_FOLDERS.values(), (image, id2rgb(pan).astype(np.uint8), sem)):
            os.makedirs(os.path.join(d, folder), exist_ok=True)
            _write_png(os.path.join(d, folder, file_name), array)
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
    keys = ("id", "name", "supercategory")
    inst_cats = [{k: c[k] for k in keys} for c in SYNTHETIC_CATEGORIES if c["isthing"]]
    pan_cats = [
        dict({k: c[k] for k in keys}, isthing=c["isthing"], color=c["color"])
        for c in SYNTHETIC_CATEGORIES
    ]
    info = {
        "description": f"panet_d2 synthetic dataset, split {split}",
        "version": _VERSION,
        "seed": seed,
    }
    for name, anns, cats in (("instances", inst_anns, inst_cats), ("panoptic", pan_anns, pan_cats)):
        data = {"info": info, "images": images, "annotations": anns, "categories": cats}
        with open(os.path.join(d, name + ".json"), "w") as f:
            json.dump(data, f)


def _check_split(paths, num_images):
    """Raises :class:`DatasetError` naming the file if a split is incomplete or corrupt."""
    hint = f"Delete '{paths['dir']}' to generate it again."
    for p in (paths["instances_json"], paths["panoptic_json"]):
        try:
            with open(p) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            raise DatasetError(
                f"Generated file '{p}' is missing or corrupt ({e}). {hint}"
            ) from None
    names = [f"{i:06d}.png" for i in range(1, num_images + 1)]
    for p in [os.path.join(paths[k], n) for k in _FOLDERS for n in names]:
        if not os.path.isfile(p) or os.path.getsize(p) == 0:
            raise DatasetError(f"Generated file '{p}' is missing or empty. {hint}")


def generate_synthetic_dataset(
    root, split, num_images, seed, image_size=DEFAULT_IMAGE_SIZE
) -> dict:
    """
    Generates a split unless it is in the cache, and returns :func:`get_synthetic_split_paths`.
    Same arguments, byte-identical files. The split is written to a temporary folder beside its
    place, then renamed: a split that a concurrent process wrote first is used.

    Args:
        root (str or None): cache folder; None: :func:`get_synthetic_dataset_root`, read now.
        split (str): a name, e.g. "train" (in the folder name and the json info).
        num_images (int): >= 1.
        seed (int): random seed of the split.
        image_size (int or (H, W)): in pixels.
    """
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    paths = get_synthetic_split_paths(root, split, int(num_images), int(seed), image_size)
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
            _write_split(tmp, split, int(num_images), int(seed), *_hw(image_size))
            os.rename(tmp, paths["dir"])
            logger.info(f"Generated synthetic split {split!r} in {paths['dir']}")
        except OSError:
            if not os.path.isdir(paths["dir"]):
                raise  # else a concurrent process wrote it first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    _check_split(paths, int(num_images))
    return paths
