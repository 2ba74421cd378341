# -*- coding: utf-8 -*-
"""
The semantic branch of Panoptic FPN (Kirillov et al., CVPR 2019) on PANet's augmented pyramid.

From each level N2..N5: stages of [3x3 conv, 128 channels, GroupNorm(32), ReLU, 2x bilinear
upsample] until 1/4 scale (N5: 3 stages, N4: 2, N3: 1, N2: one conv without upsampling); the four
maps are summed; a 1x1 conv predicts the stuff classes plus one "other" class (label 0, every thing
pixel); 4x bilinear upsampling to the image; per-pixel cross-entropy, void ignored, times
MODEL.SEM_SEG_HEAD.LOSS_WEIGHT (lambda_s).
"""
from typing import Dict

from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.semantic_seg import SEM_SEG_HEADS_REGISTRY, SemSegFPNHead

from ..errors import ConfigError, check_choice
from .adaptive_feature_pooling import check_norm

__all__ = ["PANetSemSegHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class PANetSemSegHead(SemSegFPNHead):
    """
    Detectron2's :class:`SemSegFPNHead` (which is Panoptic FPN's semantic branch) reading the
    augmented levels N2..N5 (named "p2".."p5" by :class:`PAFPN`), with its config checked up front.
    Forward: features dict -> logits (N, NUM_CLASSES, H, W) at image resolution, and losses
    {"loss_sem_seg"} in training.
    """

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        in_features = list(head.IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if not in_features or missing:
            raise ConfigError(
                "MODEL.SEM_SEG_HEAD.IN_FEATURES={} names {} which the backbone does not output; "
                "it outputs {} (PANet: ['p2', 'p3', 'p4', 'p5']).".format(
                    in_features, missing, sorted(input_shape)
                )
            )
        check_norm("MODEL.SEM_SEG_HEAD.NORM", head.NORM)
        if head.NUM_CLASSES < 2:
            raise ConfigError(
                "MODEL.SEM_SEG_HEAD.NUM_CLASSES={} must count the stuff classes plus the 'other' "
                "class of thing pixels (COCO: 53 + 1 = 54, Cityscapes: 11 + 1 = 12).".format(
                    head.NUM_CLASSES
                )
            )
        return super().from_config(cfg, input_shape)
