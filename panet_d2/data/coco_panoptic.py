# -*- coding: utf-8 -*-
"""COCO panoptic datasets in the separated convention, without preprocessing.

Detectron2's ``coco_2017_*_panoptic_separated`` datasets need semantic PNGs made by
``datasets/prepare_panoptic_fpn.py``. The datasets registered here read the original
COCO panoptic PNGs instead (through :class:`PanopticDatasetMapper`), with the same
separated metadata (things contiguous ``0..T-1``, stuff ``1..S``,
``stuff_classes = ["things", ...]``) and ``evaluator_type="coco_panoptic_seg"``.

Importing this module registers (names only; nothing is read until
``DatasetCatalog.get``) ``coco_2017_train_panoptic_panet`` and
``coco_2017_val_panoptic_panet`` under ``$DETECTRON2_DATASETS`` (default
``datasets``) with Detectron2's COCO layout.
"""

import json
import logging
import os
from typing import Optional

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json
from detectron2.utils.file_io import PathManager

from .panoptic_mapper import PanopticLabelSpace, panoptic_to_semantic, read_panoptic_png

__all__ = [
    "coco_panoptic_separated_metadata",
    "load_coco_panoptic_panet_json",
    "register_coco_panoptic_panet",
    "register_all_coco_panoptic_panet",
    "PanopticSemSegLoader",
    "COCO_LAYOUT",
]

logger = logging.getLogger(__name__)

# name -> (image dir, panoptic PNG dir, panoptic json, instances json), relative to the root
_PREDEFINED_SPLITS = {
    "coco_2017_train_panoptic_panet": (
        "coco/train2017",
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/annotations/instances_train2017.json",
    ),
    "coco_2017_val_panoptic_panet": (
        "coco/val2017",
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/annotations/instances_val2017.json",
    ),
}

COCO_LAYOUT = (
    "expected Detectron2's COCO layout under $DETECTRON2_DATASETS (default ./datasets):\n"
    "  coco/{train,val}2017/*.jpg\n"
    "  coco/panoptic_{train,val}2017/*.png\n"
    "  coco/annotations/panoptic_{train,val}2017.json\n"
    "  coco/annotations/instances_{train,val}2017.json (only for box/mask evaluation)"
)


def coco_panoptic_separated_metadata(categories=None) -> dict:
    """Separated-convention metadata from a COCO panoptic ``categories`` list
    (dicts with id, name, isthing, color; default: Detectron2's COCO_CATEGORIES).

    Identical to Detectron2's ``_get_builtin_metadata("coco_panoptic_separated")`` for
    the COCO categories: things contiguous ``0..T-1`` and stuff ``1..S`` in increasing
    id order, ``stuff_dataset_id_to_contiguous_id[0] = 0``, ``stuff_classes[0] = "things"``.
    """
    if categories is None:
        from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES as categories
    cats = sorted(categories, key=lambda c: c["id"])
    things = [c for c in cats if c["isthing"] == 1]
    stuff = [c for c in cats if c["isthing"] == 0]
    if len(stuff) > 254:
        raise ValueError(f"{len(stuff)} stuff categories do not fit in a uint8 semantic map")
    stuff_map = {c["id"]: i + 1 for i, c in enumerate(stuff)}
    stuff_map[0] = 0
    return {
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c.get("color", [0, 0, 0]) for c in things],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
        "stuff_classes": ["things"]
        + [c["name"].replace("-other", "").replace("-merged", "") for c in stuff],
        "stuff_colors": [[82, 18, 128]] + [c.get("color", [0, 0, 0]) for c in stuff],
    }


def _require(path, what, isdir, layout):
    ok = PathManager.isdir(path) if isdir else PathManager.isfile(path)
    if not ok:
        raise FileNotFoundError(f"{what} not found: {path}\n{layout}")


def load_coco_panoptic_panet_json(
    panoptic_json,
    image_root,
    panoptic_root,
    metadata,
    dataset_name="<unnamed dataset>",
    sem_seg_from_panoptic=True,
    layout=None,
):
    """Dicts of Detectron2's ``load_coco_panoptic_json`` (``file_name``, ``image_id``,
    ``pan_seg_file_name``, ``segments_info`` with contiguous ``category_id`` and
    ``isthing``), after checking the files exist, with clear errors. With
    ``sem_seg_from_panoptic``, ``sem_seg_file_name`` is set to the panoptic PNG (for
    ``SemSegEvaluator(sem_seg_loading_fn=PanopticSemSegLoader(name))``)."""
    layout = layout or (
        "expected: images in image_root (<name>.jpg), COCO panoptic PNGs in panoptic_root "
        "(<name>.png), and the panoptic json"
    )
    _require(panoptic_json, "Panoptic json", False, layout)
    _require(image_root, "Image directory", True, layout)
    _require(panoptic_root, "Panoptic PNG directory", True, layout)
    try:
        dicts = load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata)
    except json.JSONDecodeError as e:
        raise ValueError(f"Cannot parse panoptic json {panoptic_json}: {e}") from e
    except KeyError as e:
        key = e.args[0] if e.args else None
        if isinstance(key, int):
            raise ValueError(
                f"Unknown category id {key} in {panoptic_json} for dataset {dataset_name!r}: "
                "not in the metadata's thing/stuff dataset ids"
            ) from None
        raise ValueError(f"Malformed panoptic json {panoptic_json}: missing key {key!r}") from e
    except AssertionError as e:
        # Detectron2 asserts that the first image / PNG exist, or that there are images
        msg = str(e)
        if msg and not msg.startswith("No images"):
            raise FileNotFoundError(f"File not found: {msg}\n{layout}") from None
        raise ValueError(f"No annotations in {panoptic_json} ({msg})") from None
    if sem_seg_from_panoptic:
        for d in dicts:
            d["sem_seg_file_name"] = d["pan_seg_file_name"]
    return dicts


def register_coco_panoptic_panet(
    name,
    metadata,
    image_root,
    panoptic_root,
    panoptic_json,
    instances_json=None,
    *,
    sem_seg_from_panoptic=True,
    replace=False,
    layout=None,
):
    """Register a COCO-format panoptic dataset ``name`` in the separated convention.

    Args:
        metadata (dict or None): separated-style metadata (things contiguous 0..T-1,
            stuff 1..S, stuff_classes ["things"] + ...), e.g.
            :func:`coco_panoptic_separated_metadata`; None = COCO's.
        image_root, panoptic_root, panoptic_json: COCO panoptic layout.
        instances_json: optional COCO instances json (``json_file`` metadata).
        sem_seg_from_panoptic: set dicts' ``sem_seg_file_name`` to the panoptic PNG
            (read it with :class:`PanopticSemSegLoader`, or our mapper; NOT with
            Detectron2's plain DatasetMapper).
        replace: re-register if ``name`` exists (else Detectron2 raises).
    """
    if metadata is None:
        metadata = coco_panoptic_separated_metadata()
    metadata = dict(metadata)
    space = PanopticLabelSpace.from_metadata(dict(metadata, name=name))
    if not space.is_separated:
        raise ValueError(
            f"Dataset {name!r}: metadata must use the separated convention (things contiguous "
            "0..T-1, stuff 1..S); see coco_panoptic_separated_metadata()"
        )
    if replace and name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name,
        lambda: load_coco_panoptic_panet_json(
            panoptic_json,
            image_root,
            panoptic_root,
            metadata,
            dataset_name=name,
            sem_seg_from_panoptic=sem_seg_from_panoptic,
            layout=layout,
        ),
    )
    MetadataCatalog.get(name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        evaluator_type="coco_panoptic_seg",
        # sem_seg_file_name is the panoptic PNG: train with PanopticDatasetMapper, evaluate mIoU
        # with SemSegEvaluator(sem_seg_loading_fn=PanopticSemSegLoader(name)).
        sem_seg_from_panoptic=bool(sem_seg_from_panoptic),
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )
    if instances_json:  # else COCOEvaluator builds its ground truth from the dicts
        MetadataCatalog.get(name).set(json_file=instances_json)


def register_all_coco_panoptic_panet(root=None):
    """Register ``coco_2017_{train,val}_panoptic_panet`` (lazily; skips existing names)."""
    if root is None:
        root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    meta = coco_panoptic_separated_metadata()
    for name, (image_dir, pan_dir, pan_json, inst_json) in _PREDEFINED_SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        register_coco_panoptic_panet(
            name,
            meta,
            os.path.join(root, image_dir),
            os.path.join(root, pan_dir),
            os.path.join(root, pan_json),
            os.path.join(root, inst_json),
            layout=COCO_LAYOUT.replace("$DETECTRON2_DATASETS (default ./datasets)", root),
        )


class PanopticSemSegLoader:
    """``sem_seg_loading_fn`` for Detectron2's ``SemSegEvaluator`` on panoptic datasets.

    ``PanopticSemSegLoader(dataset_name)(path, dtype=int)`` reads the panoptic PNG at
    ``path`` and returns the (H, W) separated-convention label map (things 0, stuff
    1..S, void 255) as ``np.ndarray`` of ``dtype``. The ``segments_info`` come from
    ``DatasetCatalog.get(dataset_name)`` (indexed by ``pan_seg_file_name``, built on
    first use); the label space from its metadata.
    """

    def __init__(self, dataset_name: str, dicts: Optional[list] = None):
        self.dataset_name = dataset_name
        self._dicts = dicts
        self._index = None
        self._space = None

    def _build(self):
        dicts = self._dicts if self._dicts is not None else DatasetCatalog.get(self.dataset_name)
        self._space = PanopticLabelSpace.from_metadata(MetadataCatalog.get(self.dataset_name))
        self._index = {}
        for d in dicts:
            entry = d["segments_info"]
            self._index[d["pan_seg_file_name"]] = entry
            if "sem_seg_file_name" in d:
                self._index.setdefault(d["sem_seg_file_name"], entry)
        self._dicts = None

    def __call__(self, filename, dtype=int):
        if self._index is None:
            self._build()
        try:
            segments_info = self._index[filename]
        except KeyError:
            raise KeyError(
                f"{filename} is not a panoptic PNG of dataset {self.dataset_name!r}"
            ) from None
        sem = panoptic_to_semantic(
            read_panoptic_png(filename), segments_info, self._space, where=filename
        )
        return np.asarray(sem, dtype=dtype)


register_all_coco_panoptic_panet()
