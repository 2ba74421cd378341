"""Meta-architectures: panoptic PANet (registered with Detectron2's ``META_ARCH_REGISTRY``)."""

from .panoptic_panet import PanopticPANet
