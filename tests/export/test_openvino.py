# -*- coding: utf-8 -*-
"""
tools/export_model.py --format openvino (the ONNX graph as OpenVINO IR, compiled for the CPU) at
each --precision, run by the tool's own inference function on small quick-schedule models
(ResNet-18, GroupNorm, random weights, no score thresholds), compared with the eager model on
images of other sizes than the traced one; the exported model run without torch; refusals.

Tolerances, per precision (random weights put many scores close together, so the lower
precisions may reorder or swap a few of them):

* fp32: as ONNX Runtime (tests/export/test_onnx.py): boxes 1e-3 px, scores 1e-5, mask
  probabilities 1e-4, semantic logits 1e-4; classes and the panoptic segment map exactly (but
  where two semantic logits tie within 2e-4, as there).
* bf16: >= 80% of eager's detections matched (a detection of the same class with box IoU >= 0.9)
  and eager's top 3 all matched; mask probabilities within 0.05 on average.
* int8 (convolutions and fc layers quantised but the RPN head's outputs and the box predictor,
  calibrated on 4 generated images): >= 40% matched, and eager's top detection matched;
  int8-bf16 (convolutions only, the other ops bfloat16): >= 50% matched, eager's top detection
  matched, and the bfloat16 hint changes its scores; int8-heads (the mask and semantic heads
  only): boxes, scores and classes as fp32's, mask probabilities within 0.05 on average, semantic
  logits within 0.5.
Measured here: bf16 80-90% matched (80-100% with the box path float32, stop 41, 4 images); int8
50-70% (70% on the first image with the float ops reading float tensors, stop 42); int8-bf16
60-80%. (On a trained model: the accuracy gate of docs/deployment.md.)
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou

from panet_d2.data import register_synthetic_dataset

from ..common import (
    NO_THRESHOLDS,
    ROOT,
    error_exit,
    load_script,
    logged_messages,
    panet_cfg,
    random_image,
)
from .common import assert_equal_fields, assert_same_panoptic, instances_fields

pytest.importorskip("openvino", reason='pip install -e ".[export]"')
pytest.importorskip("onnxruntime", reason='pip install -e ".[export]"')
onnx = pytest.importorskip("onnx", reason='pip install -e ".[export]"')

pytestmark = pytest.mark.usefixtures("single_thread")

INSTANCE = "quick_schedules/panet_R_18_synth_instance.yaml"
PANOPTIC = "quick_schedules/panoptic_panet_R_18_synth.yaml"
DATASET = "test_export_openvino_val"
ATOL = {"pred_boxes": 1e-3, "scores": 1e-5, "pred_masks": 1e-4, "sem_seg": 1e-4}
IMAGES = [(96, 224, 2), (200, 120, 3)]  # the tool traces the dataset's first image (192 x 192)
LAYERS = ("Convolution", "FullyConnected")  # OpenVINO's runtime layers that compute features


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    register_synthetic_dataset(
        "test_export_openvino", root=root, splits={"val": {"num_images": 4, "seed": 3}}
    )
    return load_script("tools/export_model.py", "export_model_openvino")


def _model(config):
    opts = ["MODEL.RESNETS.NORM", "GN", "DATASETS.TEST", "('{}',)".format(DATASET)]
    cfg = panet_cfg(config, opts=opts + NO_THRESHOLDS)
    torch.manual_seed(0)
    return cfg, build_model(cfg).eval()


def _export(tool, cfg, model, out, precision="fp32"):
    argv = ["--config-file", "unused", "--format", "openvino", "--output", str(out)]
    argv += ["--precision", precision]
    if precision.startswith("int8"):
        argv += ["--calibration-dataset", DATASET, "--calibration-count", "4"]
    return tool.export_model(cfg, tool.get_parser().parse_args(argv), model)


def _matched(expected, got):
    """Per detection of ``expected`` (Instances), whether ``got`` has one of its class with box
    IoU >= 0.9."""
    iou = pairwise_iou(expected.pred_boxes, got.pred_boxes)
    same = expected.pred_classes[:, None] == got.pred_classes[None]
    return ((iou >= 0.9) & same).any(1)


def _eager(model, img, size=None):
    inputs = {"image": img}
    if size:
        inputs.update(height=size[0], width=size[1])
    with torch.no_grad():
        return model([inputs])[0]


@pytest.fixture(scope="module")
def instance_fp32(tool, tmp_path_factory):
    cfg, model = _model(INSTANCE)
    out = tmp_path_factory.mktemp("openvino_fp32")
    return model, _export(tool, cfg, model, out), out


def test_fp32_instance_model_equals_eager(instance_fp32):
    model, inference, out = instance_fp32
    assert {"model.onnx", "model.xml", "model.bin"} <= set(os.listdir(out))
    for spec in IMAGES:
        img = random_image(*spec)
        expected = _eager(model, img)["instances"]
        got = inference([{"image": img}])[0]["instances"]
        assert len(expected) > 0 and got.image_size == spec[:2]
        assert_equal_fields(instances_fields(expected), instances_fields(got), atol=ATOL)


def test_lower_precisions_match_eager(tool, tmp_path):
    cfg, model = _model(INSTANCE)
    for precision, fraction, top in [("bf16", 0.8, 3), ("int8", 0.4, 1), ("int8-bf16", 0.5, 1)]:
        with logged_messages("panet_d2.export_model") as messages:
            inference = _export(tool, cfg, model, tmp_path / precision, precision)
        assert any(m.startswith(f"--precision {precision} changes") for m in messages), messages
        for spec in IMAGES:
            img = random_image(*spec)
            expected = _eager(model, img)["instances"]
            got = inference([{"image": img}])[0]["instances"]
            matched = _matched(expected, got)
            assert matched.float().mean() >= fraction, (precision, matched)
            assert matched[:top].all(), (precision, matched)
            if precision == "bf16":  # in bfloat16: close, not equal
                diff = (expected.pred_masks.float() - got.pred_masks.float()).abs().mean()
                assert 0 < diff <= 0.05, diff
    # int8-bf16 runs the unquantised ops in bfloat16: its IR with the float32 hint (what int8
    # would run it with) gives other scores
    openvino_backend = load_script("tools/openvino_backend.py", "openvino_backend_hints")
    xml, img = str(tmp_path / "int8-bf16" / "model.xml"), random_image(*IMAGES[0]).float().numpy()
    ir = [openvino_backend.OpenVinoModel(xml, p) for p in ("int8", "int8-bf16")]
    f32, bf16 = (dict(zip(m.output_names, m(img)))["scores"] for m in ir)
    assert len(f32) > 0 and not (f32.shape == bf16.shape and np.array_equal(f32, bf16))
    # and RoIAlign as the hint says there (float32 only in the float graph's bf16: faster each)
    runtime = ir[1].compiled.get_runtime_model().get_ops()
    info = [
        {k: op.get_rt_info()[k].astype(str) for k in ("layerType", "runtimePrecision")}
        for op in runtime
    ]
    assert {i["runtimePrecision"] for i in info if i["layerType"] == "ROIAlign"} == {"bf16"}
    # int8: every convolution's and fc's weights and inputs quantised (QDQ) but the RPN head's
    # outputs and the box predictor, the AFP fc1 as one Gemm per level; int8-bf16: convolutions
    # only (but the RPN head's outputs and the box head's)
    float_outputs = (
        "/proposal_generator/rpn_head/objectness_logits",
        "/proposal_generator/rpn_head/anchor_deltas",
        "/roi_heads/box_predictor/",
    )
    for precision, quantised, also_float in [
        ("int8", ("Conv", "ConvTranspose", "Gemm"), ()),
        ("int8-bf16", ("Conv",), ("/roi_heads/box_head/",)),
    ]:
        graph = onnx.load(str(tmp_path / precision / "model.int8.onnx")).graph
        made = {o: n for n in graph.node for o in n.output}
        ops = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
        fc1 = [n.name for n in ops if n.name.startswith("/roi_heads/box_head/fc1/")]
        assert len(fc1) == (4 if precision == "int8" else 1), fc1  # per level: 4 levels
        floats = float_outputs + also_float
        kept = [n for n in ops if n.name.startswith(floats) or n.op_type not in quantised]
        assert len(ops) > 25 and len([n for n in kept if n.op_type == "Conv"]) >= 2
        for node in ops:  # those weights float32 (their input may be a quantised op's)
            if node in kept:
                assert node.input[1] not in made, (precision, node.name)
            else:
                assert [made[i].op_type for i in node.input[:2]] == ["DequantizeLinear"] * 2, (
                    precision,
                    node.name,
                )


def test_per_level_fc_as_gemms_computes_the_same(instance_fp32):
    """The AFP box head's per-level fc1 rewritten as one Gemm per level, on each level's pooled
    features, gives the float32 graph's outputs (ONNX Runtime, both graphs)."""
    import onnxruntime

    openvino_backend = load_script("tools/openvino_backend.py", "openvino_backend_gemms")
    model, _, out = instance_fp32
    graph = onnx.load(str(out / "model.onnx"))
    assert openvino_backend.batched_matmuls_as_gemms(graph) == 1
    box_head = [n.op_type for n in graph.graph.node if n.name.startswith("/roi_heads/box_head/")]
    assert not {"MatMul", "Transpose", "Split"} & set(box_head), box_head
    flatten = [n for n in graph.graph.node if n.name.startswith("/roi_heads/box_head/fc1/")]
    flatten = [n for n in flatten if n.op_type == "Flatten"]
    assert [n.input[0].split("/")[3] for n in flatten] == [f"level_poolers.{k}" for k in range(4)]
    image = random_image(*IMAGES[1]).float().numpy()
    before, after = (
        onnxruntime.InferenceSession(g).run(None, {"image": image})
        for g in (str(out / "model.onnx"), graph.SerializeToString())
    )
    assert len(before[0]) > 0
    for a, b in zip(before, after):
        np.testing.assert_allclose(b.astype(np.float64), a.astype(np.float64), atol=1e-3)


def test_bf16_keeps_the_box_path_float32(instance_fp32):
    """Compiled with the bfloat16 hint, the IR runs its convolutions and fc layers in bfloat16
    but RoIAlign and the ops that compute the boxes it reads in float32 (OpenVINO's runtime graph,
    walked back from each ROIAlign's box input to the layers that compute features). Unmarked,
    the poolers' Concat and Gather ran in bfloat16: every box rounded to 8 significant bits.
    Reorders, reshapes and shape reads compute nothing (those in bfloat16 there convert the
    heads' outputs to float32, or carry the integer batch indices)."""
    import openvino as ov

    core = ov.Core()
    xml = str(instance_fp32[2] / "model.xml")
    hint = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 1}
    runtime = core.compile_model(core.read_model(xml), "CPU", hint).get_runtime_model()

    def info(op, key):
        return op.get_rt_info()[key].astype(str)

    kinds = [info(op, "layerType") for op in runtime.get_ops()]
    layers = [
        info(op, "runtimePrecision") for op, k in zip(runtime.get_ops(), kinds) if k in LAYERS
    ]
    assert len(layers) > 20 and set(layers) == {"bf16"}, layers
    todo = [
        op.input_value(1).get_node() for op, k in zip(runtime.get_ops(), kinds) if k == "ROIAlign"
    ]
    assert len(todo) == 8  # the box and mask poolers, 4 levels each
    pooling = {
        info(op, "runtimePrecision") for op, k in zip(runtime.get_ops(), kinds) if k == "ROIAlign"
    }
    assert pooling == {"f32"}, pooling  # bfloat16's RoIAlign: 11x float32's time (R50)
    seen, computed = set(), {}
    while todo:
        op = todo.pop()
        kind = info(op, "layerType")
        if op.get_friendly_name() in seen or kind in LAYERS + ("Deconvolution", "Input", "Const"):
            continue
        seen.add(op.get_friendly_name())
        if kind not in ("Reorder", "Reshape", "ShapeOf"):
            computed[op.get_friendly_name()] = (kind, info(op, "runtimePrecision"))
        todo += [value.get_node() for value in op.input_values()]
    assert len(computed) > 50 and {"Concatenation", "Gather"} <= {k for k, _ in computed.values()}
    assert not {n: c for n, c in computed.items() if c[1] == "bf16"}


def test_batched_matmul_of_any_input_as_gemms():
    """``Add(MatMul(x, W), B)`` of an x that stacks no pooled levels: split per level, each level's
    product x[l] @ W[l] + B[l] (NumPy)."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    openvino_backend = load_script("tools/openvino_backend.py", "openvino_backend_split")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    w = rng.standard_normal((3, 7, 4)).astype(np.float32)
    b = rng.standard_normal((3, 1, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"], "/fc/MatMul"),
            helper.make_node("Add", ["xw", "b"], ["y"], "/fc/Add"),
        ],
        "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, "M", 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "M", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    assert openvino_backend.batched_matmuls_as_gemms(model) == 1
    assert [n.op_type for n in model.graph.node].count("Gemm") == 3
    assert not model.graph.initializer[0].name == "w"  # the batched weight is gone
    session = onnxruntime.InferenceSession(model.SerializeToString())
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, np.einsum("lmk,lkn->lmn", x, w) + b, rtol=1e-5, atol=1e-5)


def test_int8_ops_left_float_read_float_inputs(tmp_path):
    """A tensor read by a quantised convolution and by one left float (an excluded name, as the
    RPN head's outputs) and by an op never quantised (``Relu``, as a residual add or RoIAlign): the
    quantiser's rounded copy goes to the quantised one only; the others compute exactly what the
    float model does (ONNX Runtime, both)."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    openvino_backend = load_script("tools/openvino_backend.py", "openvino_backend_readers")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32) * 3
    w = rng.standard_normal((2, 4, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w0"], ["a"], "/int8/conv", pads=[1] * 4),
            helper.make_node("Conv", ["x", "w1"], ["b"], "/float/conv", pads=[1] * 4),
            helper.make_node("Relu", ["x"], ["c"], "/relu"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
        [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in "abc"],
        [numpy_helper.from_array(w[i], f"w{i}") for i in range(2)],
    )
    path = str(tmp_path / "m.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)]), path)
    run = [onnxruntime.InferenceSession(path).run(None, {"x": x})]
    quantised = openvino_backend.quantize_onnx(
        path, str(tmp_path / "q.onnx"), [(x,), (x * 0.5,)], ["x"], "int8", ["/float/"]
    )
    run.append(onnxruntime.InferenceSession(quantised).run(None, {"x": x}))
    (a, b, c), (qa, qb, qc) = run
    assert not np.allclose(qa, a, rtol=0, atol=1e-6)  # the quantised one is int8
    np.testing.assert_array_equal(qb, b)
    np.testing.assert_array_equal(qc, c)


def test_openvino_still_needs_roialign_to_read_the_quantised_copy(instance_fp32, tmp_path):
    """UPSTREAM-WORKAROUND openvino-fq-branch-roialign: with RoIAlign given the float features of
    a quantised convolution's output (which its FakeQuantize also reads), OpenVINO's int8 boxes
    are not ONNX Runtime's for the same QDQ graph (the FakeQuantize gives zeros); with RoIAlign
    reading the rounded copy they are. Fails once OpenVINO computes it: then drop the exception."""
    import onnxruntime
    from torchvision.ops import box_iou

    openvino_backend = load_script("tools/openvino_backend.py", "openvino_backend_roialign")
    _, _, out = instance_fp32
    img = random_image(*IMAGES[0]).float().numpy()
    calibration = [(random_image(192, 192, seed).float().numpy(),) for seed in range(4)]
    agree = []
    for readers in [openvino_backend._QUANTISED_READERS, ()]:
        openvino_backend._QUANTISED_READERS = readers
        path = str(tmp_path / "q{}.onnx".format(len(readers)))
        openvino_backend.quantize_onnx(str(out / "model.onnx"), path, calibration, ["image"])
        (ort,) = onnxruntime.InferenceSession(path).run(["pred_boxes"], {"image": img})
        compiled = openvino_backend.OpenVinoModel(
            openvino_backend.convert_onnx(path, path[:-5] + ".xml"), "int8"
        )
        got = dict(zip(compiled.output_names, compiled(img)))["pred_boxes"]
        iou = box_iou(torch.from_numpy(ort[:10]), torch.from_numpy(got))
        agree.append(float((iou.max(dim=1).values >= 0.9).float().mean()))
    assert agree[0] >= 0.5 and agree[1] <= 0.1, agree  # measured: 0.6, 0.0


def test_int8_ir_that_openvino_computes_as_zeros_is_refused(tool, tmp_path, monkeypatch):
    """The export's check of the int8 IR against ONNX Runtime: with RoIAlign given the float
    features (the op pattern of UPSTREAM-WORKAROUND openvino-fq-branch-roialign) OpenVINO computes
    an FPN output's fake-quantised copy as zeros: refused, the IR removed."""
    backend = sys.modules["openvino_backend"]  # the tool's own
    monkeypatch.setattr(backend, "_QUANTISED_READERS", ())
    cfg, model = _model(INSTANCE)
    with pytest.raises(backend.MiscompiledError, match=r"as zeros .* \(/backbone/fpn_output") as e:
        _export(tool, cfg, model, tmp_path, "int8")
    assert "export --precision int8-heads (its box path is float32), fp32 or bf16 (" in str(e.value)
    assert {"model.int8.onnx", "model.onnx"} <= set(os.listdir(tmp_path))
    assert not {"model.xml", "model.bin"} & set(os.listdir(tmp_path))


def test_int8_ir_refused_for_its_box_head_names_int8_bf16(tool, tmp_path, monkeypatch):
    """Where every zeroed tensor is the box head's (the X101 fault of docs/deployment.md), the
    refusal of int8 names int8-bf16, which does not quantise the box head; int8-bf16's names
    int8-heads, which quantises no op on the box path."""
    backend = sys.modules["openvino_backend"]
    zeros = ["/roi_heads/box_head/fc1/ReduceMax_output_0_DequantizeLinear_Output"]
    monkeypatch.setattr(backend, "zeroed_activations", lambda *args: zeros)
    cfg, model = _model(INSTANCE)
    for precision, advice in [("int8", "int8-bf16 (its box head"), ("int8-bf16", "int8-heads (")]:
        with pytest.raises(backend.MiscompiledError, match=r"--precision " + re.escape(advice)):
            _export(tool, cfg, model, tmp_path / precision, precision)


def test_fp32_panoptic_model_equals_eager(tool, tmp_path):
    cfg, model = _model(PANOPTIC)
    with logged_messages("panet_d2.export_model") as messages:
        inference = _export(tool, cfg, model, tmp_path)
    assert not any(m.startswith("--precision") for m in messages), messages  # fp32: no warning
    for spec, size in [(IMAGES[0], (150, 250)), (IMAGES[1], IMAGES[1][:2])]:
        img = random_image(*spec)
        expected = _eager(model, img, size)
        got = inference([{"image": img, "height": size[0], "width": size[1]}])[0]
        info = expected["panoptic_seg"][1]
        assert_same_panoptic(expected, got, ATOL["sem_seg"])
        assert any(s["isthing"] for s in info) and any(not s["isthing"] for s in info)
        assert_equal_fields(
            {"sem_seg": expected["sem_seg"], **instances_fields(expected["instances"])},
            {"sem_seg": got["sem_seg"], **instances_fields(got["instances"])},
            atol=ATOL,
        )


def test_int8_heads_leaves_every_box_float32(tool, tmp_path):
    """int8-heads quantises the mask and semantic heads only, and none of their convolutions that
    read a tensor a RoIAlign reads (OpenVINO's RoIAlign would read the rounded copy): the boxes,
    scores and classes are float32 eager's; the masks and semantic logits are int8's (close, not
    equal). A detection model is refused."""
    cfg, model = _model(PANOPTIC)
    inference = _export(tool, cfg, model, tmp_path, "int8-heads")
    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    made = {o: n for n in graph.node for o in n.output}
    float_graph = onnx.load(str(tmp_path / "model.onnx")).graph
    pooled = {n.input[0] for n in float_graph.node if n.op_type == "RoiAlign"}
    assert len(pooled) == 4  # the bottom-up path's 4 levels
    # every RoIAlign reads those float tensors, not a quantised copy
    assert {n.input[0] for n in graph.node if n.op_type == "RoiAlign"} == pooled
    quantised = [n for n in graph.node if n.input[1:2] and n.input[1] in made]
    quantised = [n for n in quantised if made[n.input[1]].op_type == "DequantizeLinear"]
    parts = {n.name.split("/")[2 if n.name.startswith("/roi_heads/") else 1] for n in quantised}
    assert parts == {"mask_head", "sem_seg_head"}, sorted(n.name for n in quantised)
    assert {n.op_type for n in quantised} == {"Conv", "ConvTranspose", "Gemm"}  # Gemm: FF's fc
    for node in quantised:
        # what the quantised op reads is a DequantizeLinear of a QuantizeLinear of a float tensor
        read = made[made[node.input[0]].input[0]].input[0]
        assert read not in pooled, node.name
    for spec, size in [(IMAGES[0], (150, 250)), (IMAGES[1], IMAGES[1][:2])]:
        img = random_image(*spec)
        expected = _eager(model, img, size)
        got = inference([{"image": img, "height": size[0], "width": size[1]}])[0]
        fields = [instances_fields(o["instances"]) for o in (expected, got)]
        masks = [f.pop("pred_masks").float() for f in fields]
        assert len(fields[0]["scores"]) > 0
        assert_equal_fields(*fields, atol=ATOL)
        assert 0 < (masks[0] - masks[1]).abs().mean() <= 0.05
        assert 0 < (expected["sem_seg"] - got["sem_seg"]).abs().max() <= 0.5

    # a detection model has neither head: refused (it would quantise nothing), before its weights
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "--format", "openvino"]
    argv += ["--precision", "int8-heads", "--calibration-dataset", DATASET]
    argv += ["--output", str(tmp_path / "detection"), "MODEL.MASK_ON", "False"]
    argv += [
        "MODEL.WEIGHTS",
        "missing.pth",
        "MODEL.DEVICE",
        "cpu",
        "DATASETS.TEST",
        f"('{DATASET}',)",
    ]
    line = error_exit(tool.cli, argv)
    assert line.startswith("ERROR: --precision int8-heads quantises the mask and semantic"), line
    # an instance model (a mask head, no semantic head) is not
    assert tool.int8_heads_refusal(_model(INSTANCE)[1]) is None


_NO_TORCH = """
import importlib.abc, sys

class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "detectron2", "panet_d2"):
            raise ImportError("blocked for this test: " + name)
        return None

sys.meta_path.insert(0, _Blocked())
"""


def test_exported_model_runs_without_torch(instance_fp32, tmp_path):
    model, _, out = instance_fp32
    (tmp_path / "sitecustomize.py").write_text(_NO_TORCH)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")
    img = random_image(*IMAGES[0])
    np.save(tmp_path / "image.npy", img.numpy())

    def run(*args):
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)

    assert "blocked for this test: torch" in run("-c", "import torch").stderr
    runner = os.path.join(ROOT, "tools", "openvino_backend.py")
    saved = tmp_path / "outputs.npz"
    proc = run(runner, out / "model.xml", tmp_path / "image.npy", "--save", saved)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with torch.no_grad():
        expected = model.inference([{"image": img}], do_postprocess=False)[0]
    expected = instances_fields(expected)
    n = len(expected["scores"])
    assert "pred_masks [{}, 1, 28, 28] float32".format(n) in proc.stdout.split("\n")
    with np.load(saved) as outputs:
        got = {k: torch.from_numpy(outputs[k]) for k in expected}
        assert outputs["image_size"].tolist() == list(IMAGES[0][:2])
    assert_equal_fields(expected, got, atol=ATOL)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--format", "torchscript", "--precision", "int8"],
            "--precision int8 needs --format openvino",
        ),
        (["--format", "onnx", "--precision", "bf16"], "--precision bf16 needs --format openvino"),
        (["--format", "openvino", "--calibration-dataset", DATASET], "calibrates --precision int8"),
        (
            ["--format", "openvino", "--calibration-count", "4"],
            "ERROR: --calibration-count 4 calibrates --precision int8, int8-bf16 or int8-heads "
            "only",
        ),
        (  # the default count, given: refused as well
            ["--format", "torchscript", "--calibration-count", "16"],
            "ERROR: --calibration-count 16 calibrates --precision int8, int8-bf16 or int8-heads "
            "only",
        ),
        (
            ["--format", "openvino", "--precision", "int8", "--calibration-count", "0"],
            "--calibration-count 0: must be at least 1",
        ),
    ],
)
def test_unsupported_combinations_refused_before_loading(tool, tmp_path, extra, message):
    # a config file that does not exist: the refusal comes first
    argv = ["--config-file", str(tmp_path / "missing.yaml"), "--output", str(tmp_path)] + extra
    line = error_exit(tool.cli, argv)
    assert message in line and not os.listdir(tmp_path)


def test_unusable_calibration_dataset_refused_before_the_model(tool, tmp_path):
    # named before the weights (which do not exist) load: a misspelt dataset (with the registered
    # one it resembles), one whose annotation file is missing, none given and none to train on
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "--output", str(tmp_path)]
    argv += ["--format", "openvino", "--precision", "int8"]
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(tmp_path / "missing.pth")]
    line = error_exit(tool.cli, argv + ["--calibration-dataset", "panet_synth_trian"] + opts)
    assert "'panet_synth_trian' in --calibration-dataset is not registered" in line
    assert "Did you mean: 'panet_synth_train'" in line
    json_file = str(tmp_path / "missing.json")
    register_coco_instances("test_calibration_no_json", {}, json_file, str(tmp_path))
    try:
        line = error_exit(
            tool.cli, argv + ["--calibration-dataset", "test_calibration_no_json"] + opts
        )
    finally:
        DatasetCatalog.remove("test_calibration_no_json")
        MetadataCatalog.remove("test_calibration_no_json")
    assert line == (
        "ERROR: The json_file {!r} of dataset 'test_calibration_no_json' (--calibration-dataset) "
        "does not exist.".format(json_file)
    )
    line = error_exit(tool.cli, argv + opts + ["DATASETS.TRAIN", "()"])
    assert line == (
        "ERROR: --precision int8 calibrates on the config's first training dataset, and there is "
        "none: give --calibration-dataset NAME"
    )


def test_torch_free_runner_refuses_bad_input_in_one_line(
    instance_fp32, tmp_path, monkeypatch, capsys
):
    runner = load_script("tools/openvino_backend.py", "openvino_backend_runner")
    xml = str(instance_fp32[2] / "model.xml")
    good = tmp_path / "good.npy"
    np.save(good, random_image(64, 96, 1).numpy())
    files = {
        "hwc": np.zeros((64, 96, 3), np.float32),  # channels last
        "nan": np.full((3, 64, 96), np.nan, np.float32),
        "objects": np.array([{"image": 1}], dtype=object),
        "empty": np.zeros((3, 0, 96), np.float32),
    }
    for name, array in files.items():
        np.save(tmp_path / name, array, allow_pickle=True)

    def error(*argv):  # exit code 2 (an input to fix), one line on stderr
        with pytest.raises(SystemExit) as e:
            runner.main(list(argv))
        line = capsys.readouterr().err
        assert e.value.code == 2 and line.count("\n") == 1, (e.value.code, line)
        return line.strip()

    hwc, nan = str(tmp_path / "hwc.npy"), str(tmp_path / "nan.npy")
    assert "is float32 (64, 96, 3): expected finite numbers of shape (3, H, W)" in error(xml, hwc)
    assert "is float32 (3, 64, 96): expected finite numbers" in error(xml, nan)
    objects = error(xml, str(tmp_path / "objects.npy"))  # not NumPy's advice to unpickle it
    assert objects.endswith("objects.npy': not an array of numbers saved by numpy.save"), objects
    assert "is float32 (3, 0, 96): expected" in error(xml, str(tmp_path / "empty.npy"))
    save = str(tmp_path / "missing" / "out.npz")  # refused before the model runs
    assert f"--save {save!r}: give a .npz file in a folder" in error(xml, str(good), "--save", save)
    assert "cannot read the image" in error(xml, str(tmp_path / "missing.npy"))
    assert "takes 1 input(s): the image only" in error(xml, str(good), "64", "96")
    assert "cannot read the model" in error(str(tmp_path / "missing.xml"), str(good))
    # a float IR run as int8 (it would run as fp32): refused, naming the precision
    monkeypatch.setenv("PANET_D2_PRECISION", "int8")
    line = error(xml, str(good))
    monkeypatch.delenv("PANET_D2_PRECISION")
    assert line.startswith("ERROR: PANET_D2_PRECISION='int8': precision 'int8' does not fit"), line
    assert line.endswith("has no quantised op (exported with --precision fp32 or bf16)"), line
    runner.main([xml, str(good)])  # the good image runs
    # a panoptic model's output size: PIL's largest image at most (100000 x 100000: 40 GB a mask)
    panoptic = type("Model", (), {"compiled": type("C", (), {"inputs": [0, 1, 2]}), "xml_path": ""})
    limit = runner.MAX_OUTPUT_PIXELS
    assert limit == 2 * Image.MAX_IMAGE_PIXELS  # PIL's, as read_image reads
    assert len(runner._runner_inputs(panoptic, str(good), [str(limit // 2), "2"])) == 3
    for h, w in ((limit // 2 + 1, 2), (100000, 100000)):
        with pytest.raises(SystemExit):
            runner._runner_inputs(panoptic, str(good), [str(h), str(w)])
        assert f"HEIGHT x WIDTH {h} x {w}: the output size" in capsys.readouterr().err
