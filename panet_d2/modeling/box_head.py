# -*- coding: utf-8 -*-
"""
The box head of PANet: Detectron2's conv/fc box head with adaptive feature pooling (per-level
first layer, fusion, then the shared layers; the 2fc head and the heavier head of Table 3).
"""

from typing import List

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

from ..config import AFP_FUSE_POSITIONS, AFP_FUSE_TYPES
from ..errors import check_choice
from .layers import AFPConv2d, AFPLinear, fuse_levels
from .validation import check_norm

__all__ = ["PANetConvFCHead", "NormLinear"]


class NormLinear(nn.Linear):
    """
    ``nn.Linear`` followed by a norm (as Detectron2's ``Conv2d`` takes one): parameters
    ``weight``, ``bias`` like ``nn.Linear`` (a Detectron2 fc warm-starts it), norm under ``norm``.
    Input (M, in_features), output (M, out_features); the norm sees (M, out_features, 1, 1).
    """

    def __init__(self, in_features: int, out_features: int, norm):
        super().__init__(in_features, out_features)
        self.norm = get_norm(norm, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return self.norm(y[:, :, None, None]).flatten(1)


@ROI_BOX_HEAD_REGISTRY.register()
class PANetConvFCHead(FastRCNNConvFCHead):
    """
    :class:`FastRCNNConvFCHead` whose input may be the level-stacked grids of adaptive feature
    pooling. With ``num_levels == 1`` it is exactly Detectron2's head (same layers, same names).
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: List[int],
        fc_dims: List[int],
        conv_norm="",
        fc_norm="",
        num_levels: int = 1,
        fuse_type: str = "max",
        fuse_position: str = "after_first_layer",
    ):
        """
        Args:
            input_shape, conv_dims, fc_dims, conv_norm: see :class:`FastRCNNConvFCHead`.
                ``input_shape`` is the shape of ONE level's pooled grid (C, H, W).
            fc_norm (str or callable): norm after every fc of the head (the per-level fc1
                included): "" (none, Detectron2's head), or a norm of Detectron2's ``get_norm``;
                the paper's MBN uses SyncBN, the authors' release GN.
            num_levels (int): 1 without AFP; else the number of pooled levels L, and the input of
                :meth:`forward` is (M, L, C, H, W).
            fuse_type (str): "max" or "sum".
            fuse_position (str): "after_first_layer" (paper: per-level first layer, then fusion)
                or "before_first_layer" (fuse the RoIAlign grids, then a shared head).
        """
        super().__init__(input_shape, conv_dims=conv_dims, fc_dims=fc_dims, conv_norm=conv_norm)
        check_choice("MODEL.AFP.FUSE_TYPE", fuse_type, AFP_FUSE_TYPES)
        check_choice("MODEL.AFP.BOX_FUSE_POSITION", fuse_position, AFP_FUSE_POSITIONS)
        check_norm("MODEL.ROI_BOX_HEAD.FC_NORM", fc_norm)
        self.num_levels = num_levels
        self.fuse_type = fuse_type
        self.fuse_position = fuse_position
        self.per_level_first_layer = num_levels > 1 and fuse_position == "after_first_layer"
        if fc_norm:  # MBN: a norm after every fc (Detectron2's fcs have none)
            for k, fc in enumerate(self.fcs):
                normed = NormLinear(fc.in_features, fc.out_features, fc_norm)
                normed.load_state_dict(fc.state_dict(), strict=False)  # same initialisation
                setattr(self, "fc{}".format(k + 1), normed)
                self.fcs[k] = normed
        if not self.per_level_first_layer:
            return
        C, H, W = input_shape.channels, input_shape.height, input_shape.width
        if conv_dims:  # heavier head: conv1 is per level
            self.conv1 = AFPConv2d(C, conv_dims[0], num_levels, norm=conv_norm, fuse_type=fuse_type)
            self.conv_norm_relus[0] = self.conv1
        else:  # 2fc head: fc1 is per level; the grids are flattened level by level
            self.flatten = nn.Flatten(start_dim=2)
            self.fc1 = AFPLinear(
                int(np.prod((C, H, W))), fc_dims[0], num_levels, norm=fc_norm, fuse_type=fuse_type
            )
            self.fcs[0] = self.fc1
            self.fc_relu1 = nn.Identity()  # the ReLU is inside AFPLinear, before the fusion

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        afp = cfg.MODEL.AFP
        ret.update(
            fc_norm=cfg.MODEL.ROI_BOX_HEAD.FC_NORM,
            num_levels=len(cfg.MODEL.ROI_HEADS.IN_FEATURES) if afp.ENABLED else 1,
            fuse_type=afp.FUSE_TYPE,
            fuse_position=afp.BOX_FUSE_POSITION,
        )
        return ret

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): (M, C, H, W) pooled grids, or (M, L, C, H, W) with AFP.

        Returns:
            Tensor: (M, FC_DIM) box features (or (M, C', H, W) for a conv-only head).
        """
        if self.num_levels > 1 and not self.per_level_first_layer:
            x = fuse_levels(x, self.fuse_type)  # "fu.fc1fc2": fuse the RoIAlign grids
        for layer in self:
            x = layer(x)
        return x
