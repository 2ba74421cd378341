# -*- coding: utf-8 -*-
"""
Panoptic PANet: PANet's instance branch and Panoptic FPN's semantic branch on one shared augmented
pyramid, trained jointly with L = lambda_i * (L_cls + L_box + L_mask) + lambda_s * L_sem, and merged
into a panoptic segmentation.
"""
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess

from .panoptic_merge import PanopticMerge

__all__ = ["PanopticPANet"]


@META_ARCH_REGISTRY.register()
class PanopticPANet(PanopticFPN):
    """
    :class:`PanopticFPN` (backbone, RPN, ROI heads and semantic head on one backbone pass; loss
    weights MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT and MODEL.SEM_SEG_HEAD.LOSS_WEIGHT) with this
    project's faster panoptic merge (same results as Detectron2's). Outputs per image, as
    :class:`PanopticFPN`: "instances", "sem_seg" (NUM_CLASSES, H, W) and "panoptic_seg" (segment
    map (H, W) int32, segments_info).

    Labels follow Detectron2's Panoptic FPN ("panoptic_separated" convention): thing classes
    0..T-1; semantic labels 0 = "other" (thing pixels) and 1..S = stuff classes. The model reads
    no dataset catalog: a dataset with another convention (e.g. Cityscapes trainIds) is converted
    by the data side (``panet_d2.data.PanopticDatasetMapper`` for training, the project's
    panoptic evaluator for evaluation).
    """

    @configurable
    def __init__(self, *, panoptic_merge: PanopticMerge, **kwargs):
        """
        Args:
            panoptic_merge (PanopticMerge): the merge heuristic with its thresholds.
            kwargs: see :class:`PanopticFPN`.
        """
        super().__init__(**kwargs)
        self.panoptic_merge = panoptic_merge

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
        return ret

    def forward(self, batched_inputs):
        if self.training and batched_inputs and "sem_seg" not in batched_inputs[0]:
            raise ValueError(
                "PanopticPANet training needs a 'sem_seg' target in every input, and this batch "
                "has none: the dataset mapper produced no semantic labels. Use "
                "panet_d2.data.PanopticDatasetMapper (train_net.py does), which makes them from "
                "the panoptic PNGs, or a dataset with sem_seg_file_name (Detectron2's "
                "*_panoptic_separated datasets)."
            )
        return super().forward(batched_inputs)

    def inference(self, batched_inputs, do_postprocess: bool = True):
        """
        Args:
            batched_inputs (list[dict]): as :meth:`PanopticFPN.inference`.
            do_postprocess (bool): resize to the input resolution and merge.

        Returns:
            list[dict] with "instances", "sem_seg" and "panoptic_seg"; or, without postprocessing,
            the raw (list[Instances], list[Tensor]) as :class:`PanopticFPN`.
        """
        # PanopticFPN.inference calls Detectron2's merge function by its module-level name (no
        # hook to swap it): take its raw outputs and postprocess them here.
        detector_results, sem_seg_results = super().inference(batched_inputs, do_postprocess=False)
        if not do_postprocess:
            return detector_results, sem_seg_results
        return [
            self._postprocess_one(inputs, instances, sem_seg)
            for inputs, instances, sem_seg in zip(batched_inputs, detector_results, sem_seg_results)
        ]

    def _postprocess_one(self, inputs, instances, sem_seg):
        """
        Resize one image's raw outputs to its original size (``inputs["height"]``, ``["width"]``)
        and merge them. ``sem_seg``: (NUM_CLASSES, h, w) logits at the network's input size.
        """
        image_size = tuple(inputs["image"].shape[-2:])
        height, width = inputs.get("height", image_size[0]), inputs.get("width", image_size[1])
        sem_seg = sem_seg_postprocess(sem_seg, image_size, height, width)
        instances = detector_postprocess(instances, height, width)
        return {
            "sem_seg": sem_seg,
            "instances": instances,
            "panoptic_seg": self.panoptic_merge(instances, sem_seg.argmax(dim=0)),
        }
