# -*- coding: utf-8 -*-
"""Panoptic PANet: semantic branch structure, joint loss, one backbone pass, merge, label spaces."""

import pytest
import torch
import torch.nn.functional as F

from detectron2.layers import Conv2d
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.panoptic_fpn import (
    combine_semantic_and_instance_outputs as d2_combine,
)
from detectron2.utils.events import EventStorage

from panet_d2 import PAFPN, PANetSemSegHead, PanopticPANet

from .common import NARROW_HEADS, NO_THRESHOLDS, R18, panet_cfg, random_image, toy_instances

SMALL = R18 + NARROW_HEADS + NO_THRESHOLDS


def _model(opts=()):
    cfg = panet_cfg(
        "COCO-PanopticSegmentation/panoptic_panet_R_50_1x.yaml", opts=SMALL + list(opts)
    )
    torch.manual_seed(0)
    return build_model(cfg), cfg


def _sample(h=128, w=160, num_sem=54):
    sem = torch.randint(0, num_sem, (h, w), generator=torch.Generator().manual_seed(0))
    sem[:10] = 255
    return {"image": random_image(h, w), "instances": toy_instances(h, w), "sem_seg": sem}


def test_semantic_branch_structure():
    model, cfg = _model()
    assert isinstance(model, PanopticPANet) and isinstance(model.backbone, PAFPN)
    head = model.sem_seg_head
    assert isinstance(head, PANetSemSegHead)
    assert head.in_features == ["p2", "p3", "p4", "p5"] and head.common_stride == 4
    for level, stages in (("p2", 1), ("p3", 1), ("p4", 2), ("p5", 3)):
        ops = list(getattr(head, level))
        convs = [m for m in ops if isinstance(m, Conv2d)]
        ups = [m for m in ops if isinstance(m, torch.nn.Upsample)]
        assert len(convs) == stages
        assert len(ups) == (0 if level == "p2" else stages)  # N2: one conv, no upsampling
        for c in convs:
            assert c.out_channels == 128 and c.kernel_size == (3, 3)
            assert isinstance(c.norm, torch.nn.GroupNorm) and c.norm.num_groups == 32
        assert all(u.scale_factor == 2 and u.mode == "bilinear" for u in ups)
    assert head.predictor.kernel_size == (1, 1) and head.predictor.out_channels == 54  # 53 + other
    assert head.loss_weight == cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT == 0.5


def test_joint_loss_weights_and_semantic_loss():
    model, _ = _model()
    sample = _sample()
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    logits = []
    model.sem_seg_head.predictor.register_forward_hook(lambda m, i, o: logits.append(o))
    model.train()
    with EventStorage(0):
        torch.manual_seed(1)
        losses = model([sample])
    assert calls == [1]  # one backbone pass for both branches
    assert set(losses) == {
        "loss_sem_seg",
        "loss_cls",
        "loss_box_reg",
        "loss_mask",
        "loss_rpn_cls",
        "loss_rpn_loc",
    }
    # lambda_s * per-pixel cross-entropy of the 4x bilinearly upsampled 1/4-scale logits over
    # labelled pixels, void ignored.
    assert logits[0].shape[-2:] == (128 // 4, 160 // 4)
    up = F.interpolate(logits[0], scale_factor=4, mode="bilinear", align_corners=False)
    expected = 0.5 * F.cross_entropy(up, sample["sem_seg"][None], ignore_index=255)
    torch.testing.assert_close(losses["loss_sem_seg"], expected)

    heavy, _ = _model(["MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT", 0.75])
    heavy.load_state_dict(model.state_dict())
    heavy.train()
    with EventStorage(0):
        torch.manual_seed(1)
        losses2 = heavy([sample])
    for k in ("loss_cls", "loss_box_reg", "loss_mask"):  # lambda_i on the instance losses
        torch.testing.assert_close(losses2[k], 0.75 * losses[k])
    torch.testing.assert_close(losses2["loss_rpn_cls"], losses["loss_rpn_cls"])


def test_inference_outputs_and_merge_equal_detectron2():
    model, cfg = _model()
    model.eval()
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model([{"image": random_image(128, 160), "height": 256, "width": 320}])[0]
    assert calls == [1]
    assert out["sem_seg"].shape == (54, 256, 320)
    assert out["instances"].image_size == (256, 320) and len(out["instances"]) > 0
    seg, info = out["panoptic_seg"]
    c = cfg.MODEL.PANOPTIC_FPN.COMBINE
    ref_seg, ref_info = d2_combine(
        out["instances"],
        out["sem_seg"].argmax(0),
        c.OVERLAP_THRESH,
        c.STUFF_AREA_LIMIT,
        c.INSTANCES_CONFIDENCE_THRESH,
    )
    assert torch.equal(seg, ref_seg) and info == ref_info
    assert any(s["isthing"] for s in info) and any(not s["isthing"] for s in info)


@pytest.mark.parametrize(
    "opts,key",
    [
        (["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["p2", "p7"]], "MODEL.SEM_SEG_HEAD.IN_FEATURES"),
        (["MODEL.SEM_SEG_HEAD.NORM", "XN"], "MODEL.SEM_SEG_HEAD.NORM"),
        (
            ["MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", 1.5],
            "MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH",
        ),
    ],
)
def test_bad_values(opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _model(opts)
