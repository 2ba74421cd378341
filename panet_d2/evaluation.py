# -*- coding: utf-8 -*-
"""
Evaluation: the evaluators of a test dataset, chosen by its metadata's ``evaluator_type`` from a
table of factories, and :class:`PanopticEvaluator` (PQ of the model's label convention on a
dataset of any convention).
"""

import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)

from .data import PanopticLabelSpace
from .errors import DatasetError

__all__ = ["PanopticEvaluator", "EVALUATORS", "build_evaluator", "check_evaluator_type"]

logger = logging.getLogger(__name__)


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


def _coco_panoptic(dataset_name, output_dir):
    """PQ; box and mask AP with an instances json; mIoU when the records have semantic PNGs."""
    evaluators = [PanopticEvaluator(dataset_name, output_dir)]
    meta = MetadataCatalog.get(dataset_name)
    things = sorted(meta.thing_dataset_id_to_contiguous_id.values())
    if meta.get("json_file", None) and things == list(range(len(things))):
        evaluators.append(COCOEvaluator(dataset_name, output_dir=output_dir))
    else:
        logger.info(
            "No box/mask AP on {!r}: COCOEvaluator needs an instances json (metadata json_file) "
            "and thing classes 0..T-1.".format(dataset_name)
        )
    records = DatasetCatalog.get(dataset_name)
    if records and "sem_seg_file_name" in records[0]:
        evaluators.append(SemSegEvaluator(dataset_name, output_dir=output_dir))
    return DatasetEvaluators(evaluators)


# evaluator_type -> factory(dataset_name, output_dir) of the dataset's evaluator
EVALUATORS = {
    "coco": lambda name, out: COCOEvaluator(name, output_dir=out),
    "coco_panoptic_seg": _coco_panoptic,
    "sem_seg": lambda name, out: SemSegEvaluator(name, output_dir=out),
    "cityscapes_instance": lambda name, out: CityscapesInstanceEvaluator(name),
    "cityscapes_sem_seg": lambda name, out: CityscapesSemSegEvaluator(name),
    "cityscapes_panoptic_seg": PanopticEvaluator,
    "pascal_voc": lambda name, out: PascalVOCDetectionEvaluator(name),
    "lvis": lambda name, out: LVISEvaluator(name, output_dir=out),
}


def check_evaluator_type(dataset_name):
    """
    Returns:
        str: the ``evaluator_type`` of a registered dataset.

    Raises:
        DatasetError: naming the dataset, its evaluator_type (or its absence) and the supported
            types, when :data:`EVALUATORS` has none for it.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATORS:
        found = "evaluator_type {!r}".format(evaluator_type) if evaluator_type else None
        raise DatasetError(
            "No evaluator for the test dataset {!r}: it has {}. Supported evaluator types: "
            "{}.".format(
                dataset_name, found or "no evaluator_type in its metadata", ", ".join(EVALUATORS)
            )
        )
    return evaluator_type


def build_evaluator(cfg, dataset_name, output_folder=None):
    """
    Returns:
        DatasetEvaluator: the evaluator of a test dataset, by its ``evaluator_type``
        (:data:`EVALUATORS`); its files go to ``output_folder`` (default
        ``<OUTPUT_DIR>/inference``).
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    return EVALUATORS[check_evaluator_type(dataset_name)](dataset_name, output_folder)
