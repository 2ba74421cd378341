"""PANet's model parts, registered with Detectron2's registries on import."""

from .backbone import PAFPN, build_resnet_pafpn_backbone
from .box_head import PANetConvFCHead
from .fast_rcnn import PANetFastRCNNOutputLayers
from .fully_connected_fusion import FullyConnectedFusion
from .layers import AFPConv2d, AFPLinear
from .mask_head import PANetMaskHead
from .meta_arch import PanopticPANet
from .poolers import AdaptiveFeaturePooler
from .postprocessing import combine_semantic_and_instance_outputs
from .roi_heads import PANetROIHeads
from .rpn import DetectronAnchorGenerator, PANetRPNHead
from .semantic_head import PANetSemSegHead

__all__ = [k for k in globals().keys() if not k.startswith("_")]
