# -*- coding: utf-8 -*-
"""Registers the generated dataset's views with Detectron2 and loads their dicts.

Registering generates nothing and reads no environment variable: a split is generated (into
``$PANET_D2_DATASETS`` as set then) when its dicts, or a file of its metadata (``json_file``,
``image_root``, ...), are first asked for.
"""

import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data.datasets import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import merge_to_panoptic
from detectron2.utils.file_io import PathManager

from ..coco_panoptic import coco_panoptic_separated_metadata
from .draw import LABEL_DIVISOR, SYNTHETIC_CATEGORIES
from .write import DEFAULT_IMAGE_SIZE, generate_synthetic_dataset

__all__ = [
    "DEFAULT_SPLITS",
    "get_synthetic_metadata",
    "load_synthetic_instances",
    "load_synthetic_panoptic_separated",
    "load_synthetic_sem_seg",
    "register_synthetic_dataset",
]

DEFAULT_SPLITS = {"train": {"num_images": 64, "seed": 2018}, "val": {"num_images": 16, "seed": 7}}
_SPLIT_ARGS = ("root", "split", "num_images", "seed", "image_size")  # of generate_synthetic_dataset
_FILES = {"json_file": "instances_json"}  # metadata key -> key of the split's paths, if not same


def get_synthetic_metadata() -> dict:
    """Metadata of the views, in Detectron2's separated convention (things 0..2, stuff 1..3)."""
    meta = coco_panoptic_separated_metadata(SYNTHETIC_CATEGORIES)
    return dict(meta, ignore_label=255, label_divisor=LABEL_DIVISOR)


def load_synthetic_instances(paths, dataset_name=None):
    """Instance view: ``load_coco_json`` of the split's instances json."""
    return load_coco_json(paths["instances_json"], paths["image_root"], dataset_name)


def load_synthetic_sem_seg(paths, dataset_name=None):
    """Semantic view: ``load_sem_seg`` dicts (``dataset_name`` unused, as the others' loaders)."""
    return load_sem_seg(paths["sem_seg_root"], paths["image_root"], "png", "png")


def load_synthetic_panoptic_separated(paths, dataset_name=None):
    """
    Panoptic view: the dicts of Detectron2's ``register_coco_panoptic_separated`` (``annotations``,
    ``sem_seg_file_name``) with the keys of ``load_coco_panoptic_json``'s (``pan_seg_file_name``,
    ``segments_info``).
    """
    meta = get_synthetic_metadata()
    dicts = merge_to_panoptic(
        load_synthetic_instances(paths, dataset_name), load_synthetic_sem_seg(paths)
    )
    with PathManager.open(paths["panoptic_json"]) as f:
        by_id = {a["image_id"]: a for a in json.load(f)["annotations"]}
    for d in dicts:
        ann = by_id[d["image_id"]]
        d["pan_seg_file_name"] = os.path.join(paths["panoptic_root"], ann["file_name"])
        d["segments_info"] = []
        for s in ann["segments_info"]:
            isthing = s["category_id"] in meta["thing_dataset_id_to_contiguous_id"]
            table = meta[("thing" if isthing else "stuff") + "_dataset_id_to_contiguous_id"]
            d["segments_info"].append(dict(s, category_id=table[s["category_id"]], isthing=isthing))
    return dicts


class _SyntheticMetadata(Metadata):
    """``Metadata`` whose file keys (``json_file``, ``image_root``, ...) are looked up when read:
    that generates the split (once) into the cache folder in force then, as loading it does."""

    def __getattr__(self, key):
        spec = self.__dict__.get("synthetic_split")
        if spec is not None and key in spec["files"]:
            return generate_synthetic_dataset(*(spec[k] for k in _SPLIT_ARGS))[_FILES.get(key, key)]
        return super().__getattr__(key)


def register_synthetic_dataset(
    name_prefix="panet_synth", root=None, splits=None, image_size=DEFAULT_IMAGE_SIZE
):
    """
    Registers the views of each split (names already registered are skipped): instances
    ``{prefix}_{split}`` (evaluator_type "coco"), panoptic ``{prefix}_{split}_panoptic``
    ("coco_panoptic_seg") and semantic ``{prefix}_{split}_sem_seg`` ("sem_seg").

    Args:
        root (str or None): cache folder; None: ``$PANET_D2_DATASETS`` or ``~/.cache/panet_d2``,
            read when a split is generated.
        splits (dict or None): split -> {"num_images": int, "seed": int}; None: DEFAULT_SPLITS.

    Returns:
        list[str]: the names registered by this call.
    """
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
        args = (root, split, int(spec["num_images"]), int(spec["seed"]), image_size)
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
