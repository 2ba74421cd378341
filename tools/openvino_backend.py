# -*- coding: utf-8 -*-
"""
OpenVINO backend of tools/export_model.py and benchmarks/bench_export.py: the ONNX graph of
``export_onnx`` (tools/export_support.py) converted to OpenVINO IR (``model.xml`` /
``model.bin``), compiled for the CPU in float32 or bfloat16 (OpenVINO's
``INFERENCE_PRECISION_HINT``; the ops that compute the RoIs' boxes, and RoIAlign in the float
graph, stay float32), and int8 by ONNX Runtime's static post-training quantiser (QDQ nodes,
which OpenVINO runs as int8 kernels; the other ops in float32, or in bfloat16 with
``int8-bf16``; ``int8-heads`` quantises the mask and semantic heads only).

Running an exported model needs only OpenVINO and NumPy (no torch, no Detectron2):

    python3 tools/openvino_backend.py output/model.xml image.npy [height width] [--save out.npz]

prints each output's name, shape and dtype and saves the outputs by name (``image.npy``: float32
(3, H, W), 0..255, in the model's input format, resized as the test loader resizes; height and
width for a panoptic model; environment variable ``PANET_D2_PRECISION``: one of ``PRECISIONS``);
a file or value it cannot use is one "ERROR:" line naming it (exit code 2; the image and
``--save`` checked before the model runs).
Importing this module imports neither torch nor panet_d2.
"""

import os
import sys

import numpy as np

__all__ = [
    "PRECISIONS",
    "sequences_as_slices",
    "batched_matmuls_as_gemms",
    "box_path",
    "mark_precise",
    "float_inputs_for_float_ops",
    "quantize_onnx",
    "convert_onnx",
    "MiscompiledError",
    "PrecisionMismatchError",
    "zeroed_activations",
    "int8_heads_refusal",
    "OpenVinoModel",
]

PRECISIONS = ("fp32", "bf16", "int8", "int8-bf16", "int8-heads")
# the most pixels of a panoptic output (HEIGHT x WIDTH): those of the largest image panet_d2
# reads (PIL's decompression-bomb limit, 2 x PIL.Image.MAX_IMAGE_PIXELS)
MAX_OUTPUT_PIXELS = 2 * 89478485
# INFERENCE_PRECISION_HINT of each precision: int8 graphs (int8, int8-bf16, int8-heads: each its
# quantised set, INT8_QUANTISED) run their QDQ-marked ops in int8, the rest in float32 or bfloat16.
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "int8-bf16": "bf16", "int8-heads": "f32"}

# Per int8 precision, the ONNX ops quantised and the name prefixes of those left float (measured
# in docs/deployment.md): int8 quantises every convolution (backbone, FPN, bottom-up path, RPN
# head's shared 3x3 conv, mask head with its deconvolution, semantic head) and fully connected
# layer (box head, FF) but the RPN head's outputs (objectness, box deltas) and the box predictor;
# int8-bf16 quantises the convolutions only, not the box head's (HHD): its accuracy needs that;
# int8-heads only the mask and semantic heads, whose outputs no box depends on, but not the
# convolutions that read the tensors a RoIAlign reads (OpenVINO's RoIAlign would read their
# rounded copy: openvino-fq-branch-roialign below): its boxes are float32's.
_FLOAT_OUTPUTS = (
    "/proposal_generator/rpn_head/objectness_logits",
    "/proposal_generator/rpn_head/anchor_deltas",
    "/roi_heads/box_predictor/",
)
INT8_QUANTISED = {
    "int8": (("Conv", "ConvTranspose", "Gemm"), _FLOAT_OUTPUTS),
    "int8-bf16": (("Conv",), _FLOAT_OUTPUTS + ("/roi_heads/box_head/",)),
    "int8-heads": (
        ("Conv", "ConvTranspose", "Gemm"),
        _FLOAT_OUTPUTS + ("/backbone/", "/proposal_generator/", "/roi_heads/box_head/"),
    ),
}


# UPSTREAM-WORKAROUND onnx-sequence-in-loop: OpenVINO 2026.4's CPU plugin cannot compile a
# SplitToSequence read in a Loop, which Detectron2 0.6's scripted paste_masks_in_image makes.
def sequences_as_slices(onnx_model) -> int:
    """
    Replace, in place, every ``SplitToSequence(x, split)`` (1-D ``x``, ``split`` a 1-D tensor of
    sizes, axis 0) whose sequence is only read by ``SequenceLength`` and by ``SequenceAt`` inside
    a ``Loop`` body by slices of ``x``: element ``i`` is ``x[ends[i] - split[i] : ends[i]]`` with
    ``ends = CumSum(split)``, the length is ``Shape(split)``. Detectron2's
    ``paste_masks_in_image`` (scripted inside the traced graph) makes such a sequence of chunks of
    instance indices; OpenVINO's CPU plugin cannot compile the dynamic number of outputs that
    its conversion of ``SplitToSequence`` has. Returns the number of sequences replaced.
    """
    import onnx
    from onnx import helper

    changed = 0
    graphs = [onnx_model.graph]
    while graphs:
        graph = graphs.pop()
        for node in list(graph.node):
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
            if node.op_type != "SplitToSequence" or len(node.input) != 2:
                continue
            if any(a.name == "axis" and a.i != 0 for a in node.attribute):
                continue
            x, split = node.input
            seq = node.output[0]
            p = seq + "__slices"
            ends, starts, num = p + "_ends", p + "_starts", p + "_len"
            zero, axes = p + "_zero", p + "_axes"
            new = [
                helper.make_node("Constant", [], [zero], value_int=0),
                helper.make_node("Constant", [], [axes], value_ints=[0]),
                helper.make_node("CumSum", [split, zero], [ends]),
                helper.make_node("Sub", [ends, split], [starts]),
                helper.make_node("Shape", [split], [num + "_1d"]),
                helper.make_node("Squeeze", [num + "_1d", axes], [num]),
            ]
            index = list(graph.node).index(node)
            graph.node.remove(node)
            for k, n in enumerate(new):
                graph.node.insert(index + k, n)
            for user in graph.node:
                if user.op_type == "SequenceLength" and user.input[0] == seq:
                    user.op_type = "Identity"
                    user.input[0] = num
                if user.op_type == "Loop":
                    body = [a.g for a in user.attribute if a.name == "body"][0]
                    for at in [n for n in body.node if n.op_type == "SequenceAt"]:
                        if at.input[0] != seq:
                            continue
                        i, out = at.input[1], at.output[0]
                        q = out + "__slice"
                        i1 = q + "_i"
                        replacement = [
                            helper.make_node("Reshape", [i, q + "_shape"], [i1]),
                            helper.make_node("Gather", [starts, i1], [q + "_start"]),
                            helper.make_node("Gather", [ends, i1], [q + "_end"]),
                            helper.make_node("Slice", [x, q + "_start", q + "_end", axes], [out]),
                        ]
                        shape = helper.make_node("Constant", [], [q + "_shape"], value_ints=[1])
                        at_index = list(body.node).index(at)
                        body.node.remove(at)
                        for k, n in enumerate([shape] + replacement):
                            body.node.insert(at_index + k, n)
            changed += 1
    return changed


def _is_constant(graph, name, values):
    """Whether an initializer or a ``Constant`` node makes ``name`` with the 1-D ``values``."""
    from onnx import numpy_helper

    found = [numpy_helper.to_array(i) for i in graph.initializer if i.name == name]
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute[0].name == "value":
            found.append(numpy_helper.to_array(n.attribute[0].t))
    return len(found) == 1 and found[0].ravel().tolist() == list(values)


def _level_inputs(graph, x, num_levels):
    """The per-level tensors r_l (M, ...) of ``x`` = Transpose(Reshape(Concat(Unsqueeze(r_l, 1)),
    (M, L, -1)), (1, 0, 2)): the pooler's levels stacked and flattened for AFP's fc1, so that
    ``x[l]`` is ``Flatten(r_l)``; None where ``x`` is made otherwise."""
    made = {o: n for n in graph.node for o in n.output}

    def node(name, op_type):
        n = made.get(name)
        return n if n is not None and n.op_type == op_type else None

    transpose = node(x, "Transpose")
    perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"] if transpose else []
    reshape = node(transpose.input[0], "Reshape") if perm == [[1, 0, 2]] else None
    shape = node(reshape.input[1], "Concat") if reshape else None
    concat = node(reshape.input[0], "Concat") if shape and len(shape.input) == 2 else None
    if concat is None or [a.i for a in concat.attribute if a.name == "axis"] != [1]:
        return None
    head = node(shape.input[0], "Slice")  # Shape(concat)[0:2] and -1: a flatten from axis 2
    source = node(head.input[0], "Shape") if head and len(head.input) in (3, 4) else None
    if not (source and not source.attribute and source.input[0] == concat.output[0]):
        return None  # (a Shape with start / end attributes gives part of the shape)
    if len(concat.input) != num_levels:
        return None
    flatten = [(head.input[1], [0]), (head.input[2], [2]), (shape.input[1], [-1])]
    flatten += [(axes, [0]) for axes in head.input[3:]]  # (starts, ends, axes)
    if not all(_is_constant(graph, name, values) for name, values in flatten):
        return None
    levels = [node(i, "Unsqueeze") for i in concat.input]
    if not all(u and len(u.input) == 2 and _is_constant(graph, u.input[1], [1]) for u in levels):
        return None
    return [u.input[0] for u in levels]


def batched_matmuls_as_gemms(onnx_model) -> int:
    """
    Replace, in place, every ``Add(MatMul(x, W), B)`` of constant ``W`` (L, K, N) and ``B``
    (L, 1, N) (the AFP box head's per-level fc1, ``GroupedLinear``) by one ``Gemm`` per level
    (``x`` split along axis 0, or each level's pooled features flattened where ``x`` stacks them,
    the results concatenated): the same products, as the 2-D ``Gemm`` that ONNX Runtime's
    quantiser quantises per output channel. Returns the number replaced.
    """
    from onnx import helper, numpy_helper

    graph = onnx_model.graph
    inits = {i.name: i for i in graph.initializer}
    opset = max(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))
    changed = 0
    if opset < 13:  # Squeeze / Unsqueeze with their axes as an input
        return changed
    for matmul in [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]:
        users = [n for n in graph.node if matmul.output[0] in n.input]
        if len(users) != 1 or users[0].op_type != "Add" or len(inits[matmul.input[1]].dims) != 3:
            continue
        add, weight = users[0], numpy_helper.to_array(inits[matmul.input[1]])
        bias = [inits.get(i) for i in add.input if i != matmul.output[0]]
        bias = numpy_helper.to_array(bias[0]) if len(bias) == 1 and bias[0] else None
        if bias is None or bias.shape != (weight.shape[0], 1, weight.shape[2]):
            continue
        p, L = matmul.name.rsplit("/", 1)[0] + "/Gemm", weight.shape[0]
        graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), p + "_0"))
        levels = _level_inputs(graph, matmul.input[0], L)
        if levels:  # x[i] is level i's pooled features, flattened
            new = [
                helper.make_node("Flatten", [r], [f"{p}_m{i}"], f"{p}_f{i}", axis=1)
                for i, r in enumerate(levels)
            ]
        else:
            split = {"num_outputs": L} if opset >= 18 else {}  # equal parts along axis 0
            xs = [f"{p}_x{i}" for i in range(L)]
            new = [helper.make_node("Split", [matmul.input[0]], xs, p + "_split", **split)]
            new += [
                helper.make_node("Squeeze", [xs[i], p + "_0"], [f"{p}_m{i}"], f"{p}_s{i}")
                for i in range(L)
            ]
        for i in range(L):
            for name, value in ((f"{p}_w{i}", weight[i].T.copy()), (f"{p}_b{i}", bias[i, 0])):
                graph.initializer.append(numpy_helper.from_array(value, name))
            new += [
                helper.make_node(
                    "Gemm",
                    [f"{p}_m{i}", f"{p}_w{i}", f"{p}_b{i}"],
                    [f"{p}_y{i}"],
                    f"{p}_{i}",
                    transB=1,
                ),
                helper.make_node("Unsqueeze", [f"{p}_y{i}", p + "_0"], [f"{p}_u{i}"], f"{p}_u{i}"),
            ]
        ys = [f"{p}_u{i}" for i in range(L)]
        new.append(helper.make_node("Concat", ys, add.output, p + "_concat", axis=0))
        index = list(graph.node).index(matmul)
        for n in (matmul, add):
            graph.node.remove(n)
        for name in {matmul.input[1]} | set(add.input) - {matmul.output[0]}:
            if not any(name in n.input for n in graph.node):  # only the fc's own
                graph.initializer.remove(inits[name])
        for k, n in enumerate(new):
            graph.node.insert(index + k, n)
        changed += 1
    if changed:
        _remove_unused_nodes(graph)
    return changed


# The layers that compute features (bfloat16 under the bf16 hint): the box path starts at their
# outputs (the RPN head's objectness and deltas, the box predictor's scores and deltas).
_FEATURE_LAYERS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


def box_path(ir) -> set:
    """
    Names of the ops of OpenVINO model ``ir`` that compute the boxes and batch indices that its
    ``ROIAlign`` ops read: from the outputs of the layers that compute features on (box decoding,
    top-k, NMS, the poolers' concatenation of batch indices and boxes).
    """
    names, todo = set(), []
    for op in ir.get_ops():
        if op.get_type_name() == "ROIAlign":
            todo += [op.input_value(1).get_node(), op.input_value(2).get_node()]
    while todo:
        op = todo.pop()
        stop = op.get_type_name() in _FEATURE_LAYERS + ("Parameter", "Constant")
        if not stop and op.get_friendly_name() not in names:
            names.add(op.get_friendly_name())
            todo += [value.get_node() for value in op.input_values()]
    return names


def mark_precise(xml_path: str, names) -> int:
    """
    Mark the ops named ``names`` (e.g. :func:`box_path`) in the IR at ``xml_path`` (rewritten in
    place) with OpenVINO's ``precise`` attribute, which keeps an op in float32 when the model is
    compiled in a lower precision. Unmarked, the bf16 hint ran the box path in bfloat16 too: the
    poolers' concatenation rounded every RoI's coordinates to 8 significant bits (1 px steps at
    128-256 px, 4 px at 512-1024) before RoIAlign (measured in docs/deployment.md). Returns how
    many ops.
    """
    import xml.etree.ElementTree as ET

    tree = ET.parse(xml_path)
    marked = 0
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") in names:
            rt_info = layer.find("rt_info")
            if rt_info is None:
                rt_info = ET.SubElement(layer, "rt_info")
            ET.SubElement(rt_info, "attribute", {"name": "precise", "version": "0"})
            marked += 1
    tree.write(xml_path, encoding="utf-8", xml_declaration=True)
    return marked


def _remove_unused_nodes(graph):
    """Removes the nodes of ``graph`` (not of its subgraphs) whose outputs nothing reads."""
    import onnx

    while True:
        read = {o.name for o in graph.output}
        todo = [graph]
        while todo:
            g = todo.pop()
            for n in g.node:
                read.update(n.input)
                todo.extend(a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
        dead = [n for n in graph.node if not read.intersection(n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


# UPSTREAM-WORKAROUND openvino-fq-branch-roialign: OpenVINO 2026.4's CPU plugin computes zeros
# for the FakeQuantize of a quantised convolution's output that a RoIAlign also reads in float.
_QUANTISED_READERS = ("RoiAlign",)


def float_inputs_for_float_ops(onnx_model, quantised) -> int:
    """
    Give, in place, every op of ``onnx_model`` that is not one of the ``quantised`` nodes (names)
    the float tensor where it reads a fake-quantised activation (``DequantizeLinear`` of a
    ``QuantizeLinear`` of it): ONNX Runtime's QDQ quantiser makes every reader of a tensor that it
    quantises for one op read the rounded copy (the RPN head's float output convolutions, the box
    predictor, a residual Add). RoIAlign keeps the copy (:data:`_QUANTISED_READERS`). Returns the
    number of inputs given back; the pairs then read by nobody are removed.
    """
    import onnx

    graph, producer, changed = onnx_model.graph, {}, 0
    todo = [graph]
    while todo:  # readers in subgraphs (Loop / If bodies) too
        g = todo.pop()
        producer.update({o: n for n in g.node for o in n.output})
        for n in g.node:
            todo.extend(a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
            if (g is graph and n.name in quantised) or n.op_type in _QUANTISED_READERS:
                continue
            for i, name in enumerate(n.input):
                dq = producer.get(name)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                q = producer.get(dq.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    n.input[i] = q.input[0]
                    changed += 1
    _remove_unused_nodes(graph)
    return changed


def quantize_onnx(
    onnx_path: str,
    output_path: str,
    calibration_inputs,
    input_names,
    precision: str = "int8",
    excluded_prefixes=None,
):
    """
    int8 post-training quantisation of an ONNX model by ONNX Runtime's static quantiser: QDQ
    format, per-channel int8 weights, uint8 activations (MinMax ranges over the calibration
    inputs), the ops that :data:`INT8_QUANTISED` gives ``precision`` but those whose names start
    with its prefixes (or ``excluded_prefixes``) and, for ``int8-heads``, those that read a tensor
    a RoIAlign reads; per-level fc layers first made per-level
    ``Gemm`` where ``Gemm`` is quantised (:func:`batched_matmuls_as_gemms`); the ops not quantised
    then read float tensors, not the quantised ops' rounded copies
    (:func:`float_inputs_for_float_ops`).

    Args:
        calibration_inputs (list[tuple[ndarray]]): the model's inputs for each calibration image.
        input_names (list[str]): the ONNX model's input names, in the order of those tuples.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration_inputs)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else dict(zip(input_names, item))

    op_types, default_excluded = INT8_QUANTISED[precision]
    excluded_prefixes = default_excluded if excluded_prefixes is None else excluded_prefixes
    model = onnx.load(onnx_path)
    if "Gemm" in op_types:
        batched_matmuls_as_gemms(model)
    quantised = {n.name for n in model.graph.node if n.op_type in op_types}
    excluded = {n for n in quantised if n.startswith(tuple(excluded_prefixes))}
    if precision == "int8-heads":  # UPSTREAM-WORKAROUND openvino-fq-branch-roialign
        pooled = {n.input[0] for n in model.graph.node if n.op_type == "RoiAlign"}
        excluded |= {
            n.name for n in model.graph.node if n.name in quantised and pooled & set(n.input)
        }
    quantize_static(
        model,
        output_path,
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types),
        nodes_to_exclude=sorted(excluded),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    model = onnx.load(output_path)
    float_inputs_for_float_ops(model, quantised.difference(excluded))
    onnx.save(model, output_path)
    return output_path


def convert_onnx(onnx_path: str, xml_path: str) -> str:
    """
    OpenVINO IR (``xml_path`` and its ``.bin``) of the ONNX model at ``onnx_path``, its chunk
    sequences first made slices (:func:`sequences_as_slices`); weights kept float32; the ops that
    compute the RoIs' boxes marked to stay float32 in a lower precision (:func:`box_path`,
    :func:`mark_precise`), and, in a graph not quantised, RoIAlign (R50 at 800 x 1216, 2
    threads, the bfloat16 hint: 4.11 s an image against 4.99 s; in the int8-bf16 graph it was
    slower, 1.98 s against 1.61 s, so not there; docs/deployment.md). Read by
    OpenVINO's ONNX frontend (``Core.read_model``): ``openvino.convert_model`` converts with the
    same frontend and adds offline graph transformations that the CPU plugin's compilation
    repeats; on the tests' models it took 8-16 s against 0.2 s, with the same latency (0.28 s
    vs 0.30 s on a 512 x 640 image, 1 thread).
    """
    import onnx
    import openvino as ov

    model = onnx.load(onnx_path)
    if sequences_as_slices(model):
        onnx_path = xml_path[: -len(".xml")] + ".sliced.onnx"
        onnx.save(model, onnx_path)
    ir = ov.Core().read_model(onnx_path)
    for output, name in zip(ir.outputs, [o.name for o in model.graph.output]):
        output.get_tensor().set_names({name})  # only the ONNX name (not the inner tensor's too)
    ov.save_model(ir, xml_path, compress_to_fp16=False)
    kept = set()
    if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):  # a float graph
        kept = {op.get_friendly_name() for op in ir.get_ops() if op.get_type_name() == "ROIAlign"}
    mark_precise(xml_path, box_path(ir) | kept)
    return xml_path


class MiscompiledError(RuntimeError):
    """OpenVINO computes an int8 graph otherwise than ONNX Runtime (:func:`zeroed_activations`)."""


def zeroed_activations(onnx_path: str, xml_path: str, inputs, input_names, precision="int8"):
    """
    The fake-quantised activations (``DequantizeLinear`` of ``QuantizeLinear``) of the QDQ graph
    at ``onnx_path`` that OpenVINO, compiling its IR at ``xml_path`` for ``precision``, computes
    as all zeros on ``inputs`` (one tuple of arrays, in ``input_names``' order) where ONNX Runtime
    does not: the fault of UPSTREAM-WORKAROUND openvino-fq-branch-roialign, in any op pattern.
    Returns their names (list, graph order; empty: none).
    """
    import onnx
    import onnxruntime
    import openvino as ov

    model = onnx.load(onnx_path)
    producer = {o: n for n in model.graph.node for o in n.output}
    names = [
        n.output[0]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear"
        and getattr(producer.get(n.input[0]), "op_type", None) == "QuantizeLinear"
    ]
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(t) for t in names if t not in outputs
    )
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = dict(zip(input_names, inputs))
    nonzero = {t for t, a in zip(names, session.run(names, feed)) if np.any(a)}
    del session, model
    core = ov.Core()
    ir = core.read_model(xml_path)
    known = {t for op in ir.get_ops() for out in op.outputs() for t in out.get_names()}
    probed = [t for t in names if t in known and t in nonzero]
    ir.add_outputs(probed)
    compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": _HINTS[precision]})
    results = compiled.create_infer_request().infer([np.asarray(x) for x in inputs])
    zero = {t for o in compiled.outputs for t in o.get_names() if not np.any(results[o])}
    return [t for t in probed if t in zero]


def int8_heads_refusal(model):
    """The one-line refusal of ``int8-heads`` for a model (a torch module) with neither a mask
    head nor a semantic head (a detection model), where it would quantise nothing; else None."""
    if getattr(getattr(model, "roi_heads", None), "mask_on", False):
        return None
    if getattr(model, "sem_seg_head", None) is not None:
        return None
    return (
        "int8-heads quantises the mask and semantic heads; this model has neither (a detection "
        "model): it would run as fp32"
    )


class PrecisionMismatchError(ValueError):
    """An int8 precision for a float IR, or a float one for a quantised IR."""


class OpenVinoModel:
    """
    An OpenVINO IR compiled for the CPU: ``model(*inputs)`` with NumPy arrays (or anything
    ``np.asarray`` takes) in the order of the ONNX model's inputs, returning the list of output
    arrays in the order of its outputs.

    Args:
        precision: "fp32", "bf16" (INFERENCE_PRECISION_HINT bf16: float ops in bfloat16 where
            the processor has bfloat16 instructions), "int8" (an IR made from a quantised ONNX
            graph; its other ops float32; "int8-heads" the same) or "int8-bf16" (such an IR, its
            other ops bfloat16).
        threads (int or None): INFERENCE_NUM_THREADS (None: OpenVINO's default).
    """

    def __init__(self, xml_path: str, precision: str = "fp32", threads=None):
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError("precision {!r}: one of {}".format(precision, PRECISIONS))
        config = {"INFERENCE_PRECISION_HINT": _HINTS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.xml_path = xml_path
        core = ov.Core()
        model = core.read_model(xml_path)
        quantised = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        if quantised != precision.startswith("int8"):
            raise PrecisionMismatchError(
                "precision {!r} does not fit {}: its IR {} (exported with --precision {})".format(
                    precision,
                    xml_path,
                    "is quantised" if quantised else "has no quantised op",
                    "int8, int8-bf16 or int8-heads" if quantised else "fp32 or bf16",
                )
            )
        # the IR's names: compiling may add inner tensors' names to an output
        self.output_names = [o.get_any_name() for o in model.outputs]
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, *inputs):
        arrays = [np.asarray(x) for x in inputs]
        results = self.request.infer(arrays)
        return [np.array(results[o]) for o in self.compiled.outputs]


def _refuse(line):
    """Exit with ``line`` on stderr and exit code 2 (an input to fix, as the other tools)."""
    print(line, file=sys.stderr)
    sys.exit(2)


def _runner_inputs(model, image_path, size):
    """The inputs of :func:`main`: the image (float32 (3, H, W)) and, for a panoptic model, its
    output height and width; a bad one is a ``SystemExit`` naming it and what is allowed."""
    try:
        image = np.load(image_path)  # allow_pickle=False: data only
    except (OSError, ValueError) as e:  # not NumPy's advice to unpickle: a .npy holds numbers
        why = "not an array of numbers saved by numpy.save" if "allow_pickle" in str(e) else e
        _refuse("ERROR: cannot read the image {!r}: {}".format(image_path, why))
    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[0] != 3
        or min(image.shape) < 1
        or not (np.issubdtype(image.dtype, np.number) and np.isfinite(image).all())
    ):
        _refuse(
            "ERROR: the image {!r} is {} {}: expected finite numbers of shape (3, H, W), 0..255 in "
            "the model's input format".format(
                image_path, getattr(image, "dtype", type(image).__name__), np.shape(image)
            )
        )
    inputs = [image.astype(np.float32)]
    if len(size) != len(model.compiled.inputs) - 1:
        _refuse(
            "ERROR: {} takes {} input(s): the image{}".format(
                model.xml_path,
                len(model.compiled.inputs),
                " and its HEIGHT WIDTH" if len(model.compiled.inputs) == 3 else " only",
            )
        )
    for value in size:
        if not value.isdigit() or int(value) < 1:
            _refuse("ERROR: HEIGHT and WIDTH are positive integers, not {!r}".format(value))
        inputs.append(np.array(int(value), dtype=np.int64))
    if size and int(size[0]) * int(size[1]) > MAX_OUTPUT_PIXELS:
        _refuse(
            "ERROR: HEIGHT x WIDTH {} x {}: the output size (the image's before resizing) is at "
            "most {} pixels, the largest image panet_d2 reads".format(*size, MAX_OUTPUT_PIXELS)
        )
    return inputs


def main(argv=None):
    """The torch-free runner: see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    save = None
    if "--save" in argv[:-1]:
        save = argv.pop(argv.index("--save") + 1)
        argv.remove("--save")
    if save:  # before the model runs
        folder = os.path.dirname(os.path.abspath(save))
        if os.path.isdir(save) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            _refuse(
                "ERROR: --save {!r}: give a .npz file in a folder that exists and can be "
                "written".format(save)
            )
    if len(argv) not in (2, 4):
        _refuse("usage: openvino_backend.py MODEL.xml IMAGE.npy [HEIGHT WIDTH] [--save OUT.npz]")
    precision = os.environ.get("PANET_D2_PRECISION", "fp32")
    if precision not in PRECISIONS:
        _refuse("ERROR: PANET_D2_PRECISION={!r}: one of {}".format(precision, PRECISIONS))
    try:
        model = OpenVinoModel(argv[0], precision)
    except PrecisionMismatchError as e:
        _refuse("ERROR: PANET_D2_PRECISION={!r}: {}".format(precision, e))
    except Exception as e:  # OpenVINO's frontends raise their own types
        _refuse("ERROR: cannot read the model {!r}: {}".format(argv[0], " ".join(str(e).split())))
    inputs = _runner_inputs(model, argv[1], argv[2:])
    try:
        outputs = dict(zip(model.output_names, model(*inputs)))
    except RuntimeError as e:  # OpenVINO's own checks, e.g. an image too small for the model
        _refuse("ERROR: the model cannot run this input: " + str(e).strip().splitlines()[-1])
    for name, out in outputs.items():
        print("{} {} {}".format(name, list(out.shape), out.dtype))
    if save:
        np.savez(save, **outputs)


if __name__ == "__main__":
    main()
