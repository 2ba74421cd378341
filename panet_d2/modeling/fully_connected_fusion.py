"""Fully-connected fusion (FF), Sec. 3.3 of the PANet paper (docs/design.md)."""

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm

from ..config import FF_FC_INITS, FF_FUSE_TYPES
from ..errors import ConfigError, check_choice


class FullyConnectedFusion(nn.Module):
    """The mask branch's fc path (``conv1``, ``conv2``: 3x3 + norm + ReLU; ``fc`` to a
    class-agnostic mask_size ** 2 mask), fused with the FCN's mask logits."""

    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        mask_size: int,
        conv_dims=(256, 128),
        conv_norm: str = "",
        fuse_type: str = "sum",
        fc_activation: bool = False,
        fc_init: str = "xavier",
    ):
        """``input_shape``: the FCN feature (C, H, W) it starts from; the others: MODEL.FF.*."""
        super().__init__()
        self.fuse_type = check_choice("MODEL.FF.FUSE_TYPE", fuse_type, FF_FUSE_TYPES)
        check_choice("MODEL.FF.FC_INIT", fc_init, FF_FC_INITS)
        if len(conv_dims) != 2 or any(int(d) <= 0 for d in conv_dims):
            raise ConfigError(
                "MODEL.FF.CONV_DIMS={} must give the channels of exactly 2 convs, each a positive "
                "number (paper: [256, 128]).".format(list(conv_dims))
            )
        self.mask_size, self.fc_activation = mask_size, fc_activation
        in_dim = input_shape.channels
        for k, dim in enumerate(conv_dims):
            norm, act = get_norm(conv_norm, dim), nn.ReLU()
            conv = Conv2d(in_dim, dim, 3, padding=1, bias=not conv_norm, norm=norm, activation=act)
            weight_init.c2_msra_fill(conv)
            self.add_module("conv{}".format(k + 1), conv)
            in_dim = dim
        self.fc = nn.Linear(in_dim * input_shape.height * input_shape.width, mask_size**2)
        if fc_init == "normal":
            nn.init.normal_(self.fc.weight, std=0.01)
            nn.init.constant_(self.fc.bias, 0)
        else:
            weight_init.c2_xavier_fill(self.fc)

    def forward(self, x: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        """(M, C, H, W) features and (M, K, S, S) mask logits -> (M, K, S, S) fused logits."""
        fc_mask = self.fc(self.conv2(self.conv1(x)).flatten(1))
        if self.fc_activation:
            fc_mask = torch.relu(fc_mask)
        fc_mask = fc_mask.view(-1, 1, self.mask_size, self.mask_size)  # class-agnostic
        if self.fuse_type == "sum":
            return mask_logits + fc_mask
        if self.fuse_type == "max":
            return torch.maximum(mask_logits, fc_mask)
        return mask_logits * fc_mask
