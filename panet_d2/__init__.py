# -*- coding: utf-8 -*-
"""
PANet (Path Aggregation Network, CVPR 2018) and panoptic PANet as a Detectron2 project.

Importing this package registers every component with Detectron2's registries.
"""
from .config import add_panet_config
from .bottom_up_path import PAFPN, build_resnet_pafpn_backbone
from .adaptive_feature_pooling import AdaptiveFeaturePooler, AFPConv2d, AFPLinear
from .fully_connected_fusion import FullyConnectedFusion
from .box_head import PANetConvFCHead
from .mask_head import PANetMaskHead
from .roi_heads import PANetROIHeads
from .checkpoint import PANetCheckpointer
from .semantic_head import PANetSemSegHead
from .panoptic_merge import PanopticMerge, combine_semantic_and_instance_outputs
from .panoptic import PanopticPANet

from . import data as _  # only registration (datasets)

__version__ = "0.1.0"
