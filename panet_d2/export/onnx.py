"""ONNX export by torch's TorchScript-based exporter, and the exported model in ONNX Runtime."""

import io
import logging

import numpy as np
import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.export.flatten import DictSchema, InstancesSchema

from .torchscript import deployable_copy, inference_function

logger = logging.getLogger(__name__)

# RoIAlign with aligned=True exists from opset 16 on (docs/deployment.md)
ONNX_OPSET_VERSION = 16


def _output_names(schema, num_outputs):
    """Names of the flat outputs: the dict keys / Instances fields (then "image_size")."""
    if isinstance(schema, DictSchema) and all(s == 1 for s in schema.sizes):
        names = list(schema.keys) + (["image_size"] if isinstance(schema, InstancesSchema) else [])
        if len(names) == num_outputs:
            return names
    return ["output{}".format(k) for k in range(num_outputs)]


# UPSTREAM-WORKAROUND onnx-if-branch-types: Detectron2 0.6 paste_masks_in_image returns uint8 for
# zero instances and bool otherwise; ONNX Runtime 1.x refuses an If with such branches.
def _unify_if_branch_types(onnx_model):
    """Gives each ``If``'s empty-tensor branch (``ConstantOfShape``) the other branch's type."""
    import onnx
    from onnx import helper, numpy_helper

    graphs = [onnx_model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
            if node.op_type != "If":
                continue
            branches = {a.name: a.g for a in node.attribute}
            then_g, else_g = branches["then_branch"], branches["else_branch"]
            for then_out, else_out in zip(then_g.output, else_g.output):
                for g, out, other in ((then_g, then_out, else_out), (else_g, else_out, then_out)):
                    elem_type = other.type.tensor_type.elem_type
                    if out.type.tensor_type.elem_type == elem_type:
                        break
                    producer = [n for n in g.node if out.name in n.output]
                    if producer and producer[0].op_type == "ConstantOfShape":
                        zero = np.zeros(1, helper.tensor_dtype_to_np_dtype(elem_type))
                        for a in producer[0].attribute:
                            if a.name == "value":
                                a.t.CopyFrom(numpy_helper.from_array(zero))
                        out.type.tensor_type.elem_type = elem_type
                        break


def export_onnx(model: nn.Module, inputs, f, opset_version: int = ONNX_OPSET_VERSION):
    """ONNX export to ``f`` of a copy of ``model`` traced on ``inputs`` (:func:`sample_inputs`),
    every size dynamic; returns the schema that rebuilds its outputs."""
    import onnx

    model = deployable_copy(model)
    adapter = TracingAdapter(model, tuple(inputs), inference_function(model)).eval()
    input_names = ["image", "height", "width"][: len(adapter.flattened_inputs)]
    with torch.no_grad():
        outputs = adapter(*adapter.flattened_inputs)
        output_names = _output_names(adapter.outputs_schema, len(outputs))
        dynamic_axes = {"image": {1: "image_height", 2: "image_width"}}
        for name, value in zip(output_names, outputs):
            dynamic_axes[name] = {d: "{}_{}".format(name, d) for d in range(value.dim())}
        buffer = io.BytesIO()
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            buffer,
            dynamo=False,  # the dynamo exporter fails inside Detectron2's RPN
            opset_version=opset_version,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    onnx_model = onnx.load_from_string(buffer.getvalue())
    _unify_if_branch_types(onnx_model)
    onnx.save(onnx_model, f)
    logger.info("ONNX inputs {}, outputs {}".format(input_names, output_names))
    return adapter.outputs_schema


class OnnxRuntimeModel:
    """An ONNX model in ONNX Runtime, called like the traced model (``model(*sample_inputs)``);
    returns the outputs rebuilt by ``schema`` (:func:`export_onnx`'s), or flat if it is None."""

    def __init__(self, path_or_bytes, schema, providers=("CPUExecutionProvider",)):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(path_or_bytes, providers=list(providers))
        self.schema = schema
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs):
        feed = {name: x.cpu().numpy() for name, x in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        return outputs if self.schema is None else self.schema(outputs)
