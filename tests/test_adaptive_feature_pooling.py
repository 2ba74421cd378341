# -*- coding: utf-8 -*-
"""Adaptive feature pooling: all-level pooling, per-level first layers and fusion."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.structures import Boxes

from panet_d2 import AdaptiveFeaturePooler, AFPConv2d, AFPLinear, PANetConvFCHead
from panet_d2.modeling.adaptive_feature_pooling import expand_single_level_weights

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def _features(n=2, c=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, c, size // 2**i, size // 2**i, generator=g) for i in range(4)]


def _boxes():
    return [
        Boxes(torch.tensor([[0.0, 0.0, 30.0, 40.0], [100.0, 50.0, 250.0, 240.0], [5.0, 5.0, 12.0, 9.0]])),
        Boxes(torch.tensor([[20.0, 30.0, 200.0, 60.0]])),
    ]


def test_pooler_pools_every_box_from_every_level():
    x, boxes = _features(), _boxes()
    afp = AdaptiveFeaturePooler(7, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    out = afp(x, boxes)
    assert out.shape == (4, 4, 8, 7, 7)  # (M, L, C, H, W)
    for level, scale in enumerate(SCALES):
        # Detectron2's single-level pooler on that level is the independent reference.
        single = ROIPooler(7, (scale,), sampling_ratio=0, pooler_type="ROIAlignV2")
        torch.testing.assert_close(out[:, level], single([x[level]], boxes))


def test_pooler_is_one_roialign_call_per_level(monkeypatch):
    calls = []
    afp = AdaptiveFeaturePooler(7, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    for p in afp.level_poolers:
        orig = p.forward
        monkeypatch.setattr(p, "forward", lambda f, b, orig=orig: calls.append(len(b)) or orig(f, b))
    afp(_features(), _boxes())
    assert calls == [4, 4, 4, 4]  # all boxes of the batch in each call


def test_pooler_no_boxes():
    afp = AdaptiveFeaturePooler(14, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    x = _features()
    assert afp(x, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]).shape == (0, 4, 8, 14, 14)


@pytest.mark.parametrize("fuse", ["max", "sum"])
@pytest.mark.parametrize("norm", ["", "GN", "BN"])
def test_per_level_conv_equals_separate_convs(fuse, norm):
    torch.manual_seed(0)
    L, C, O = 4, 32, 32
    layer = AFPConv2d(C, O, L, norm=norm, fuse_type=fuse).train()
    x = torch.randn(5, L, C, 6, 6)
    y = layer(x)
    assert y.shape == (5, O, 6, 6)
    per_level = []
    for l in range(L):
        w = layer.weight[l * O : (l + 1) * O]
        b = layer.bias[l * O : (l + 1) * O] if layer.bias is not None else None
        z = F.conv2d(x[:, l], w, b, padding=1)
        if norm == "GN":  # GroupNorm(32 groups) of that level alone
            z = F.group_norm(z, 32, layer.norm.weight[l * O : (l + 1) * O], layer.norm.bias[l * O : (l + 1) * O])
        elif norm == "BN":  # batch statistics of that level alone
            z = F.batch_norm(z, None, None, layer.norm.weight[l * O : (l + 1) * O],
                             layer.norm.bias[l * O : (l + 1) * O], training=True)
        per_level.append(F.relu(z))
    stacked = torch.stack(per_level)
    expected = stacked.amax(0) if fuse == "max" else stacked.sum(0)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fuse", ["max", "sum"])
def test_per_level_linear_equals_separate_fcs(fuse):
    torch.manual_seed(0)
    layer = AFPLinear(50, 16, 4, fuse_type=fuse)
    x = torch.randn(7, 4, 50)
    stacked = torch.stack([F.relu(F.linear(x[:, l], layer.weight[l], layer.bias[l])) for l in range(4)])
    expected = stacked.amax(0) if fuse == "max" else stacked.sum(0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    assert layer(x[:0]).shape == (0, 16)


def test_per_level_weights_are_separate_and_all_get_gradients():
    torch.manual_seed(0)
    layer = AFPLinear(20, 8, 4, fuse_type="max")
    layer(torch.randn(64, 4, 20)).sum().backward()
    for l in range(4):
        assert layer.weight.grad[l].abs().sum() > 0


def test_box_head_fuse_after_fc1_vs_before():
    torch.manual_seed(0)
    shape = ShapeSpec(channels=8, height=7, width=7)
    x = torch.randn(3, 4, 8, 7, 7)
    after = PANetConvFCHead(shape, conv_dims=[], fc_dims=[32, 32], num_levels=4)
    assert isinstance(after.fc1, AFPLinear) and after.fc1.weight.shape == (4, 32, 8 * 49)
    assert after(x).shape == (3, 32)
    # "fu.fc1fc2": fuse the grids, then exactly Detectron2's head.
    before = PANetConvFCHead(shape, conv_dims=[], fc_dims=[32, 32], num_levels=4,
                             fuse_position="before_first_layer", fuse_type="sum")
    d2 = FastRCNNConvFCHead(shape, conv_dims=[], fc_dims=[32, 32])
    d2.load_state_dict(before.state_dict())
    torch.testing.assert_close(before(x), d2(x.sum(1)))


def test_heavier_head_has_per_level_conv1_then_shared_convs_and_one_fc():
    shape = ShapeSpec(channels=16, height=7, width=7)
    head = PANetConvFCHead(shape, conv_dims=[32] * 4, fc_dims=[64], conv_norm="GN", num_levels=4)
    assert isinstance(head.conv1, AFPConv2d) and head.conv1.weight.shape == (4 * 32, 16, 3, 3)
    assert isinstance(head.conv1.norm, torch.nn.GroupNorm) and head.conv1.norm.num_groups == 4 * 32
    assert not isinstance(head.conv2, AFPConv2d)
    assert [n for n, _ in head.named_children() if n.startswith("fc") and n[2:].isdigit()] == ["fc1"]
    assert head(torch.randn(2, 4, 16, 7, 7)).shape == (2, 64)


def test_warm_start_replicates_single_level_weights():
    layer_conv = AFPConv2d(8, 16, 4)
    layer_fc = AFPLinear(10, 6, 4)
    model = torch.nn.ModuleDict({"conv": layer_conv, "fc": layer_fc})
    w_conv, b_conv = torch.randn(16, 8, 3, 3), torch.randn(16)
    w_fc, b_fc = torch.randn(6, 10), torch.randn(6)
    sd = {"conv.weight": w_conv, "conv.bias": b_conv, "fc.weight": w_fc, "fc.bias": b_fc}
    replicated = expand_single_level_weights(model, sd)
    assert sorted(replicated) == ["conv.bias", "conv.weight", "fc.bias", "fc.weight"]
    model.load_state_dict(sd)
    for l in range(4):
        assert torch.equal(layer_conv.weight[l * 16 : (l + 1) * 16], w_conv)
        assert torch.equal(layer_fc.weight[l], w_fc) and torch.equal(layer_fc.bias[l], b_fc)
    # A plain load_state_dict of a single-level state dict warm-starts too.
    model2 = torch.nn.ModuleDict({"conv": AFPConv2d(8, 16, 4), "fc": AFPLinear(10, 6, 4)})
    model2.load_state_dict({"conv.weight": w_conv, "conv.bias": b_conv, "fc.weight": w_fc, "fc.bias": b_fc})
    assert torch.equal(model2["fc"].weight[3], w_fc)


@pytest.mark.parametrize("kwargs", [dict(fuse_type="mean"), dict(norm="XN")])
def test_bad_values(kwargs):
    with pytest.raises(ValueError) as e:
        AFPConv2d(8, 8, 4, **kwargs)
    assert repr(list(kwargs.values())[0]) in str(e.value) and "allowed" in str(e.value)
