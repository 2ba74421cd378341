# -*- coding: utf-8 -*-
"""Meta-architectures: panoptic PANet (registered with Detectron2's ``META_ARCH_REGISTRY``)."""

from .panoptic_panet import PanopticPANet

__all__ = [k for k in globals().keys() if not k.startswith("_")]
