"""PANet's mask head: Mask R-CNN's head with adaptive feature pooling and fully-connected fusion."""

import math
from typing import List

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead

from ..config import AFP_FUSE_POSITIONS, AFP_FUSE_TYPES, FF_START_LAYERS, MASK_PREDICTOR_INITS
from ..errors import ConfigError, check_choice, check_finite
from .fully_connected_fusion import FullyConnectedFusion
from .layers import AFPConv2d, fuse_levels
from .scripting import add_scripting_lists, scriptable_copy


@ROI_MASK_HEAD_REGISTRY.register()
class PANetMaskHead(MaskRCNNConvUpsampleHead):
    """:class:`MaskRCNNConvUpsampleHead` (same (M, K, 2H, 2W) logits) plus adaptive feature
    pooling and fully-connected fusion; with both off exactly Detectron2's head."""

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        num_classes: int,
        conv_dims: List[int],
        conv_norm="",
        num_levels: int = 1,
        fuse_type: str = "max",
        fuse_position: str = "after_first_layer",
        ff_enabled: bool = False,
        ff_start_layer: int = 3,
        ff_fuse_type: str = "sum",
        ff_conv_dims=(256, 128),
        ff_fc_activation: bool = False,
        ff_fc_init: str = "xavier",
        predictor_init: str = "normal",
        **kwargs,
    ):
        """As :class:`MaskRCNNConvUpsampleHead` (``input_shape``: one level's grid), plus
        ``num_levels`` (L, 1 without AFP), MODEL.AFP's fusion, MODEL.FF.* and PREDICTOR_INIT."""
        super().__init__(
            input_shape, num_classes=num_classes, conv_dims=conv_dims, conv_norm=conv_norm, **kwargs
        )
        check_choice("MODEL.AFP.MASK_FUSE_POSITION", fuse_position, AFP_FUSE_POSITIONS)
        check_choice("MODEL.ROI_MASK_HEAD.PREDICTOR_INIT", predictor_init, MASK_PREDICTOR_INITS)
        if predictor_init == "msra":
            w = self.predictor.weight  # (K, C, k, k); the release adds a background output
            fan_out = (w.shape[0] + (1 if num_classes > 1 else 0)) * w.shape[2] * w.shape[3]
            nn.init.normal_(w, std=math.sqrt(2.0 / fan_out))
        num_conv, self.num_levels = len(conv_dims) - 1, num_levels
        self.fuse_type = check_choice("MODEL.AFP.FUSE_TYPE", fuse_type, AFP_FUSE_TYPES)
        self.per_level_first_layer = num_levels > 1 and fuse_position == "after_first_layer"
        if self.per_level_first_layer:
            if num_conv < 1:
                raise ConfigError(
                    "Adaptive feature pooling after the first layer needs a mask head with at "
                    "least one conv, got MODEL.ROI_MASK_HEAD.NUM_CONV={}".format(num_conv)
                )
            self.mask_fcn1 = AFPConv2d(
                input_shape.channels, conv_dims[0], num_levels, norm=conv_norm, fuse_type=fuse_type
            )
            self.conv_norm_relus[0] = self.mask_fcn1
        self.ff_start_layer, self.fc_fusion = ff_start_layer if ff_enabled else 0, None
        if ff_enabled:
            check_choice("MODEL.FF.START_LAYER", ff_start_layer, FF_START_LAYERS)
            if ff_start_layer > num_conv:  # the fc path branches off after conv<START_LAYER>
                raise ConfigError(
                    f"MODEL.FF.START_LAYER={ff_start_layer} needs a mask head of {ff_start_layer} "
                    f"convs or more, not MODEL.ROI_MASK_HEAD.NUM_CONV={num_conv}: raise NUM_CONV, "
                    "lower START_LAYER (2 to 4) or set MODEL.FF.ENABLED False."
                )
            H, W = input_shape.height, input_shape.width
            self.fc_fusion = FullyConnectedFusion(
                ShapeSpec(channels=conv_dims[ff_start_layer - 1], height=H, width=W),
                mask_size=2 * H,  # the deconv doubles the resolution
                conv_dims=ff_conv_dims,
                conv_norm=conv_norm,
                fuse_type=ff_fuse_type,
                fc_activation=ff_fc_activation,
                fc_init=ff_fc_init,
            )
        add_scripting_lists(self, ["conv_norm_relus"])

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        afp, ff = cfg.MODEL.AFP, cfg.MODEL.FF
        ret.update(
            num_levels=len(cfg.MODEL.ROI_HEADS.IN_FEATURES) if afp.ENABLED else 1,
            fuse_type=afp.FUSE_TYPE,
            fuse_position=afp.MASK_FUSE_POSITION,
            ff_enabled=ff.ENABLED,
            ff_start_layer=ff.START_LAYER,
            ff_fuse_type=ff.FUSE_TYPE,
            ff_conv_dims=tuple(ff.CONV_DIMS),
            ff_fc_activation=ff.FC_ACTIVATION,
            ff_fc_init=ff.FC_INIT,
            predictor_init=cfg.MODEL.ROI_MASK_HEAD.PREDICTOR_INIT,
        )
        return ret

    def layers(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C, H, W) pooled grids, or (M, L, C, H, W) with AFP -> (M, K, 2H, 2W) logits."""
        if self.num_levels > 1 and not self.per_level_first_layer:
            x = fuse_levels(x, self.fuse_type)
        ff_input = x
        for k, conv in enumerate(self.conv_norm_relus):
            x = conv(x)
            if k + 1 == self.ff_start_layer:
                ff_input = x
        x = self.predictor(self.deconv_relu(self.deconv(x)))
        if self.fc_fusion is not None:
            x = self.fc_fusion(ff_input, x)
        if not self.training:
            check_finite("The mask head's logits", x)
        return x

    def __prepare_scriptable__(self):
        names = ["mask_fcn{}".format(k + 1) for k in range(len(self.conv_norm_relus))]
        return scriptable_copy(self, ["conv_norm_relus"], names)
