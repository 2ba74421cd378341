# -*- coding: utf-8 -*-
"""
Evaluators of panet_d2, chosen by the ``evaluator_type`` metadata of a dataset, as in
Detectron2's ``tools/train_net.py``.
"""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    SemSegEvaluator,
)

__all__ = ["SUPPORTED_EVALUATOR_TYPES", "build_evaluator", "check_evaluator_type"]

# evaluator_type -> what build_evaluator returns for it
SUPPORTED_EVALUATOR_TYPES = {
    "coco": "COCOEvaluator (box AP, and mask AP when the model predicts masks)",
    "coco_panoptic_seg": "COCOPanopticEvaluator + COCOEvaluator + SemSegEvaluator",
    "sem_seg": "SemSegEvaluator",
    "cityscapes_instance": "CityscapesInstanceEvaluator",
    "cityscapes_sem_seg": "CityscapesSemSegEvaluator",
    "cityscapes_panoptic_seg": "COCOPanopticEvaluator (Detectron2's cityscapes_fine_panoptic_*)",
    "lvis": "LVISEvaluator",
}


def check_evaluator_type(dataset_name):
    """
    Returns:
        str: the ``evaluator_type`` of a registered dataset.

    Raises:
        ValueError: naming the dataset, its evaluator_type (or its absence) and the supported
            types, when build_evaluator has no evaluator for it.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in SUPPORTED_EVALUATOR_TYPES:
        found = (
            "has no evaluator_type in its metadata"
            if evaluator_type is None
            else "has evaluator_type {!r}".format(evaluator_type)
        )
        raise ValueError(
            "No evaluator for the test dataset {!r}: it {}. Supported evaluator types: {}. Set "
            "MetadataCatalog.get({!r}).evaluator_type to one of them, or remove the dataset from "
            "DATASETS.TEST.".format(
                dataset_name, found, ", ".join(SUPPORTED_EVALUATOR_TYPES), dataset_name
            )
        )
    return evaluator_type


def build_evaluator(cfg, dataset_name, output_folder=None):
    """
    Create the evaluator(s) of a test dataset from its metadata's ``evaluator_type``
    (see :data:`SUPPORTED_EVALUATOR_TYPES`).

    Args:
        cfg (CfgNode): the config (OUTPUT_DIR is used when ``output_folder`` is None).
        dataset_name (str): a registered dataset.
        output_folder (str or None): where evaluators write their files; default
            ``<OUTPUT_DIR>/inference``.

    Returns:
        DatasetEvaluator

    Raises:
        ValueError: for a dataset without a supported evaluator_type.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = check_evaluator_type(dataset_name)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, output_dir=output_folder)
    if evaluator_type == "coco_panoptic_seg":
        sem_seg_kwargs = {}
        if MetadataCatalog.get(dataset_name).get("sem_seg_from_panoptic", False):
            # the ground truth of mIoU is derived from the panoptic PNGs (no preprocessing)
            from .data.coco_panoptic import PanopticSemSegLoader

            sem_seg_kwargs["sem_seg_loading_fn"] = PanopticSemSegLoader(dataset_name)
        return DatasetEvaluators(
            [
                COCOPanopticEvaluator(dataset_name, output_folder),
                COCOEvaluator(dataset_name, output_dir=output_folder),
                SemSegEvaluator(
                    dataset_name, distributed=True, output_dir=output_folder, **sem_seg_kwargs
                ),
            ]
        )
    if evaluator_type == "sem_seg":
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)
    if evaluator_type == "cityscapes_sem_seg":
        return CityscapesSemSegEvaluator(dataset_name)
    if evaluator_type == "cityscapes_panoptic_seg":
        return COCOPanopticEvaluator(dataset_name, output_folder)
    assert evaluator_type == "lvis", evaluator_type
    return LVISEvaluator(dataset_name, output_dir=output_folder)
