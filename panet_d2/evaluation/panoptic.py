"""PQ on a dataset of any label convention; a panoptic model's sem_seg in a dataset's classes."""

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

import detectron2.utils.comm as comm
from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluator
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN
from detectron2.utils.file_io import PathManager

from ..data import PanopticLabelSpace, label_space_of
from ..data.panoptic_mapper import read_panoptic_png, segment_index, warn_segment_mismatch
from ..errors import DatasetError

logger = logging.getLogger(__name__)

# What panopticapi's PQ makes of a ground-truth PNG that disagrees with its segments_info
_MISSED = ": PQ counts them as missed"
_UNLISTED = "neither ground truth nor void for PQ (predictions there count as false positives)"
_WARNED_IMAGES = 10


class PanopticEvaluator(COCOPanopticEvaluator):
    """Detectron2's ``COCOPanopticEvaluator`` for segments in the separated convention (things
    0..T-1, stuff 1..S), converted to the dataset's ids on a dataset of another convention."""

    def __init__(self, dataset_name, output_dir=None):
        super().__init__(dataset_name, output_dir)
        space = PanopticLabelSpace.from_metadata(self._metadata)
        self._label_space = None if space.is_separated else space

    def process(self, inputs, outputs):
        if self._label_space is not None:
            outputs = [self._to_dataset_ids(output) for output in outputs]
        super().process(inputs, outputs)

    def evaluate(self):
        """Detectron2's, after warning of ground-truth PNGs that disagree with segments_info."""
        image_ids, annotations = {p["image_id"] for p in self._predictions}, []
        if image_ids:  # (each predicted image whose ground truth disagrees)
            with PathManager.open(self._metadata.panoptic_json) as f:
                annotations = json.load(f).get("annotations", [])
        annotations = [a for a in annotations if a.get("image_id") in image_ids]

        def mismatch(a):
            path = os.path.join(self._metadata.panoptic_root, a["file_name"])
            ids = np.unique([s["id"] for s in a.get("segments_info", [])]).astype(np.int64)
            _, missing, unknown = segment_index(read_panoptic_png(path), ids)
            where = f"image {a['image_id']!r} ({path})"
            return (where, missing, unknown) if missing or unknown else None

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            mismatches = comm.gather([m for m in pool.map(mismatch, annotations) if m], dst=0)
        mismatches = [m for part in mismatches for m in part]
        for where, missing, unknown in mismatches[:_WARNED_IMAGES]:
            warn_segment_mismatch(where, missing, unknown, _MISSED, _UNLISTED)
        if len(mismatches) > _WARNED_IMAGES:
            logger.warning(
                f"Dataset {self._metadata.name!r}: {len(mismatches) - _WARNED_IMAGES} more "
                "ground-truth panoptic PNG(s) disagree with their segments_info "
                f"({self._metadata.panoptic_json})"
            )
        return super().evaluate()

    def _to_dataset_ids(self, output):
        panoptic_img, segments_info = output["panoptic_seg"]
        if segments_info is None:  # category ids are in the image (label_divisor)
            return output
        segments_info = self._label_space.segments_info_to_dataset(segments_info)
        return dict(output, panoptic_seg=(panoptic_img, segments_info))


class PanopticToSemSeg(DatasetEvaluator):
    """A semantic ``evaluator`` given a panoptic model's output as one-hot scores of the dataset's
    classes: stuff label ``s`` is ``stuff_to_class[s - 1]``, a "things" pixel ``thing_to_class[c]``
    of the thing segment covering it, else the class of its most likely stuff label."""

    def __init__(self, evaluator, stuff_to_class, thing_to_class, num_classes):
        self._evaluator, self._num_classes = evaluator, num_classes
        self._stuff_to_class = torch.as_tensor(stuff_to_class, dtype=torch.int64)
        self._thing_to_class = list(thing_to_class)

    def reset(self):
        self._evaluator.reset()

    def process(self, inputs, outputs):
        self._evaluator.process(inputs, [dict(o, sem_seg=self._convert(o)) for o in outputs])

    def evaluate(self):
        return self._evaluator.evaluate()

    def _convert(self, output):
        """uint8 (num_classes, H, W) one-hot scores of the dataset's classes."""
        scores = output["sem_seg"].cpu()
        things, labels = scores.argmax(dim=0) == 0, self._stuff_to_class[scores[1:].argmax(dim=0)]
        panoptic, segments_info = output["panoptic_seg"]
        panoptic = panoptic.cpu()
        for s in segments_info:  # PanopticPANet's: a list of dicts, with "isthing"
            if s["isthing"]:
                labels[(panoptic == s["id"]) & things] = self._thing_to_class[s["category_id"]]
        one_hot = torch.zeros((self._num_classes,) + labels.shape, dtype=torch.uint8)
        return one_hot.scatter_(0, labels[None], 1)


def meta_architecture(cfg):
    """What is registered as ``cfg.MODEL.META_ARCHITECTURE``, or None (``build_model`` says so)."""
    name = cfg.MODEL.META_ARCHITECTURE
    return META_ARCH_REGISTRY.get(name) if name in META_ARCH_REGISTRY else None


def panoptic_to_dataset_classes(cfg, dataset_name):
    """For a panoptic model on a semantic dataset: (stuff_to_class, thing_to_class), the dataset
    class of each model class (of DATASETS.TRAIN's label space) by name; None if nothing is to be
    converted; a :class:`DatasetError` if they cannot be."""
    arch = meta_architecture(cfg)
    if not (isinstance(arch, type) and issubclass(arch, PanopticFPN)):
        return None
    classes = list(MetadataCatalog.get(dataset_name).get("stuff_classes", None) or [])
    spaces = [(name, label_space_of(MetadataCatalog.get(name))) for name in cfg.DATASETS.TRAIN]
    train, space = next(((n, s) for n, s in spaces if s is not None), (None, None))
    num = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    if (classes == space.stuff_classes) if space else (num == len(classes)):
        return None
    if space is None:
        why = "no panoptic dataset in DATASETS.TRAIN names the model's classes"
    else:
        missing = [c for c in space.thing_classes + space.stuff_classes[1:] if c not in classes]
        num = f"{num}: {space.num_stuff} stuff + 1 'things', and {space.num_things} thing classes"
        num += f", of {train!r}"
        why = "the dataset has no class " + ", ".join(map(repr, missing)) if missing else None
    if why:
        raise DatasetError(
            f"Test dataset {dataset_name!r} ({len(classes)} semantic classes) cannot evaluate the "
            f"semantic output of MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r} "
            f"(MODEL.SEM_SEG_HEAD.NUM_CLASSES={num}): {why}."
        )
    stuff = [classes.index(c) for c in space.stuff_classes[1:]]
    return stuff, [classes.index(c) for c in space.thing_classes]
