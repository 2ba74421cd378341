"""PANet's box head: Detectron2's conv/fc box head with adaptive feature pooling."""

from typing import List

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

from ..config import AFP_FUSE_POSITIONS, AFP_FUSE_TYPES
from ..errors import ConfigError, check_choice, check_norm
from .layers import AFPConv2d, AFPLinear, fuse_levels


class NormLinear(nn.Linear):
    """``nn.Linear`` (same parameters) followed by a norm ``norm`` on (M, out_features, 1, 1)."""

    def __init__(self, in_features: int, out_features: int, norm):
        super().__init__(in_features, out_features)
        self.norm = get_norm(norm, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.linear(x, self.weight, self.bias)[:, :, None, None]).flatten(1)


@ROI_BOX_HEAD_REGISTRY.register()
class PANetConvFCHead(FastRCNNConvFCHead):
    """:class:`FastRCNNConvFCHead` taking AFP's level-stacked grids; with ``num_levels == 1`` and
    no ``fc_norm`` exactly Detectron2's head."""

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
        """As :class:`FastRCNNConvFCHead` (``input_shape``: one level's grid), plus ``fc_norm`` (a
        norm after every fc), ``num_levels`` (L, 1 without AFP) and MODEL.AFP's fusion."""
        if not conv_dims and not fc_dims:  # Detectron2's head asserts it, without a message
            raise ConfigError(
                "MODEL.ROI_BOX_HEAD.NUM_CONV=0 and NUM_FC=0: the box head needs at least one "
                "layer (PANet: NUM_FC 2; its heavier head: NUM_CONV 4, NUM_FC 1)."
            )
        super().__init__(input_shape, conv_dims=conv_dims, fc_dims=fc_dims, conv_norm=conv_norm)
        check_choice("MODEL.AFP.BOX_FUSE_POSITION", fuse_position, AFP_FUSE_POSITIONS)
        check_norm("MODEL.ROI_BOX_HEAD.FC_NORM", fc_norm)
        self.num_levels = num_levels
        self.fuse_type = check_choice("MODEL.AFP.FUSE_TYPE", fuse_type, AFP_FUSE_TYPES)
        self.fuse_position = fuse_position
        self.per_level_first_layer = num_levels > 1 and fuse_position == "after_first_layer"
        if fc_norm:
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
                C * H * W, fc_dims[0], num_levels, norm=fc_norm, fuse_type=fuse_type
            )
            self.fcs[0] = self.fc1
            self.fc_relu1 = nn.Identity()  # the ReLU is inside AFPLinear, before the fusion

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret, afp = super().from_config(cfg, input_shape), cfg.MODEL.AFP
        ret.update(
            fc_norm=cfg.MODEL.ROI_BOX_HEAD.FC_NORM,
            num_levels=len(cfg.MODEL.ROI_HEADS.IN_FEATURES) if afp.ENABLED else 1,
            fuse_type=afp.FUSE_TYPE,
            fuse_position=afp.BOX_FUSE_POSITION,
        )
        return ret

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C, H, W) pooled grids, or (M, L, C, H, W) with AFP -> (M, FC_DIM) box features."""
        if self.num_levels > 1 and not self.per_level_first_layer:
            x = fuse_levels(x, self.fuse_type)
        for layer in self:
            x = layer(x)
        return x
