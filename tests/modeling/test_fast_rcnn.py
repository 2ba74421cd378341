# -*- coding: utf-8 -*-
"""
The box predictor's inference with a per-class NMS that traces (panet_d2/modeling/fast_rcnn.py),
against torchvision's ``batched_nms`` and Detectron2's ``FastRCNNOutputLayers``.
"""

import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances

from panet_d2.modeling.fast_rcnn import PANetFastRCNNOutputLayers, per_class_nms

from ..common import R18, panet_cfg


def _candidates(n, num_classes, seed):
    """n boxes in a 200 x 200 image, clustered so that NMS drops many; random classes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(8, 2, generator=g) * 200
    xy = centres[torch.randint(0, 8, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 10
    wh = 20 + torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, num_classes, (n,), generator=g)
    return boxes, scores, classes


@pytest.mark.parametrize("n", [300, 3000])
def test_per_class_nms_equals_torchvision_batched_nms(n):
    # 3000 candidates: torchvision runs one NMS per class; 300: its coordinate trick (the same
    # result up to float rounding of shifted coordinates, none on these boxes)
    boxes, scores, classes = _candidates(n, 7, seed=n)
    ours = per_class_nms(boxes, scores, classes, 0.5, 7)
    expected = tv_batched_nms(boxes, scores, classes, 0.5)
    assert 0 < len(ours) < n
    assert torch.equal(ours, expected)


def test_traced_per_class_nms_is_one_nms_per_class_for_any_number_of_candidates():
    class NMS(torch.nn.Module):
        def forward(self, boxes, scores, classes):
            return per_class_nms(boxes, scores, classes, 0.5, 7)

    traced = torch.jit.trace(NMS(), _candidates(50, 7, seed=0), check_trace=False)
    # the graph: one NMS per class, not one over all candidates with shifted boxes
    assert str(traced.inlined_graph).count("torchvision::nms") == 7
    for n in (0, 10, 2000):
        boxes, scores, classes = _candidates(n, 7, seed=n + 1)
        assert torch.equal(
            traced(boxes, scores, classes), per_class_nms(boxes, scores, classes, 0.5, 7)
        )
        if n:
            assert torch.equal(
                traced(boxes, scores, classes), tv_batched_nms(boxes, scores, classes, 0.5)
            )


def _predictor_pair(cfg, num_classes=5, dim=16):
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    shape = ShapeSpec(channels=dim)
    torch.manual_seed(0)
    ours = PANetFastRCNNOutputLayers(cfg, shape)
    theirs = FastRCNNOutputLayers(cfg, shape)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _proposals(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    p = Instances((120, 150))
    p.proposal_boxes = Boxes(torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 60], 1))
    return p


@pytest.mark.parametrize("score_thresh", [0.0, 0.05])
def test_predictor_inference_equals_detectron2(score_thresh):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    ours, theirs = _predictor_pair(cfg)
    proposals = [_proposals(400, seed=1), _proposals(30, seed=2)]
    x = torch.randn(430, 16, generator=torch.Generator().manual_seed(3)) * 3
    with torch.no_grad():
        predictions = ours(x)
        got, got_index = ours.inference(predictions, proposals)
        expected, expected_index = theirs.inference(predictions, proposals)
    for a, b, ia, ib in zip(got, expected, got_index, expected_index):
        assert len(a) > 0
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
        assert torch.equal(ia, ib)


def test_panet_roi_heads_use_it_with_detectron2s_weights():
    from detectron2.modeling import build_model

    # the RBL config (every PANet component off) is Detectron2's Mask R-CNN: with PANetROIHeads or
    # Detectron2's StandardROIHeads, the same seed gives the same weights, predictor included (it
    # is initialised once, as Detectron2 does, so the layers built after it are unchanged too)
    opts = R18
    models = []
    for name in ("PANetROIHeads", "StandardROIHeads"):
        torch.manual_seed(0)
        cfg = panet_cfg("ablations/rbl.yaml", opts=opts + ["MODEL.ROI_HEADS.NAME", name])
        models.append(build_model(cfg))
    ours, theirs = models
    assert type(ours.roi_heads.box_predictor) is PANetFastRCNNOutputLayers
    assert type(theirs.roi_heads.box_predictor) is FastRCNNOutputLayers
    expected = theirs.state_dict()
    assert list(ours.state_dict()) == list(expected)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_equal_scores_keep_the_candidates_order_in_every_backend(tmp_path):
    # eager, scripted, traced and ONNX Runtime order equal scores alike (by candidate index), so
    # that exported models return eager's detections in eager's order
    boxes, _, classes = _candidates(60, 3, seed=7)
    boxes = boxes + torch.arange(60.0)[:, None] * 300  # no overlaps: every candidate is kept
    scores = torch.tensor([0.5, 0.9, 0.2] * 20)

    class NMS(torch.nn.Module):
        def forward(self, boxes, scores, classes):
            return per_class_nms(boxes, scores, classes, 0.5, 3)

    ours = per_class_nms(boxes, scores, classes, 0.5, 3)
    index = torch.arange(60)
    expected = torch.cat([index[1::3], index[0::3], index[2::3]])
    assert torch.equal(ours, expected)
    inputs = (boxes, scores, classes)
    assert torch.equal(torch.jit.script(NMS())(*inputs), expected)
    assert torch.equal(torch.jit.trace(NMS(), inputs, check_trace=False)(*inputs), expected)
    onnxruntime = pytest.importorskip("onnxruntime")
    path = str(tmp_path / "nms.onnx")
    names = ["boxes", "scores", "classes"]
    torch.onnx.export(
        NMS(),
        inputs,
        path,
        dynamo=False,
        opset_version=16,
        input_names=names,
        dynamic_axes={k: {0: "n"} for k in names},
    )
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in zip(names, inputs)})[0]
    assert got.tolist() == expected.tolist()
