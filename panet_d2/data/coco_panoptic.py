"""COCO-format panoptic datasets in the separated convention, read without preprocessing."""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json, merge_to_panoptic
from detectron2.utils.file_io import PathManager

from ..errors import DatasetError
from .label_space import PanopticLabelSpace

# name -> (images, panoptic PNGs, panoptic json, instances json), under $DETECTRON2_DATASETS
_PREDEFINED_SPLITS = {
    f"coco_2017_{s}_panoptic_panet": (
        f"coco/{s}2017",
        f"coco/panoptic_{s}2017",
        f"coco/annotations/panoptic_{s}2017.json",
        f"coco/annotations/instances_{s}2017.json",
    )
    for s in ("train", "val")
}


def coco_panoptic_separated_metadata(categories=None) -> dict:
    """Separated metadata of COCO panoptic ``categories`` (default: Detectron2's COCO_CATEGORIES,
    giving ``_get_builtin_metadata("coco_panoptic_separated")``)."""
    if categories is None:
        from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES as categories
    cats = sorted(categories, key=lambda c: c["id"])
    things, stuff = [c for c in cats if c["isthing"] == 1], [c for c in cats if c["isthing"] == 0]
    stuff_map = dict([(0, 0)] + [(c["id"], i + 1) for i, c in enumerate(stuff)])
    return {
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "thing_classes": [c["name"] for c in things],
        "thing_colors": [c.get("color", [0, 0, 0]) for c in things],
        "stuff_dataset_id_to_contiguous_id": stuff_map,
        "stuff_classes": ["things"]
        + [c["name"].replace("-other", "").replace("-merged", "") for c in stuff],
        "stuff_colors": [[82, 18, 128]] + [c.get("color", [0, 0, 0]) for c in stuff],
    }


def _load(name, metadata, image_root, panoptic_root, panoptic_json, instances_json):
    """Detectron2's panoptic dicts, merged with those of an instances json; errors: DatasetError."""
    where = f"Dataset {name!r}"
    hint = " (under $DETECTRON2_DATASETS, default ./datasets)" if name in _PREDEFINED_SPLITS else ""
    for path in (panoptic_json, image_root, panoptic_root, instances_json):
        if path is not None and not PathManager.exists(path):
            raise DatasetError(f"{where}: {path} not found{hint}")
    try:
        dicts = load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata)
    except ValueError as e:
        raise DatasetError(f"{where}: cannot parse {panoptic_json}: {e}") from None
    except KeyError as e:  # Detectron2 looks the category ids up in the metadata
        what = f"unknown category id {e.args[0]}" if isinstance(e.args[0], int) else f"no key {e}"
        raise DatasetError(f"{where}: {what} in {panoptic_json}") from None
    except AssertionError as e:  # Detectron2 checks that there are images and that the first exists
        msg = f"{where}: no image, or a missing file, in {panoptic_json}: {e}"
        raise DatasetError(msg) from None
    if instances_json is None:
        return dicts
    try:
        return merge_to_panoptic(load_coco_json(instances_json, image_root, name), dicts)
    except KeyError as e:  # merge_to_panoptic looks the images up by file name
        raise DatasetError(f"{where}: {e} of {instances_json} not in {panoptic_json}") from None


def register_coco_panoptic_panet(
    name, metadata, image_root, panoptic_root, panoptic_json, instances_json=None, replace=False
):
    """As Detectron2's ``register_coco_panoptic``, with separated ``metadata`` (None: COCO's) and
    the ``annotations`` of ``instances_json``; ``replace``: re-register ``name`` if it exists."""
    metadata = dict(coco_panoptic_separated_metadata() if metadata is None else metadata)
    if not PanopticLabelSpace.from_metadata(dict(metadata, name=name)).is_separated:
        raise DatasetError(
            f"Dataset {name!r}: the metadata must be separated (things contiguous 0..T-1, stuff "
            "1..S); see coco_panoptic_separated_metadata()"
        )
    if replace and name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    files = (image_root, panoptic_root, panoptic_json, instances_json)
    DatasetCatalog.register(name, lambda: _load(name, metadata, *files))
    paths = dict(panoptic_root=panoptic_root, image_root=image_root, panoptic_json=panoptic_json)
    if instances_json:  # json_file=None would break COCOEvaluator
        paths["json_file"] = instances_json
    ours = dict(paths, evaluator_type="coco_panoptic_seg")
    clash = [k for k in ours if k in metadata and metadata[k] != ours[k]]
    if clash:  # (Detectron2's register_coco_panoptic: a TypeError for any key in both)
        raise DatasetError(
            f"Dataset {name!r}: the metadata's {clash[0]}={metadata[clash[0]]!r} differs from the "
            f"registration's {ours[clash[0]]!r}: give it as the argument, not in the metadata."
        )
    defaults = dict(ignore_label=255, label_divisor=1000)  # the metadata's, where it has them
    MetadataCatalog.get(name).set(**{**defaults, **metadata, **ours})


def register_all_coco_panoptic_panet(root=None):
    """Registers ``coco_2017_{train,val}_panoptic_panet`` (names only; existing ones skipped)."""
    root = root or os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    for name, files in _PREDEFINED_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_coco_panoptic_panet(name, None, *[os.path.join(root, f) for f in files])


register_all_coco_panoptic_panet()
