# -*- coding: utf-8 -*-
"""Bottom-up path augmentation: structure of the PAFPN backbone against the paper and FPN."""

import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.fpn import FPN

from panet_d2 import PAFPN

from ...common import R18, panet_cfg


def _backbones(opts=()):
    cfg = panet_cfg(opts=R18 + list(opts))
    torch.manual_seed(0)
    pafpn = build_backbone(cfg, ShapeSpec(channels=3))
    cfg_fpn = cfg.clone()
    cfg_fpn.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    fpn = build_backbone(cfg_fpn, ShapeSpec(channels=3))
    # The FPN part of PAFPN is Detectron2's FPN: same parameter names, so its weights load.
    missing, unexpected = fpn.load_state_dict(pafpn.state_dict(), strict=False)
    assert not missing
    assert all(k.startswith("bpa_") for k in unexpected)
    return pafpn.eval(), fpn.eval(), cfg


def test_output_names_strides_channels_match_fpn():
    pafpn, fpn, cfg = _backbones()
    assert isinstance(pafpn, PAFPN) and isinstance(pafpn, FPN)
    shapes = pafpn.output_shape()
    assert list(shapes) == ["p2", "p3", "p4", "p5", "p6"]
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32, 64]
    assert {s.channels for s in shapes.values()} == {256}
    assert shapes == fpn.output_shape()
    assert pafpn.size_divisibility == fpn.size_divisibility == 32
    x = torch.rand(2, 3, 128, 96)
    out = pafpn(x)
    for name, s in shapes.items():
        assert out[name].shape == (2, 256, -(-128 // s.stride), -(-96 // s.stride))


def test_new_layers_are_two_3x3_convs_per_level():
    pafpn, _, _ = _backbones()
    names = sorted(n for n, _ in pafpn.named_children() if n.startswith("bpa_"))
    assert names == ["bpa_down3", "bpa_down4", "bpa_down5", "bpa_out3", "bpa_out4", "bpa_out5"]
    for k in (3, 4, 5):
        down, out = getattr(pafpn, "bpa_down%d" % k), getattr(pafpn, "bpa_out%d" % k)
        assert down.kernel_size == (3, 3) and down.stride == (2, 2)
        assert out.kernel_size == (3, 3) and out.stride == (1, 1)
        assert down.in_channels == down.out_channels == out.out_channels == 256


@torch.no_grad()
def test_paper_equations():
    """N2 = P2; N_{i+1} = ReLU(conv3x3(ReLU(conv3x3_s2(N_i)) + P_{i+1})); N6 = maxpool(N5, 1, 2)."""
    pafpn, fpn, _ = _backbones()
    x = torch.rand(1, 3, 160, 128)
    n, p = pafpn(x), fpn(x)
    assert torch.equal(n["p2"], p["p2"])  # N2 is P2, untouched
    prev = p["p2"]
    for k in (3, 4, 5):
        down, out = getattr(pafpn, "bpa_down%d" % k), getattr(pafpn, "bpa_out%d" % k)
        d = F.relu(F.conv2d(prev, down.weight, down.bias, stride=2, padding=1))
        expected = F.relu(F.conv2d(d + p["p%d" % k], out.weight, out.bias, padding=1))
        torch.testing.assert_close(n["p%d" % k], expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(n["p%d" % k], p["p%d" % k])
        prev = expected
    torch.testing.assert_close(n["p6"], F.max_pool2d(n["p5"], kernel_size=1, stride=2))
    assert (n["p3"] >= 0).all()  # ReLU after every new conv (paper)


@pytest.mark.parametrize(
    "activation,norm,relu",
    [
        ("relu", "", True),
        ("none", "", False),
        ("relu_if_norm", "", False),
        ("relu_if_norm", "GN", True),
    ],
)
def test_activation_options(activation, norm, relu):
    pafpn, _, _ = _backbones(["MODEL.PAFPN.ACTIVATION", activation, "MODEL.PAFPN.NORM", norm])
    for k in (3, 4, 5):
        conv = getattr(pafpn, "bpa_out%d" % k)
        assert (conv.activation is not None) == relu
        if norm == "GN":
            assert isinstance(conv.norm, torch.nn.GroupNorm) and conv.bias is None


@pytest.mark.parametrize(
    "norm,cls", [("BN", torch.nn.BatchNorm2d), ("SyncBN", torch.nn.SyncBatchNorm)]
)
def test_norm_options(norm, cls):
    pafpn, _, _ = _backbones(["MODEL.PAFPN.NORM", norm])
    assert isinstance(pafpn.bpa_down3.norm, cls)
    assert isinstance(pafpn.bpa_out5.norm, cls)


@pytest.mark.parametrize(
    "key,value", [("MODEL.PAFPN.NORM", "LayerNormX"), ("MODEL.PAFPN.ACTIVATION", "gelu")]
)
def test_bad_values_name_key_value_and_choices(key, value):
    with pytest.raises(ValueError) as e:
        _backbones([key, value])
    msg = str(e.value)
    assert key in msg and repr(value) in msg and "allowed" in msg
