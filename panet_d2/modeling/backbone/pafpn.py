"""Bottom-up path augmentation (BPA), Sec. 3.1 of the PANet paper (docs/design.md)."""

import re
import types

import fvcore.nn.weight_init as weight_init
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ...config import PAFPN_ACTIVATIONS
from ...errors import ConfigError, check_choice, check_finite, check_in_features, check_norm
from ..scripting import add_scripting_lists, scriptable_copy


class PAFPN(FPN):
    """Detectron2's :class:`FPN` (same parameters and names) plus ``bpa_down{k}`` (3x3, stride 2,
    from N_{k-1}) and ``bpa_out{k}`` (3x3, on the sum with P_k); "p2".."p6" hold N2..N6."""

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
        """As :class:`FPN` (a top block on a pyramid level reads N_k), plus MODEL.PAFPN.*."""
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
        # pyramid levels fed by the backbone, finest first, e.g. ["p2", "p3", "p4", "p5"]
        self._pyramid_features = self._out_features[: len(in_features)]
        self.bpa_down_convs, self.bpa_output_convs = [], []
        C = out_channels

        def bpa_conv(s):  # 3x3, stride s (+ norm) (+ ReLU)
            norm, act = get_norm(bpa_norm, C), nn.ReLU() if use_relu else None
            return Conv2d(C, C, 3, stride=s, padding=1, bias=use_bias, norm=norm, activation=act)

        for name in self._pyramid_features[1:]:
            stage = int(name[1:])
            down, output = bpa_conv(2), bpa_conv(1)  # to P_k's resolution; after the sum with P_k
            weight_init.c2_xavier_fill(down)
            weight_init.c2_xavier_fill(output)
            self.add_module("bpa_down{}".format(stage), down)
            self.add_module("bpa_out{}".format(stage), output)
            self.bpa_down_convs.append(down)
            self.bpa_output_convs.append(output)
        add_scripting_lists(self, self._SCRIPTING_LISTS)

    # UPSTREAM-WORKAROUND fpn-forward-code-object: torch 2.14 TorchScript, Detectron2 0.6 FPN.
    # FPN.forward's code object under another name: TorchScript compiles no super().forward().
    _fpn_forward = types.FunctionType(
        FPN.forward.__code__, FPN.forward.__globals__, "_fpn_forward", FPN.forward.__defaults__
    )

    def __prepare_scriptable__(self):
        pattern = r"(fpn_lateral|fpn_output|bpa_down|bpa_out)\d+$"
        named = [n for n in self._modules if re.match(pattern, n)]
        return scriptable_copy(self, self._SCRIPTING_LISTS, named)

    def forward(self, x):
        """(N, 3, H, W) images -> {"p2": N2, ... "p6": N6}, each (N, out_channels, H/s, W/s)."""
        fpn = self._fpn_forward(x)  # P2 ... P6
        names = self._pyramid_features
        n = fpn[names[0]]  # N2 is P2, untouched
        results = {names[0]: n}
        for k, (down, output) in enumerate(zip(self.bpa_down_convs, self.bpa_output_convs)):
            n = output(down(n) + fpn[names[k + 1]])
            results[names[k + 1]] = n
        if self.top_block is not None and self.top_block.in_feature in results:
            extra = self.top_block(results[self.top_block.in_feature])
            for name, value in zip(self._out_features[len(names) :], extra):
                results[name] = value
        # a top block reading a bottom-up feature (e.g. "res5"): FPN computed its outputs already
        results = {f: results[f] if f in results else fpn[f] for f in self._out_features}
        if not self.training:
            for name, feature in results.items():
                check_finite("The backbone's features " + name, feature)
        return results


@BACKBONE_REGISTRY.register()
def build_resnet_pafpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet-FPN backbone with the :class:`PAFPN` neck (MODEL.FPN.*, PAFPN.*)."""
    bottom_up, in_features = build_resnet_backbone(cfg, input_shape), cfg.MODEL.FPN.IN_FEATURES
    shapes, key = bottom_up.output_shape(), "MODEL.FPN.IN_FEATURES"
    check_in_features(key, in_features, shapes, "the ResNet", "the feature pyramid")
    check_choice("MODEL.FPN.FUSE_TYPE", cfg.MODEL.FPN.FUSE_TYPE, ("sum", "avg"))
    return PAFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        bpa_norm=cfg.MODEL.PAFPN.NORM,
        bpa_activation=cfg.MODEL.PAFPN.ACTIVATION,
        bpa_conv_bias=cfg.MODEL.PAFPN.CONV_BIAS,
    )
