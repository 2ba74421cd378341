# -*- coding: utf-8 -*-
"""
ONNX export (``export_onnx`` of tools/export_support.py: the TorchScript-based exporter, opset
16, dynamic image size) run in ONNX Runtime, compared with the eager model on the image size it
was exported with and on others.

Tolerances (ONNX Runtime's kernels are not PyTorch's): boxes 1e-3 px, scores 1e-5, mask
probabilities 1e-4, semantic logits 1e-4; classes, the panoptic segment map and the segments' ids,
categories, areas and instance ids exactly, but at pixels where two semantic logits tie within
2e-4 (either class may win there: 1 pixel of 20480 at a gap of 5e-7 on one processor of this VM
kind, none on another), whose count bounds the areas' difference. Measured here: boxes <= 3e-5 px,
scores <= 2e-8, mask probabilities <= 1e-5, semantic logits <= 2e-5.
"""

import os

import pytest
import torch

from .common import (
    OTHER_IMAGE,
    TRACE_IMAGE,
    assert_equal_fields,
    assert_same_panoptic,
    export,
    image,
    instances_fields,
    small_model,
)

if os.environ.get("CI"):  # installed by the README's install command: never skipped in CI
    import onnx
    import onnxruntime  # noqa: F401
else:
    onnx = pytest.importorskip("onnx", reason='pip install -e ".[export]"')
    pytest.importorskip("onnxruntime", reason='pip install -e ".[export]"')

ATOL = {"pred_boxes": 1e-3, "scores": 1e-5, "pred_masks": 1e-4, "sem_seg": 1e-4}
SIZES = [TRACE_IMAGE, OTHER_IMAGE, (200, 120, 3)]


def test_instance_model_in_onnx_runtime(tmp_path):
    model = small_model("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")  # BPA + AFP + FF
    path = str(tmp_path / "model.onnx")
    schema = export.export_onnx(model, export.sample_inputs(model, image(TRACE_IMAGE)), path)

    graph = onnx.load(path)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [16]
    image_dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in image_dims[1:]] == ["image_height", "image_width"]
    # AFP: ONNX's RoiAlign on each of the 4 levels in the box and mask branches; detections: one
    # NMS per class (not one over all candidates of all classes)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("RoiAlign") == 8
    assert ops.count("NonMaxSuppression") >= model.roi_heads.box_predictor.num_classes

    deployed = export.OnnxRuntimeModel(path, schema)
    for spec in SIZES:
        img = image(spec)
        with torch.no_grad():
            expected = model.inference([{"image": img}], do_postprocess=False)[0]
        got = deployed(*export.sample_inputs(model, img))
        assert tuple(got.image_size.tolist()) == spec[:2]
        expected = instances_fields(expected)
        assert len(expected["scores"]) > 0
        assert_equal_fields(expected, instances_fields(got), atol=ATOL)


def test_panoptic_model_in_onnx_runtime(tmp_path):
    model = small_model("COCO-PanopticSegmentation/panoptic_panet_R_50_1x.yaml")
    path = str(tmp_path / "model.onnx")
    schema = export.export_onnx(model, export.sample_inputs(model, image(TRACE_IMAGE)), path)
    deployed = export.OnnxRuntimeModel(path, schema)
    for spec, size in [(TRACE_IMAGE, TRACE_IMAGE[:2]), (OTHER_IMAGE, (150, 250))]:
        img = image(spec)
        with torch.no_grad():
            expected = model([{"image": img, "height": size[0], "width": size[1]}])[0]
        got = export.eager_outputs(deployed(*export.sample_inputs(model, img, *size)), None, *size)
        info, got_info = expected["panoptic_seg"][1], got["panoptic_seg"][1]
        assert_same_panoptic(expected, got, ATOL["sem_seg"])
        assert any(s["isthing"] for s in info) and any(not s["isthing"] for s in info)
        scores = [(s["score"], g["score"]) for s, g in zip(info, got_info) if s["isthing"]]
        assert max(abs(a - b) for a, b in scores) <= ATOL["scores"]
        assert_equal_fields(
            {"sem_seg": expected["sem_seg"], **instances_fields(expected["instances"])},
            {"sem_seg": got["sem_seg"], **instances_fields(got["instances"])},
            atol=ATOL,
        )


def test_panoptic_model_without_instances(tmp_path):
    # no detection passes the score threshold: the graph's branches for zero instances
    model = small_model("COCO-PanopticSegmentation/panoptic_panet_R_50_1x.yaml")
    model.roi_heads.box_predictor.test_score_thresh = 1.1
    path = str(tmp_path / "model.onnx")
    schema = export.export_onnx(model, export.sample_inputs(model, image(TRACE_IMAGE)), path)
    deployed = export.OnnxRuntimeModel(path, schema)
    scripted = export.script_model(model)
    img = image(OTHER_IMAGE)
    with torch.no_grad():
        expected = model([{"image": img}])[0]
        got_scripted = export.eager_outputs(scripted([{"image": img}])[0], None, None, None)
    got_onnx = export.eager_outputs(deployed(*export.sample_inputs(model, img)), None, None, None)
    seg, info = expected["panoptic_seg"]
    assert len(expected["instances"]) == 0 and info and not any(s["isthing"] for s in info)
    assert torch.equal(got_scripted["panoptic_seg"][0], seg)
    assert got_scripted["panoptic_seg"][1] == info
    assert_same_panoptic(expected, got_onnx, ATOL["sem_seg"])
    for got in (got_scripted, got_onnx):
        assert len(got["instances"]) == 0
        assert got["instances"].pred_masks.shape == (0,) + OTHER_IMAGE[:2]
