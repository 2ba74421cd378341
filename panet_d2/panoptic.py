# -*- coding: utf-8 -*-
"""
Panoptic PANet: PANet's instance branch and Panoptic FPN's semantic branch on one shared augmented
pyramid, trained jointly with L = lambda_i * (L_cls + L_box + L_mask) + lambda_s * L_sem, and merged
into a panoptic segmentation.
"""
import logging

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess

from .data.panoptic_mapper import PanopticLabelSpace
from .panoptic_merge import PanopticMerge

__all__ = ["PanopticPANet"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PanopticPANet(PanopticFPN):
    """
    :class:`PanopticFPN` (backbone, RPN, ROI heads and semantic head on one backbone pass; loss
    weights MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT and MODEL.SEM_SEG_HEAD.LOSS_WEIGHT) with this
    project's faster panoptic merge. Outputs per image, as :class:`PanopticFPN`: "instances",
    "sem_seg" (NUM_CLASSES, H, W) and "panoptic_seg" (segment map (H, W) int32, segments_info).

    Internally the semantic labels are 0 = "other" (thing pixels) and 1..S = stuff classes, the
    thing classes 0..T-1 (Detectron2's ``*_panoptic_separated`` convention). When the test
    dataset's metadata uses another convention (e.g. Detectron2's ``cityscapes_fine_panoptic_*``,
    whose ids are Cityscapes trainIds), ``segments_info`` category ids are converted to it so that
    :class:`COCOPanopticEvaluator` reads them right.
    """

    @configurable
    def __init__(self, *, panoptic_merge: PanopticMerge, label_space=None, **kwargs):
        """
        Args:
            panoptic_merge (PanopticMerge): the merge heuristic with its thresholds.
            label_space (PanopticLabelSpace or None): the output dataset's label convention;
                None keeps the internal ids.
            kwargs: see :class:`PanopticFPN`.
        """
        super().__init__(**kwargs)
        self.panoptic_merge = panoptic_merge
        self.label_space = label_space

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        # L = lambda_i * (L_cls + L_box + L_mask) + lambda_s * L_sem. PanopticFPN.from_config
        # scales the keys of box_predictor.loss_weight, which Detectron2 builds with
        # "loss_box_reg" only, so L_cls would stay unweighted: give it lambda_i too.
        ret["roi_heads"].box_predictor.loss_weight.setdefault(
            "loss_cls", cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        )
        ret["panoptic_merge"] = PanopticMerge.from_config(cfg)
        ret["label_space"] = cls._label_space(cfg)
        return ret

    @staticmethod
    def _label_space(cfg):
        names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        if not names or names[0] not in MetadataCatalog.list():
            return None
        meta = MetadataCatalog.get(names[0])
        if not hasattr(meta, "thing_dataset_id_to_contiguous_id") or not hasattr(
            meta, "stuff_dataset_id_to_contiguous_id"
        ):
            return None
        space = PanopticLabelSpace.from_metadata(meta)
        if space.num_things != cfg.MODEL.ROI_HEADS.NUM_CLASSES or (
            space.num_sem_classes != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        ):
            raise ValueError(
                "Dataset {!r} has {} thing and {} stuff classes; the config says "
                "MODEL.ROI_HEADS.NUM_CLASSES={} and MODEL.SEM_SEG_HEAD.NUM_CLASSES={} (stuff + 1 "
                "'other'). Set them to {} and {}.".format(
                    names[0],
                    space.num_things,
                    space.num_stuff,
                    cfg.MODEL.ROI_HEADS.NUM_CLASSES,
                    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
                    space.num_things,
                    space.num_sem_classes,
                )
            )
        return None if space.is_separated else space

    def inference(self, batched_inputs, do_postprocess: bool = True):
        """
        Args:
            batched_inputs (list[dict]): as :meth:`PanopticFPN.inference`.
            do_postprocess (bool): resize to the input resolution and merge.

        Returns:
            list[dict] with "instances", "sem_seg" and "panoptic_seg"; or, without postprocessing,
            the raw (list[Instances], list[Tensor]) as :class:`PanopticFPN`.
        """
        detector_results, sem_seg_results = super().inference(batched_inputs, do_postprocess=False)
        if not do_postprocess:
            return detector_results, sem_seg_results
        processed_results = []
        for sem_seg_result, detector_result, input_per_image in zip(
            sem_seg_results, detector_results, batched_inputs
        ):
            image_size = tuple(input_per_image["image"].shape[-2:])
            height = input_per_image.get("height", image_size[0])
            width = input_per_image.get("width", image_size[1])
            sem_seg_r = sem_seg_postprocess(sem_seg_result, image_size, height, width)
            detector_r = detector_postprocess(detector_result, height, width)
            panoptic_seg, segments_info = self.panoptic_merge(detector_r, sem_seg_r.argmax(dim=0))
            if self.label_space is not None:
                segments_info = self.label_space.segments_info_to_dataset(segments_info)
            processed_results.append(
                {
                    "sem_seg": sem_seg_r,
                    "instances": detector_r,
                    "panoptic_seg": (panoptic_seg, segments_info),
                }
            )
        return processed_results
