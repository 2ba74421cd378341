# -*- coding: utf-8 -*-
"""Adaptive feature pooling: all-level pooling, per-level first layers and fusion."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.layers.batch_norm import LayerNorm
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.structures import Boxes

from panet_d2 import AdaptiveFeaturePooler, AFPConv2d, AFPLinear, PANetConvFCHead
from panet_d2.modeling.poolers import multilevel_roi_align

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def _features(n=2, c=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, c, size // 2**i, size // 2**i, generator=g) for i in range(4)]


def _boxes():
    return [
        Boxes(
            torch.tensor(
                [[0.0, 0.0, 30.0, 40.0], [100.0, 50.0, 250.0, 240.0], [5.0, 5.0, 12.0, 9.0]]
            )
        ),
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
        monkeypatch.setattr(
            p, "forward", lambda f, b, orig=orig: calls.append(len(b)) or orig(f, b)
        )
    afp(_features(), _boxes())
    assert calls == [4, 4, 4, 4]  # all boxes of the batch in each call


def test_pooler_no_boxes():
    afp = AdaptiveFeaturePooler(14, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    x = _features()
    assert afp(x, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))]).shape == (0, 4, 8, 14, 14)


def _tv_roi_align_per_level(x, rois, output_size, ratio, aligned):
    """The independent reference: torchvision's RoIAlign, one call per level, stacked."""
    return torch.stack(
        [roi_align(f, rois, output_size, s, ratio, aligned) for f, s in zip(x, SCALES)], dim=1
    )


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [1, 2, 3])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (5, 3)])
def test_multilevel_roi_align_equals_torchvision_values_and_gradients(aligned, ratio, output_size):
    # float64, boxes partly outside the image, sub-pixel boxes, both images of the batch
    g = torch.Generator().manual_seed(1)
    x = [f.double().requires_grad_() for f in _features(n=2, c=3, size=64)]
    xy = torch.rand(40, 2, generator=g, dtype=torch.float64) * 300 - 30
    wh = torch.rand(40, 2, generator=g, dtype=torch.float64) * 200 + 0.3
    rois = torch.cat([torch.arange(40).remainder(2)[:, None].double(), xy, xy + wh], dim=1)
    ours = multilevel_roi_align(x, rois, list(SCALES), output_size, ratio, aligned)
    ref = _tv_roi_align_per_level(x, rois, output_size, ratio, aligned)
    assert ours.shape == (40, 4, 3) + output_size
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(ours, x, grad), torch.autograd.grad(ref, x, grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _rois(n, seed, size=300):
    """n boxes over both images of the batch, partly outside the image, some sub-pixel."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size - 30
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 200 + 0.3
    return torch.cat([torch.arange(n).remainder(2)[:, None].double(), xy, xy + wh], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
def test_multilevel_roi_align_scripted_and_traced_equals_torchvision(aligned):
    # What exported graphs hold: the op compiled by TorchScript, and traced on one image size and
    # number of boxes, then run on others; values and gradients against torchvision's op.
    args = (list(SCALES), (7, 5), 2, aligned)
    scripted = torch.jit.script(multilevel_roi_align)

    class Wrap(torch.nn.Module):
        def forward(self, a, b, c, d, rois):
            return multilevel_roi_align([a, b, c, d], rois, *args)

    x = [f.double() for f in _features(n=2, c=3, size=64, seed=2)]
    traced = torch.jit.trace(Wrap(), (*x, _rois(6, 3)), check_trace=False)
    g = torch.Generator().manual_seed(4)
    for size, n in ((64, 40), (96, 25)):
        x = [f.double().requires_grad_() for f in _features(n=2, c=3, size=size, seed=size)]
        rois = _rois(n, seed=n, size=size * 5)
        ref = _tv_roi_align_per_level(x, rois, (7, 5), 2, aligned)
        grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        ref_grads = torch.autograd.grad(ref, x, grad)
        for out in (scripted(x, rois, *args), traced(*x, rois)):
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
            for a, b in zip(torch.autograd.grad(out, x, grad), ref_grads):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


class _PoolerOf4(torch.nn.Module):
    """The pooler on 4 feature maps and one image's boxes: tensors in, tensor out."""

    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, a, b, c, d, boxes):
        return self.pooler([a, b, c, d], [Boxes(boxes)])


def test_pooler_pools_all_levels_at_once_eager_scripted_and_traced_on_cpu(monkeypatch):
    afp = AdaptiveFeaturePooler(7, SCALES, sampling_ratio=2, pooler_type="ROIAlignV2")
    x, boxes = _features(), _boxes()
    scripted = torch.jit.script(_PoolerOf4(afp))
    x1 = [f[:1] for f in _features(size=64, seed=5)]
    traced = torch.jit.trace(_PoolerOf4(afp), (*x1, boxes[0].tensor), check_trace=False)
    calls = []
    for p in afp.level_poolers:
        orig = p.forward
        monkeypatch.setattr(p, "forward", lambda f, b, orig=orig: calls.append(1) or orig(f, b))
    eager = afp(x, boxes)
    assert calls == []  # one batched op, no per-level RoIAlign
    ref = torch.stack(
        [ROIPooler(7, (s,), 2, "ROIAlignV2")([f], boxes) for f, s in zip(x, SCALES)], dim=1
    )
    torch.testing.assert_close(eager, ref)
    # the traced graph holds the batched op alone; the scripted one decides by device at run time
    assert "embedding_bag" in str(scripted.inlined_graph)
    assert "embedding_bag" in str(traced.inlined_graph)
    assert "torchvision::roi_align" not in str(traced.inlined_graph)
    # another image size and number of boxes than traced
    x2 = [f[1:] for f in _features(size=96, seed=6)]
    b2 = torch.tensor([[3.0, 7.0, 90.0, 60.0], [40.0, 2.0, 41.0, 95.0], [0.0, 0.0, 96.0, 96.0]])
    expected = afp(x2, [Boxes(b2)])
    assert torch.equal(traced(*x2, b2), expected) and torch.equal(scripted(*x2, b2), expected)
    assert traced(*x2, b2[:0]).shape == (0, 4, 8, 7, 7)


def test_pooler_bounds_the_batched_ops_memory(monkeypatch):
    # the batched op holds every bilinear tap: 4 levels x 4 boxes x 7 x 7 bins x 2 x 2 samples x 4
    # taps = 12544; above max_taps (memory) torchvision's op on each level pools, same values
    afp = AdaptiveFeaturePooler(7, SCALES, sampling_ratio=2, pooler_type="ROIAlignV2")
    calls = []
    for p in afp.level_poolers:
        orig = p.forward
        monkeypatch.setattr(p, "forward", lambda f, b, orig=orig: calls.append(1) or orig(f, b))
    x, boxes = _features(), _boxes()
    ref = torch.stack(
        [ROIPooler(7, (s,), 2, "ROIAlignV2")([f], boxes) for f, s in zip(x, SCALES)], dim=1
    )
    for bound, per_level in ((4 * 4 * 49 * 2 * 2 * 4, []), (4 * 4 * 49 * 2 * 2 * 4 - 1, [1] * 4)):
        afp.max_taps = bound
        calls.clear()
        torch.testing.assert_close(afp(x, boxes), ref)
        assert calls == per_level


def test_pooler_exports_roialign_per_level_to_onnx(tmp_path):
    # ONNX export records embedding_bag as a Loop over the output bins: the pooler exports ONNX's
    # RoiAlign on each level instead (module docstring).
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    afp = AdaptiveFeaturePooler(7, SCALES, sampling_ratio=2, pooler_type="ROIAlignV2")
    x1 = [f[:1] for f in _features(size=64, seed=5)]
    path = str(tmp_path / "pooler.onnx")
    torch.onnx.export(
        _PoolerOf4(afp),
        (*x1, _boxes()[0].tensor),
        path,
        dynamo=False,
        opset_version=16,
        input_names=["a", "b", "c", "d", "boxes"],
        dynamic_axes={"boxes": {0: "boxes"}},
    )
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("RoiAlign") == 4 and "Loop" not in ops
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    b2 = torch.tensor([[3.0, 7.0, 50.0, 60.0], [40.0, 2.0, 41.0, 63.0]])
    feed = {k: f.numpy() for k, f in zip("abcd", x1)}
    got = torch.from_numpy(session.run(None, {**feed, "boxes": b2.numpy()})[0])
    torch.testing.assert_close(got, afp(x1, [Boxes(b2)]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_pooler_sampling_ratio_zero_keeps_per_level_roialign(sampling_ratio, monkeypatch):
    afp = AdaptiveFeaturePooler(7, SCALES, sampling_ratio=sampling_ratio, pooler_type="ROIAlignV2")
    calls = []
    for p in afp.level_poolers:
        orig = p.forward
        monkeypatch.setattr(p, "forward", lambda f, b, orig=orig: calls.append(1) or orig(f, b))
    afp(_features(), _boxes())
    # adaptive sampling (0) has no fixed bag size: torchvision's op on each level
    assert len(calls) == (4 if sampling_ratio == 0 else 0)


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
        conv = layer.per_level
        w = conv.weight[l * O : (l + 1) * O]
        b = conv.bias[l * O : (l + 1) * O] if conv.bias is not None else None
        z = F.conv2d(x[:, l], w, b, padding=1)
        if norm == "GN":  # GroupNorm(32 groups) of that level alone
            z = F.group_norm(
                z, 32, conv.norm.weight[l * O : (l + 1) * O], conv.norm.bias[l * O : (l + 1) * O]
            )
        elif norm == "BN":  # batch statistics of that level alone
            z = F.batch_norm(
                z,
                None,
                None,
                conv.norm.weight[l * O : (l + 1) * O],
                conv.norm.bias[l * O : (l + 1) * O],
                training=True,
            )
        per_level.append(F.relu(z))
    stacked = torch.stack(per_level)
    expected = stacked.amax(0) if fuse == "max" else stacked.sum(0)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fuse", ["max", "sum"])
def test_per_level_linear_equals_separate_fcs(fuse):
    torch.manual_seed(0)
    layer = AFPLinear(50, 16, 4, fuse_type=fuse)
    x = torch.randn(7, 4, 50)
    stacked = torch.stack(
        [
            F.relu(F.linear(x[:, l], layer.per_level.weight[l], layer.per_level.bias[l]))
            for l in range(4)
        ]
    )
    expected = stacked.amax(0) if fuse == "max" else stacked.sum(0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    assert layer(x[:0]).shape == (0, 16)


def test_per_level_weights_are_separate_and_all_get_gradients():
    torch.manual_seed(0)
    layer = AFPLinear(20, 8, 4, fuse_type="max")
    layer(torch.randn(64, 4, 20)).sum().backward()
    for l in range(4):
        assert layer.per_level.weight.grad[l].abs().sum() > 0


def test_box_head_fuse_after_fc1_vs_before():
    torch.manual_seed(0)
    shape = ShapeSpec(channels=8, height=7, width=7)
    x = torch.randn(3, 4, 8, 7, 7)
    after = PANetConvFCHead(shape, conv_dims=[], fc_dims=[32, 32], num_levels=4)
    assert isinstance(after.fc1, AFPLinear) and after.fc1.per_level.weight.shape == (4, 32, 8 * 49)
    assert after(x).shape == (3, 32)
    # "fu.fc1fc2": fuse the grids, then exactly Detectron2's head.
    before = PANetConvFCHead(
        shape,
        conv_dims=[],
        fc_dims=[32, 32],
        num_levels=4,
        fuse_position="before_first_layer",
        fuse_type="sum",
    )
    d2 = FastRCNNConvFCHead(shape, conv_dims=[], fc_dims=[32, 32])
    d2.load_state_dict(before.state_dict())
    torch.testing.assert_close(before(x), d2(x.sum(1)))


def test_heavier_head_has_per_level_conv1_then_shared_convs_and_one_fc():
    shape = ShapeSpec(channels=16, height=7, width=7)
    head = PANetConvFCHead(shape, conv_dims=[32] * 4, fc_dims=[64], conv_norm="GN", num_levels=4)
    assert isinstance(head.conv1, AFPConv2d) and head.conv1.per_level.weight.shape == (
        4 * 32,
        16,
        3,
        3,
    )
    assert (
        isinstance(head.conv1.per_level.norm, torch.nn.GroupNorm)
        and head.conv1.per_level.norm.num_groups == 4 * 32
    )
    assert not isinstance(head.conv2, AFPConv2d)
    assert [n for n, _ in head.named_children() if n.startswith("fc") and n[2:].isdigit()] == [
        "fc1"
    ]
    assert head(torch.randn(2, 4, 16, 7, 7)).shape == (2, 64)


def _single_level_state():
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "conv.bias": torch.randn(16, generator=g),
        "fc.weight": torch.randn(6, 10, generator=g),
        "fc.bias": torch.randn(6, generator=g),
    }


def _check_every_level_has(model, sd):
    for l in range(4):
        conv, fc = model["conv"].per_level, model["fc"].per_level
        assert torch.equal(conv.weight[l * 16 : (l + 1) * 16], sd["conv.weight"])
        assert torch.equal(conv.bias[l * 16 : (l + 1) * 16], sd["conv.bias"])
        assert torch.equal(fc.weight[l], sd["fc.weight"]) and torch.equal(fc.bias[l], sd["fc.bias"])


def test_warm_start_with_plain_load_state_dict():
    # A single-level layer's tensors (Detectron2's Mask R-CNN fc1 / mask_fcn1) go to every level.
    model = torch.nn.ModuleDict({"conv": AFPConv2d(8, 16, 4), "fc": AFPLinear(10, 6, 4)})
    sd = _single_level_state()
    incompatible = model.load_state_dict(dict(sd), strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    _check_every_level_has(model, sd)


def test_warm_start_through_detectron2_checkpointer(tmp_path):
    # Detectron2's own DetectionCheckpointer (used by DefaultPredictor) drops tensors whose shape
    # differs from a model key: the per-level keys must not collide with the single-level ones.
    sd = _single_level_state()
    torch.save({"model": sd}, str(tmp_path / "single.pth"))
    model = torch.nn.ModuleDict({"conv": AFPConv2d(8, 16, 4), "fc": AFPLinear(10, 6, 4)})
    incompatible = DetectionCheckpointer(model)._load_model(
        {"model": dict(sd), "__author__": "test"}
    )
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes
    _check_every_level_has(model, sd)
    DetectionCheckpointer(model).load(str(tmp_path / "single.pth"))
    _check_every_level_has(model, sd)


def test_warm_start_of_per_level_norms():
    # The GN of Detectron2's mask head conv ("norm.*") goes to each level's slice of the batched GN,
    # and to every per-level module of a norm that mixes channels (LayerNorm, a callable).
    g = torch.Generator().manual_seed(1)
    sd = {
        "weight": torch.randn(32, 8, 3, 3, generator=g),
        "norm.weight": torch.rand(32, generator=g),
        "norm.bias": torch.rand(32, generator=g),
    }
    x = torch.randn(3, 8, 5, 5)
    z = F.conv2d(x, sd["weight"], padding=1)
    ln = LayerNorm(32)
    ln.load_state_dict({"weight": sd["norm.weight"], "bias": sd["norm.bias"]})
    expected = {
        "GN": F.group_norm(z, 32, sd["norm.weight"], sd["norm.bias"]),
        "LN": ln(z),
        "callable": F.group_norm(z, 8, sd["norm.weight"], sd["norm.bias"]),
    }
    norms = {"GN": "GN", "LN": "LN", "callable": lambda c: torch.nn.GroupNorm(8, c)}
    for name, norm in norms.items():
        layer = AFPConv2d(8, 32, 4, norm=norm)
        layer.load_state_dict(dict(sd), strict=True)
        out = layer(torch.stack([x] * 4, dim=1))  # every level sees the same grid
        torch.testing.assert_close(out, F.relu(expected[name]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("norm", ["LN", lambda c: torch.nn.GroupNorm(4, c)])
def test_norms_that_mix_channels_normalise_each_level_separately(norm):
    torch.manual_seed(0)
    layer = AFPConv2d(8, 16, 4, norm=norm, fuse_type="sum")
    x = torch.randn(3, 4, 8, 5, 5)
    conv = layer.per_level
    expected = 0
    for l in range(4):
        z = F.conv2d(x[:, l], conv.weight[l * 16 : (l + 1) * 16], None, padding=1)
        expected = expected + F.relu(conv.norm.levels[l](z))
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
    assert len(conv.norm.levels) == 4


@pytest.mark.parametrize("kwargs", [dict(fuse_type="mean"), dict(norm="XN")])
@pytest.mark.parametrize("layer", [AFPConv2d, AFPLinear])
def test_bad_values(kwargs, layer):
    with pytest.raises(ValueError) as e:
        layer(32, 32, 4, **kwargs)
    assert repr(list(kwargs.values())[0]) in str(e.value) and "allowed" in str(e.value)


@pytest.mark.parametrize("norm", ["GN", "LN", lambda c: torch.nn.GroupNorm(4, c)])
def test_per_level_layers_script(norm):
    # TorchScript (Detectron2's scripting export) compiles every per-level norm form
    layer = AFPConv2d(8, 32, 4, norm=norm).eval()
    x = torch.randn(2, 4, 8, 5, 5)
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))
