# -*- coding: utf-8 -*-
"""
Panoptic PANet: semantic branch structure, joint loss, one backbone pass, merge, label spaces; the
merge thresholds set in either config system (yacs MODEL.PANOPTIC_FPN.COMBINE.*, LazyConfig
model.combine_*) reach the model's merge, and bad values are refused naming the key.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import instantiate
from detectron2.layers import Conv2d
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch.panoptic_fpn import (
    combine_semantic_and_instance_outputs as d2_combine,
)
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from panet_d2 import PAFPN, PANetSemSegHead, PanopticPANet
from panet_d2.modeling.postprocessing.panoptic_merge import segments_to_info

from ...common import NARROW_HEADS, NO_THRESHOLDS, R18, panet_cfg, random_image, toy_instances
from ...test_lazyconfig import _load, _narrow

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


@pytest.mark.parametrize("ignore", [54, -1])
def test_semantic_loss_ignores_the_configured_void_label(ignore):
    """A void label other than 255 that is no class (54 of COCO's 0..53, or -1) passes the head's
    check, and the loss skips it (Detectron2's loss; the mapper's side: test_panoptic_mapper.py)."""
    model, _ = _model(["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", ignore])
    sample = _sample()
    sample["sem_seg"][sample["sem_seg"] == 255] = ignore
    logits = []
    model.sem_seg_head.predictor.register_forward_hook(lambda m, i, o: logits.append(o))
    model.train()
    with EventStorage(0):
        losses = model([sample])
    up = F.interpolate(logits[0], scale_factor=4, mode="bilinear", align_corners=False)
    labelled = sample["sem_seg"] != ignore
    expected = 0.5 * F.cross_entropy(up[0].permute(1, 2, 0)[labelled], sample["sem_seg"][labelled])
    torch.testing.assert_close(losses["loss_sem_seg"], expected)


@pytest.mark.parametrize(
    "stride,features", [(2, ["p2", "p3", "p4", "p5"]), (8, ["p3", "p4", "p5"])]
)
def test_other_common_strides_give_full_size_logits(stride, features):
    """A finer common stride, or a coarser one from coarser inputs: (N, 54, H, W) logits still."""
    opts = ["MODEL.SEM_SEG_HEAD.COMMON_STRIDE", stride, "MODEL.SEM_SEG_HEAD.IN_FEATURES", features]
    model, _ = _model(opts)
    logits = []
    model.sem_seg_head.predictor.register_forward_hook(lambda m, i, o: logits.append(o))
    model.eval()
    with torch.no_grad():
        out = model([{"image": random_image(128, 160)}])[0]
    assert logits[0].shape[-2:] == (128 // stride, 160 // stride)
    assert out["sem_seg"].shape == (54, 128, 160)


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
        # the semantic branch's common stride: a power of 2 no coarser than its finest input (N2: 4)
        (["MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 8], "COMMON_STRIDE=8: must be a power of 2 up to 4,"),
        (["MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 3], "COMMON_STRIDE=3: must be a power of 2 up to 4,"),
        # the void label must not be a class (54 of COCO: 0..53)
        (["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 0], "MODEL.SEM_SEG_HEAD.IGNORE_VALUE=0"),
        (
            ["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", 53],
            "IGNORE_VALUE=53: the void pixels' label, an integer outside the classes 0..53",
        ),
    ],
)
def test_bad_values(opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        _model(opts)


# The merge thresholds: yacs key, LazyConfig key (model.<name>), the value the tests start from,
# and a changed value that drops exactly one segment of _raw_outputs.
COMBINE = {
    "OVERLAP_THRESH": ("combine_overlap_thresh", 0.5, 0.3),  # drops instance 1 (40% occluded)
    "STUFF_AREA_LIMIT": ("combine_stuff_area_thresh", 10, 100),  # drops stuff 2 (36 px)
    "INSTANCES_CONFIDENCE_THRESH": ("combine_instances_score_thresh", 0.5, 0.7),  # instance 2
}
LAZY_PANOPTIC = "new_baselines/panoptic_panet_R_50_FPN_100ep_LSJ.py"


def _model_with(system, settings):
    """A small PanopticPANet from the yacs or the LazyConfig recipe, with ``settings`` {yacs name
    under MODEL.PANOPTIC_FPN.COMBINE: value} set by that system's keys."""
    torch.manual_seed(0)
    if system == "yacs":
        opts = []
        for name, value in settings.items():
            opts += ["MODEL.PANOPTIC_FPN.COMBINE." + name, value]
        return _model(opts)[0].eval()
    cfg = _narrow(_load(LAZY_PANOPTIC))
    for name, value in settings.items():
        cfg.model[COMBINE[name][0]] = value
    return instantiate(cfg.model).eval()


def _raw_outputs(model, batched_inputs):
    """Hand-made raw outputs of a 64x64 image: instances 0 (score 0.9), 1 (0.8, 40% under 0),
    2 (0.6) as box masks; semantic labels 1 (784 pixels) and 2 (36), 0 elsewhere."""
    inst = Instances((64, 64))
    inst.pred_boxes = Boxes(torch.tensor([[0, 0, 20, 20], [0, 12, 20, 32], [40, 40, 60, 60.0]]))
    inst.scores = torch.tensor([0.9, 0.8, 0.6])
    inst.pred_classes = torch.tensor([1, 2, 3])
    inst.pred_masks = torch.ones(3, 1, 28, 28)
    labels = torch.zeros(64, 64, dtype=torch.int64)
    labels[36:, :28] = 1
    labels[:6, 40:46] = 2
    logits = 10.0 * F.one_hot(labels, model.sem_seg_head.predictor.out_channels).permute(2, 0, 1)
    return [inst], logits[None], [(64, 64)]


def _merged(model):
    """(eager segments_info, tensor form's) of _raw_outputs through the model's inference."""
    model._raw_inference = lambda batched_inputs: _raw_outputs(model, batched_inputs)
    inputs = [{"image": torch.zeros(3, 64, 64)}]
    with torch.no_grad():
        out = model.inference(inputs)[0]
        tensors = model.inference_tensors(inputs)[0]
    seg, info = out["panoptic_seg"]
    assert torch.equal(tensors["panoptic_seg"], seg)
    assert segments_to_info(tensors["segments"]) == info
    thresholds = [getattr(model, COMBINE[name][0]) for name in COMBINE]
    ref_seg, ref_info = d2_combine(out["instances"], out["sem_seg"].argmax(0), *thresholds)
    assert torch.equal(seg, ref_seg) and info == ref_info
    return [(s["isthing"], s["instance_id"] if s["isthing"] else s["category_id"]) for s in info]


@pytest.mark.parametrize("system", ["yacs", "lazy"])
def test_merge_thresholds_of_either_config_system_reach_the_merge(system):
    base = {name: start for name, (_, start, _) in COMBINE.items()}
    everything = [(True, 0), (True, 1), (True, 2), (False, 1), (False, 2)]
    assert _merged(_model_with(system, base)) == everything
    dropped = {
        "OVERLAP_THRESH": (True, 1),
        "STUFF_AREA_LIMIT": (False, 2),
        "INSTANCES_CONFIDENCE_THRESH": (True, 2),
    }
    for name, (attribute, _, changed) in COMBINE.items():
        model = _model_with(system, dict(base, **{name: changed}))
        assert getattr(model, attribute) == changed
        assert _merged(model) == [s for s in everything if s != dropped[name]], name


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("OVERLAP_THRESH", 1.5, r"in the range \[0, 1\]"),
        ("OVERLAP_THRESH", math.nan, r"in the range \[0, 1\]"),
        ("INSTANCES_CONFIDENCE_THRESH", -0.1, r"in the range \[0, 1\]"),
        ("STUFF_AREA_LIMIT", -1, ">= 0"),
    ],
)
def test_bad_merge_thresholds_are_refused_naming_the_key(name, value, allowed):
    attribute = COMBINE[name][0]
    for system, key in [("yacs", "MODEL.PANOPTIC_FPN.COMBINE." + name), ("lazy", attribute)]:
        with pytest.raises(ValueError, match=rf"{key}\b.*= {value!r}: must be a number {allowed}"):
            _model_with(system, {name: value})


def test_merge_threshold_not_a_number_is_refused():
    with pytest.raises(ValueError, match=r"model\.combine_overlap_thresh\) = '0\.5': must be"):
        _model_with("lazy", {"OVERLAP_THRESH": "0.5"})


def test_training_inputs_without_a_target_are_named():
    """An input of the batch without 'sem_seg' or 'instances': one ValueError naming it (Detectron2:
    a KeyError when one of several lacks it), before the backbone runs."""
    model, _ = _model()
    model.train()
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    full = dict(_sample(), file_name="a.jpg")
    for missing in ("sem_seg", "instances"):
        other = {k: v for k, v in full.items() if k != missing}
        with EventStorage(0), pytest.raises(ValueError) as e:
            model([full, dict(other, file_name="b.jpg")])
        assert str(e.value).startswith(
            f"PanopticPANet training needs 'instances' and 'sem_seg' targets in every input, and 1 "
            f"of this batch's 2 have no '{missing}' (the first: 'b.jpg')."
        )
    assert calls == []
