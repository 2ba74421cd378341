# -*- coding: utf-8 -*-
"""
Detectron2's own FLOP counter (detectron2.utils.analysis, used by tools/analyze_model.py), with
the handles of panet_d2.analysis (flop_count_analysis), counts every op PANet adds, and each
component's count equals its arithmetic.
"""

import pytest
import torch

from detectron2.modeling import build_model

from panet_d2.analysis import flop_count_analysis

from ..common import ALL_OFF, R18, panet_cfg, random_image

SMALL = R18
H, W = 128, 160


def _analysis(config, opts=()):
    cfg = panet_cfg(config, opts=SMALL + list(opts))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            shapes[name] = (tuple(inputs[0].shape), tuple(output.shape))

        return hook

    heads = model.roi_heads
    for name, module in [
        ("box_fc1", heads.box_head.fc1),
        ("mask_fcn1", heads.mask_head.mask_fcn1),
        ("ff", heads.mask_head.fc_fusion),
    ]:
        if module is not None:
            module.register_forward_hook(record(name))
    fca = flop_count_analysis(model, [{"image": random_image(H, W)}])
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    by_module = fca.by_module()
    return cfg, model, fca, {k[len("model.") :]: v for k, v in by_module.items()}, shapes


@pytest.fixture(scope="module")
def panet():
    return _analysis("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")


def test_per_level_fc1_and_its_fusion(panet):
    cfg, model, _, flops, shapes = panet
    (M, L, D), (_, out) = shapes["box_fc1"]  # grids flattened per level: D = 256 x 7 x 7
    assert (L, D, out) == (4, 12544, 1024) and M > 0
    # L x M x 12544 x 1024 multiply-adds, plus the max over levels: (L - 1) x M x 1024
    assert flops["roi_heads.box_head.fc1"] == L * M * D * out + (L - 1) * M * out


def test_per_level_mask_conv1_and_its_fusion(panet):
    cfg, model, _, flops, shapes = panet
    (M, L, C, h, w), (_, O, _, _) = shapes["mask_fcn1"]
    assert (L, C, O, h, w) == (4, 256, 256, 14, 14) and M > 0
    conv = L * M * O * C * 3 * 3 * h * w  # one grouped conv: each level's 3x3 conv on its grid
    assert flops["roi_heads.mask_head.mask_fcn1"] == conv + (L - 1) * M * O * h * w


def test_fully_connected_fusion(panet):
    cfg, model, _, flops, shapes = panet
    (M, C, h, w), _ = shapes["ff"]
    conv1 = M * 256 * C * 9 * h * w
    conv2 = M * 128 * 256 * 9 * h * w
    fc = M * (128 * h * w) * (28 * 28)
    assert flops["roi_heads.mask_head.fc_fusion"] == conv1 + conv2 + fc


def test_bottom_up_path(panet):
    cfg, model, _, flops, _ = panet
    # padded input 128 x 160 (divisible by 32): N_k is (H / 2^k) x (W / 2^k)
    for k in (3, 4, 5):
        hw = (H // 2**k) * (W // 2**k)
        assert flops["backbone.bpa_down{}".format(k)] == 256 * 256 * 9 * hw
        assert flops["backbone.bpa_out{}".format(k)] == 256 * 256 * 9 * hw


def test_all_level_roi_align(panet):
    cfg, model, _, flops, shapes = panet
    M = shapes["box_fc1"][0][0]
    ratio = cfg.MODEL.AFP.POOLER_SAMPLING_RATIO
    # M boxes x 4 levels x 256 channels x 7 x 7 bins, ratio^2 samples of 4 multiply-adds each
    assert flops["roi_heads.box_pooler"] == 4 * M * 256 * 7 * 7 * ratio**2 * 4


def test_no_op_left_uncounted(panet):
    # PANet adds no op that the counter skips: what it leaves out is what it leaves out of
    # Detectron2's own Mask R-CNN (RPN's topk, scripted helpers, padding).
    ours = panet[2]
    _, _, mask_rcnn, _, _ = _analysis(
        "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
        ALL_OFF,
    )
    assert set(ours.unsupported_ops()) <= set(mask_rcnn.unsupported_ops())


def _matrix_product_arithmetic(model, image):
    """Multiply-adds of every conv, transposed conv, linear and per-level linear layer of one
    inference, from the shapes their forward hooks see (independent of the traced graph)."""
    from torch import nn

    from panet_d2.modeling.layers import GroupedLinear

    total = {"n": 0}

    def hook(module, inputs, output):
        w = module.weight
        if isinstance(module, nn.ConvTranspose2d):  # per input element: out / groups x k x k
            total["n"] += inputs[0].numel() * w.shape[1] * w.shape[2] * w.shape[3]
        elif isinstance(module, nn.Conv2d):  # per output element: in / groups x k x k
            total["n"] += output.numel() * w.shape[1] * w.shape[2] * w.shape[3]
        else:  # nn.Linear (out, in), GroupedLinear (L, out, in): per output element, in
            total["n"] += output.numel() * w.shape[-1]

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, GroupedLinear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model([{"image": image}])
    for h in handles:
        h.remove()
    return total["n"]


def test_detectron2_flop_count_unpatched_counts_every_matrix_product(panet):
    """Detectron2's plain FlopCountAnalysis (no project handles) counts PANet's per-level fc1
    (a bmm), per-level conv1 (a grouped conv) and FF's fc: its count of matrix products is the
    arithmetic of every layer's shapes, within 1%."""
    from detectron2.utils.analysis import FlopCountAnalysis

    model = panet[1]  # the model of the project's analysis (its shape hooks change no output)
    image = random_image(H, W)
    fca = FlopCountAnalysis(model, [{"image": image}])
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    products = sum(v for k, v in fca.by_operator().items() if k in ("conv", "linear", "bmm"))
    arithmetic = _matrix_product_arithmetic(model, image)
    assert abs(products - arithmetic) <= 0.01 * arithmetic, (products, arithmetic)
    for name in ("roi_heads.box_head.fc1", "roi_heads.mask_head.mask_fcn1"):
        assert fca.by_module()["model." + name] > 0, name
