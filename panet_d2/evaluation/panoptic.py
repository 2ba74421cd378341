# -*- coding: utf-8 -*-
"""PQ on a dataset of any label convention; a panoptic model's sem_seg in a dataset's classes."""

import torch

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOPanopticEvaluator, DatasetEvaluator
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN

from ..data import PanopticLabelSpace, label_space_of
from ..errors import DatasetError

__all__ = [
    "PanopticEvaluator",
    "PanopticToSemSeg",
    "meta_architecture",
    "panoptic_to_dataset_classes",
]


class PanopticEvaluator(COCOPanopticEvaluator):
    """
    Detectron2's :class:`COCOPanopticEvaluator` for a model whose ``panoptic_seg`` segments follow
    Panoptic FPN's "separated" convention (things 0..T-1, stuff 1..S), as PanopticPANet's do: on a
    dataset of another convention (``coco_2017_val_panoptic``, ``cityscapes_fine_panoptic_val``)
    the segments' category ids are first converted to the dataset's (:class:`PanopticLabelSpace`).
    """

    def __init__(self, dataset_name, output_dir=None):
        super().__init__(dataset_name, output_dir)
        space = PanopticLabelSpace.from_metadata(self._metadata)
        self._label_space = None if space.is_separated else space

    def process(self, inputs, outputs):
        if self._label_space is not None:
            outputs = [self._to_dataset_ids(output) for output in outputs]
        super().process(inputs, outputs)

    def _to_dataset_ids(self, output):
        panoptic_img, segments_info = output["panoptic_seg"]
        if segments_info is None:  # category ids are in the image (label_divisor)
            return output
        segments_info = self._label_space.segments_info_to_dataset(segments_info)
        return dict(output, panoptic_seg=(panoptic_img, segments_info))


class PanopticToSemSeg(DatasetEvaluator):
    """
    A semantic segmentation ``evaluator`` (e.g. :class:`CityscapesSemSegEvaluator`) of a panoptic
    model (PanopticPANet) whose "sem_seg" (0 = things, 1..S stuff) is not in the dataset's
    classes: the evaluator gets one-hot scores of the dataset's classes, where a pixel of stuff
    label ``s`` is class ``stuff_to_class[s - 1]``, a "things" pixel the class
    ``thing_to_class[c]`` of the thing segment of class ``c`` that covers it in "panoptic_seg",
    or, where none does, of its most likely stuff label.
    """

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
        things = scores.argmax(dim=0) == 0
        labels = self._stuff_to_class[scores[1:].argmax(dim=0)]
        panoptic, segments_info = output["panoptic_seg"]
        panoptic = panoptic.cpu()
        for s in segments_info:  # PanopticPANet's: a list of dicts, with "isthing"
            if s["isthing"]:
                labels[(panoptic == s["id"]) & things] = self._thing_to_class[s["category_id"]]
        one_hot = torch.zeros((self._num_classes,) + labels.shape, dtype=torch.uint8)
        return one_hot.scatter_(0, labels[None], 1)


def meta_architecture(cfg):
    """The class (or function) registered as ``cfg.MODEL.META_ARCHITECTURE``, or None when no such
    name is registered (``build_model`` then says so)."""
    try:
        return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    except KeyError:
        return None


def panoptic_to_dataset_classes(cfg, dataset_name):
    """
    For a panoptic model (a PanopticFPN, e.g. PanopticPANet) evaluated on a semantic dataset: the
    dataset class (an index of its metadata's ``stuff_classes``) of each of the model's stuff and
    thing classes, by name; the model's classes are those of its training data (the panoptic
    label space of DATASETS.TRAIN).

    Returns:
        None when nothing is to be converted (not a panoptic model, or the dataset's classes are
        the model's: "things" + stuff), else (stuff_to_class, thing_to_class).

    Raises:
        DatasetError: naming the dataset, the model and their numbers of classes, when the
            model's classes cannot be converted to the dataset's.
    """
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
        num = "{}: {} stuff + 1 'things', and {} thing classes, of {!r}".format(
            num, space.num_stuff, space.num_things, train
        )
        why = "the dataset has no class " + ", ".join(map(repr, missing)) if missing else None
    if why:
        raise DatasetError(
            "Test dataset {!r} ({} semantic classes) cannot evaluate the semantic output of "
            "MODEL.META_ARCHITECTURE={!r} (MODEL.SEM_SEG_HEAD.NUM_CLASSES={}): {}.".format(
                dataset_name, len(classes), cfg.MODEL.META_ARCHITECTURE, num, why
            )
        )
    stuff = [classes.index(c) for c in space.stuff_classes[1:]]
    return stuff, [classes.index(c) for c in space.thing_classes]
