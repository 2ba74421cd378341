# -*- coding: utf-8 -*-
"""
The checkpoint format of the authors' PANet release (github.com/ShuLiu1993/PANet): key names and
shapes of its models' state dicts, written from its code (lib/modeling/{ResNet,FPN,
fast_rcnn_heads,mask_rcnn_heads}.py), independently of tools/convert_panet_release.py, for tests
and benchmarks that need release-format input without the release's code.
"""

__all__ = ["FULL", "release_shapes"]

# The released R-50 models' widths (Detectron's defaults: FPN.DIM 256, FAST_RCNN.CONV_HEAD_DIM
# 256, MLP_HEAD_DIM 1024, MRCNN.DIM_REDUCED 256; 81 classes with background).
FULL = dict(stem=64, res2=256, bottleneck=64, fpn=256, box_conv=256, fc=1024, mask_conv=256)
FULL["classes"] = 80


def release_shapes(variant, w, blocks=(3, 4, 6, 3), roi=(7, 14), levels=4):
    """
    {key: shape} of a release model (Detectron.pytorch names, ``model.state_dict()``), as its
    modules build them: ResNet_convX_body (AffineChannel2d: weight, bias), fpn(panet_buttomup=True)
    with FPN.USE_GN, fpn_rpn_outputs (3 anchors), roi_Xconv1fc_gn_head_panet or
    roi_2mlp_head_gn_panet, fast_rcnn_outputs (class-specific boxes) and
    mask_rcnn_fcn_head_v1up4convs_gn_adp_ff + mask_rcnn_outputs.

    Args:
        variant (str): "det", "det_2fc" or "mask".
        w (dict): widths: "stem", "res2" (res2's output channels), "bottleneck" (res2's inner
            channels), "fpn", "box_conv", "fc", "mask_conv", and "classes" (K, without the
            background, which the release's predictors add as row 0): see :data:`FULL`.
        blocks: bottlenecks per stage (R-50); roi: RoIAlign output sides of the box and mask
            heads; levels: RoI levels (N2..N5).
    """
    s = {}
    outs = _resnet_shapes(s, w, blocks)
    F = w["fpn"]

    def gn(prefix, c):
        s[prefix + "weight"] = s[prefix + "bias"] = (c,)

    s["Conv_Body.conv_top.0.weight"] = (F, outs[3], 1, 1)
    gn("Conv_Body.conv_top.1.", F)
    for i in range(3):
        p = "Conv_Body.topdown_lateral_modules.%d.conv_lateral." % i
        s[p + "0.weight"] = (F, outs[2 - i], 1, 1)
        gn(p + "1.", F)
    for i in range(4):
        s["Conv_Body.posthoc_modules.%d.0.weight" % i] = (F, F, 3, 3)
        gn("Conv_Body.posthoc_modules.%d.1." % i, F)
    for n in (1, 2):
        for i in range(3):
            p = "Conv_Body.panet_buttomup_conv%d_modules.%d." % (n, i)
            s[p + "0.weight"], s[p + "0.bias"] = (F, F, 3, 3), (F,)
            gn(p + "1.", F)
    for name, c, k in (("conv", F, 3), ("cls_score", 3, 1), ("bbox_pred", 12, 1)):
        s["RPN.FPN_RPN_%s.weight" % name], s["RPN.FPN_RPN_%s.bias" % name] = (c, F, k, k), (c,)
    D, C, K1 = w["fc"], w["box_conv"], w["classes"] + 1
    if variant in ("det", "mask"):
        for lv in range(levels):
            s["Box_Head.conv1_head.%d.0.weight" % lv] = (C, F, 3, 3)
            gn("Box_Head.conv1_head.%d.1." % lv, C)
        for j in range(3):
            s["Box_Head.convs.%d.weight" % (3 * j)] = (C, C, 3, 3)
            gn("Box_Head.convs.%d." % (3 * j + 1), C)
        s["Box_Head.fc.weight"], s["Box_Head.fc.bias"] = (D, C * roi[0] ** 2), (D,)
    else:
        for lv in range(levels):
            p = "Box_Head.fc1.%d." % lv
            s[p + "0.weight"], s[p + "0.bias"] = (D, F * roi[0] ** 2), (D,)
            gn(p + "1.", D)
        s["Box_Head.fc2.0.weight"], s["Box_Head.fc2.0.bias"] = (D, D), (D,)
        gn("Box_Head.fc2.1.", D)
    s["Box_Outs.cls_score.weight"], s["Box_Outs.cls_score.bias"] = (K1, D), (K1,)
    s["Box_Outs.bbox_pred.weight"], s["Box_Outs.bbox_pred.bias"] = (4 * K1, D), (4 * K1,)
    if variant == "mask":
        _mask_shapes(s, gn, w["mask_conv"], F, K1, roi[1], levels)
    return s


def _resnet_shapes(s, w, blocks):
    """ResNet_convX_body's tensors into ``s``; returns the stage output widths."""
    body = "Conv_Body.conv_body."
    s[body + "res1.conv1.weight"] = (w["stem"], 3, 7, 7)
    s[body + "res1.bn1.weight"] = s[body + "res1.bn1.bias"] = (w["stem"],)
    c_in, outs = w["stem"], []
    for k, n in enumerate(blocks):
        inner, out = w["bottleneck"] * 2**k, w["res2"] * 2**k
        for b in range(n):
            p = body + "res%d.%d." % (k + 2, b)
            s[p + "conv1.weight"] = (inner, c_in, 1, 1)
            s[p + "conv2.weight"] = (inner, inner, 3, 3)
            s[p + "conv3.weight"] = (out, inner, 1, 1)
            for i, c in ((1, inner), (2, inner), (3, out)):
                s[p + "bn%d.weight" % i] = s[p + "bn%d.bias" % i] = (c,)
            if b == 0:
                s[p + "downsample.0.weight"] = (out, c_in, 1, 1)
                s[p + "downsample.1.weight"] = s[p + "downsample.1.bias"] = (out,)
            c_in = out
        outs.append(out)
    return outs


def _mask_shapes(s, gn, M, F, K1, roi, levels):
    """mask_rcnn_fcn_head_v1up4convs_gn_adp_ff + mask_rcnn_outputs' tensors into ``s``."""
    for lv in range(levels):
        s["Mask_Head.mask_conv1.%d.0.weight" % lv] = (M, F, 3, 3)
        gn("Mask_Head.mask_conv1.%d.1." % lv, M)
    for j in range(2):
        s["Mask_Head.conv_fcn.%d.weight" % (3 * j)] = (M, M, 3, 3)
        gn("Mask_Head.conv_fcn.%d." % (3 * j + 1), M)
    for name, c in (("mask_conv4", M), ("mask_conv4_fc", M), ("mask_conv5_fc", M // 2)):
        s["Mask_Head.%s.0.weight" % name] = (c, M, 3, 3)
        gn("Mask_Head.%s.1." % name, c)
    s["Mask_Head.mask_fc.0.weight"] = ((2 * roi) ** 2, M // 2 * roi**2)
    s["Mask_Head.mask_fc.0.bias"] = ((2 * roi) ** 2,)
    s["Mask_Head.upconv.weight"], s["Mask_Head.upconv.bias"] = (M, M, 2, 2), (M,)
    s["Mask_Outs.classify.weight"], s["Mask_Outs.classify.bias"] = (K1, M, 1, 1), (K1,)
