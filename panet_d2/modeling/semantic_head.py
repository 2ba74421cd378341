"""The semantic branch of Panoptic FPN (Kirillov et al., CVPR 2019) on PANet's augmented pyramid."""

from typing import Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.meta_arch.semantic_seg import SEM_SEG_HEADS_REGISTRY, SemSegFPNHead

from ..errors import ConfigError, check_in_features, check_norm
from .scripting import add_scripting_lists, scriptable_copy


@SEM_SEG_HEADS_REGISTRY.register()
class PANetSemSegHead(SemSegFPNHead):
    """Detectron2's :class:`SemSegFPNHead` (Panoptic FPN's semantic branch), its config checked and
    scriptable: features -> (N, NUM_CLASSES, H, W) logits and {"loss_sem_seg"} in training."""

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head, src = cfg.MODEL.SEM_SEG_HEAD, "the backbone " + cfg.MODEL.BACKBONE.NAME
        check_in_features("MODEL.SEM_SEG_HEAD.IN_FEATURES", head.IN_FEATURES, input_shape, src)
        check_norm("MODEL.SEM_SEG_HEAD.NORM", head.NORM)
        if not isinstance(head.NUM_CLASSES, int) or head.NUM_CLASSES < 2:
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={head.NUM_CLASSES!r}: must count the stuff classes"
                " and the 'other' class of thing pixels, >= 2 (COCO: 53 + 1, Cityscapes: 11 + 1)."
            )
        if not isinstance(head.IGNORE_VALUE, int) or 0 <= head.IGNORE_VALUE < head.NUM_CLASSES:
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE={head.IGNORE_VALUE!r}: the void pixels' label, "
                f"an integer outside the classes 0..{head.NUM_CLASSES - 1} (default 255)."
            )
        finest, stride = min(input_shape[f].stride for f in head.IN_FEATURES), head.COMMON_STRIDE
        if not 1 <= stride <= finest or stride & (stride - 1):
            raise ConfigError(
                f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE={stride!r}: must be a power of 2 up to {finest},"
                " the finest stride of MODEL.SEM_SEG_HEAD.IN_FEATURES."
            )
        return super().from_config(cfg, input_shape)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # the ReLU as a module (TorchScript holds no function as an attribute); same state_dict
        for module in self.modules():
            if isinstance(module, Conv2d) and module.activation is F.relu:
                module.activation = nn.ReLU()
        add_scripting_lists(self, ["scale_heads"])

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        """As :meth:`SemSegFPNHead.forward`; the TorchScript-compiled head runs :meth:`_logits`."""
        if torch.jit.is_scripting():
            no_losses: Dict[str, torch.Tensor] = {}
            return self._logits(features), no_losses
        return super().forward(features, targets)

    def _logits(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The inference of :meth:`SemSegFPNHead.forward` as TorchScript compiles it."""
        x = features[self.in_features[0]]
        for k, head in enumerate(self.scale_heads):  # TorchScript unrolls a ModuleList
            y = head(features[self.in_features[k]])
            x = y if k == 0 else x + y
        x, scale = self.predictor(x), float(self.common_stride)
        return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)

    def __prepare_scriptable__(self):
        return scriptable_copy(self, ["scale_heads"], self.in_features)
