# -*- coding: utf-8 -*-
"""
Bottom-up path augmentation (BPA), Sec. 3.1 of the PANet paper: N2 = P2,
N_{i+1} = conv3x3(conv3x3_stride2(N_i) + P_{i+1}) for i = 2, 3, 4; N6 = max-pool(N5).
"""

import math
import re
import types

import fvcore.nn.weight_init as weight_init
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ...config import PAFPN_ACTIVATIONS
from ...errors import ConfigError, check_choice
from ..scripting import add_scripting_lists, scriptable_copy
from ..validation import check_in_features, check_norm

__all__ = ["PAFPN", "build_resnet_pafpn_backbone"]


class PAFPN(FPN):
    """
    FPN followed by PANet's bottom-up path augmentation.

    It is Detectron2's :class:`FPN` (same parameters, same names: a Detectron2 FPN checkpoint loads
    into it) plus, for every level above the lowest, two new 3x3 convs:

    * ``bpa_down{k}``: 3x3, stride 2, from N_{k-1} to the resolution of P_k;
    * ``bpa_out{k}``: 3x3, stride 1, on the sum with P_k, giving N_k.

    The outputs keep FPN's names ("p2" ... "p6"), strides and channels, so that every Detectron2
    head and config key (RPN.IN_FEATURES, ROI_HEADS.IN_FEATURES, SEM_SEG_HEAD.IN_FEATURES) works on
    it unchanged; the tensors under those names are the augmented maps N2 ... N6.
    """

    _SCRIPTING_LISTS = ("lateral_convs", "output_convs", "bpa_down_convs", "bpa_output_convs")

    def __init__(
        self,
        bottom_up,
        in_features,
        out_channels,
        *,
        bpa_norm="",
        bpa_activation="relu",
        bpa_conv_bias=False,
        **fpn_kwargs,
    ):
        """
        Args:
            bottom_up, in_features, out_channels: see :class:`detectron2.modeling.backbone.fpn.FPN`.
            fpn_kwargs: ``norm``, ``top_block``, ``fuse_type``, ``square_pad`` of
                :class:`detectron2.modeling.backbone.fpn.FPN`, by keyword. ``top_block`` (e.g.
                :class:`LastLevelMaxPool`) is applied to the augmented top level (N5) when its
                ``in_feature`` is a pyramid level, and to the bottom-up feature otherwise.
            bpa_norm (str): norm after each new conv: "" (none), "GN", "BN", "SyncBN", ...
            bpa_activation (str): "relu" (paper: every conv is followed by a ReLU), "none"
                (mmdetection's PAFPN) or "relu_if_norm" (the authors' release: a ReLU only when
                ``bpa_norm`` is set).
            bpa_conv_bias (bool): a bias on each new conv even when ``bpa_norm`` follows it
                (the authors' release); False: a bias only without a norm (Detectron2's rule).
        """
        super().__init__(bottom_up, in_features, out_channels, **fpn_kwargs)
        check_norm("MODEL.PAFPN.NORM", bpa_norm)
        check_choice("MODEL.PAFPN.ACTIVATION", bpa_activation, PAFPN_ACTIVATIONS)
        use_relu = bpa_activation == "relu" or (bpa_activation == "relu_if_norm" and bpa_norm)
        if not isinstance(bpa_conv_bias, bool):
            raise ConfigError(
                f"Invalid config value MODEL.PAFPN.CONV_BIAS={bpa_conv_bias!r}; allowed: True (a "
                "bias on every new conv, as released) or False (a bias only without a norm)."
            )
        use_bias = bpa_conv_bias or not bpa_norm

        strides = [bottom_up.output_shape()[f].stride for f in in_features]
        # Pyramid levels fed by the backbone, low to high resolution, e.g. ["p2", "p3", "p4", "p5"].
        self._pyramid_features = ["p{}".format(int(math.log2(s))) for s in strides]
        self.bpa_down_convs = []
        self.bpa_output_convs = []
        for name in self._pyramid_features[1:]:
            stage = int(name[1:])
            # the 3x3 stride-2 conv to the next level, and the 3x3 conv after the sum
            down, output = (
                Conv2d(
                    out_channels,
                    out_channels,
                    kernel_size=3,
                    stride=stride,
                    padding=1,
                    bias=use_bias,
                    norm=get_norm(bpa_norm, out_channels),
                    activation=nn.ReLU() if use_relu else None,
                )
                for stride in (2, 1)
            )
            weight_init.c2_xavier_fill(down)
            weight_init.c2_xavier_fill(output)
            self.add_module("bpa_down{}".format(stage), down)
            self.add_module("bpa_out{}".format(stage), output)
            self.bpa_down_convs.append(down)
            self.bpa_output_convs.append(output)
        add_scripting_lists(self, self._SCRIPTING_LISTS)

    # UPSTREAM-WORKAROUND fpn-forward-code-object: torch 2.14 TorchScript, Detectron2 0.6 FPN.
    # Detectron2's FPN.forward (its code object, not a copy of its source) as a method of another
    # name: TorchScript compiles no ``super().forward()``, and compiles a method by its __name__.
    _fpn_forward = types.FunctionType(
        FPN.forward.__code__, FPN.forward.__globals__, "_fpn_forward", FPN.forward.__defaults__
    )

    def __prepare_scriptable__(self):
        """
        The copy that ``torch.jit.script`` compiles: the Python lists of convs (FPN's and the
        bottom-up path's) as ModuleLists, as Detectron2 prepares its FPN for scripting (so the
        scripted model's parameter names differ from the eager ones, as Detectron2's do).
        """
        return scriptable_copy(
            self,
            self._SCRIPTING_LISTS,
            [
                n
                for n in self._modules
                if re.match(r"(fpn_lateral|fpn_output|bpa_down|bpa_out)\d+$", n)
            ],
        )

    def forward(self, x):
        """
        Args:
            x (Tensor): images, shape (N, 3, H, W), H and W divisible by ``size_divisibility``.

        Returns:
            dict[str->Tensor]: "p2" ... "p6" holding N2 ... N6, each (N, out_channels, H/s, W/s).
        """
        fpn = self._fpn_forward(x)  # Detectron2's FPN: P2 ... P5 (and P6 from P5)
        names = self._pyramid_features
        n = fpn[names[0]]  # N2 is P2, untouched
        results = {names[0]: n}
        # (indexing and zip over ModuleLists only: what TorchScript compiles)
        for k, (down, output) in enumerate(zip(self.bpa_down_convs, self.bpa_output_convs)):
            n = output(down(n) + fpn[names[k + 1]])
            results[names[k + 1]] = n
        extra_names = self._out_features[len(names) :]
        if self.top_block is not None:
            if self.top_block.in_feature in results:
                # N6 = max-pool(N5), as FPN's P6 comes from P5.
                extra = self.top_block(results[self.top_block.in_feature])
                for name, value in zip(extra_names, extra):
                    results[name] = value
            else:  # the top block reads a bottom-up feature (e.g. "res5"): FPN computed it already
                for name in extra_names:
                    results[name] = fpn[name]
        return {f: results[f] for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_resnet_pafpn_backbone(cfg, input_shape: ShapeSpec):
    """
    ResNet + FPN + bottom-up path augmentation: :func:`build_resnet_fpn_backbone` with the PAFPN
    neck. Configured by MODEL.FPN.* (the FPN part) and MODEL.PAFPN.* (the new layers).

    Returns:
        PAFPN: a :class:`Backbone` with outputs "p2" ... "p6" (N2 ... N6).
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    check_in_features(
        "MODEL.FPN.IN_FEATURES", cfg.MODEL.FPN.IN_FEATURES, bottom_up.output_shape(), "the ResNet"
    )
    return PAFPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        bpa_norm=cfg.MODEL.PAFPN.NORM,
        bpa_activation=cfg.MODEL.PAFPN.ACTIVATION,
        bpa_conv_bias=cfg.MODEL.PAFPN.CONV_BIAS,
    )
