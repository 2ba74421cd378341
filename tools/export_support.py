# -*- coding: utf-8 -*-
"""
What tools/export_model.py and benchmarks/bench_export.py export with Detectron2's exporters: the
deployable copy of a model, TorchScript by scripting or tracing, ONNX (torch's TorchScript-based
exporter) and the exported model in ONNX Runtime, and the eager outputs an export is compared with.
As Detectron2's tools/deploy/export_model.py, tool support outside the package (docs/deployment.md).
"""

import copy
import io
import logging
from typing import Dict, List

import numpy as np
import torch
from torch import nn

from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.export.flatten import DictSchema, InstancesSchema
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from panet_d2.modeling.postprocessing.panoptic_merge import segments_to_info

logger = logging.getLogger("panet_d2.export_model")

# The fields of Instances in PANet's inference, for detectron2.export.scripting_with_instances.
SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
    "pred_masks": torch.Tensor,
}


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces, in place, each SyncBatchNorm (torch's, Detectron2's) by the BatchNorm2d of the
    same state; returns ``module`` or its replacement."""
    if isinstance(module, (nn.SyncBatchNorm, NaiveSyncBatchNorm)):
        args = ("num_features", "eps", "momentum", "affine", "track_running_stats")
        bn = nn.BatchNorm2d(*(getattr(module, a) for a in args))
        bn.load_state_dict(module.state_dict())
        return bn.train(module.training)
    for name, child in module.named_children():
        module._modules[name] = convert_sync_batchnorm(child)
    return module


def _plain(value):
    """``value`` with its (nested) omegaconf containers made plain; ``value`` itself if none."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if type(value) in (list, tuple):
        items = type(value)(_plain(v) for v in value)
        return items if any(a is not b for a, b in zip(items, value)) else value
    if type(value) is dict:
        items = {k: _plain(v) for k, v in value.items()}
        return items if any(items[k] is not v for k, v in value.items()) else value
    return value


def convert_omegaconf_attributes(module: nn.Module) -> nn.Module:
    """Replaces, in place, the omegaconf attributes of ``module`` and its submodules (left by a
    LazyConfig's ``instantiate``) by plain lists and dicts; returns ``module``."""
    for m in module.modules():
        for name, value in list(vars(m).items()):
            new = _plain(value) if name not in ("_parameters", "_buffers", "_modules") else value
            if new is not value:
                object.__setattr__(m, name, new)
    return module


def deployable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in inference mode, that TorchScript compiles."""
    return convert_omegaconf_attributes(convert_sync_batchnorm(copy.deepcopy(model))).eval()


def is_panoptic(model: nn.Module) -> bool:
    """Whether ``model`` exports the panoptic tensor form (``PanopticPANet.inference_tensors``)."""
    return hasattr(model, "inference_tensors")


def sample_inputs(model: nn.Module, image: torch.Tensor, height=None, width=None):
    """The flat inputs of the exported ``model`` for one image (3, H, W): ``(image,)`` (float32),
    for a panoptic model ``(image, height, width)`` (0-dim int64; default: the image's size)."""
    image = image.to(torch.float32)
    if not is_panoptic(model):
        return (image,)
    height = image.shape[-2] if height is None else height
    width = image.shape[-1] if width is None else width
    return (image, torch.tensor(int(height)), torch.tensor(int(width)))


def inference_function(model: nn.Module):
    """The function ``f(model, *sample_inputs)`` that the exports record (docs/deployment.md)."""
    if is_panoptic(model):

        def panoptic(model, image, height, width):
            return model.inference_tensors([{"image": image, "height": height, "width": width}])[0]

        return panoptic
    if not isinstance(model, GeneralizedRCNN):
        raise TypeError(
            "Cannot export a {}: tools/export_model.py exports GeneralizedRCNN (PANet) and "
            "PanopticPANet models.".format(type(model).__name__)
        )

    def instances(model, image):
        return model.inference([{"image": image}], do_postprocess=False)[0]

    return instances


def trace_model(model: nn.Module, inputs):
    """TorchScript by tracing (``TracingAdapter``) of a copy of ``model`` on ``inputs``
    (:func:`sample_inputs`); returns the traced model and the schema of its outputs."""
    model = deployable_copy(model)
    adapter = TracingAdapter(model, tuple(inputs), inference_function(model)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    return traced, adapter.outputs_schema


class ScriptableInstanceModel(nn.Module):
    """A GeneralizedRCNN returning per image a dict of its Instances' fields, which TorchScript
    reloads in another process (pytorch/pytorch#46944), as in Detectron2's tools/deploy."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        return [r.get_fields() for r in self.model.inference(inputs, do_postprocess=False)]


def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript by scripting (``scripting_with_instances``) of a copy of ``model``: per input
    dict ("image"; panoptic: "height", "width" optional), a dict of tensors."""
    model = deployable_copy(model)
    if not is_panoptic(model):
        inference_function(model)  # checks the type
        model = ScriptableInstanceModel(model).eval()
    return scripting_with_instances(model, SCRIPTING_FIELDS)


def eager_outputs(outputs, image_size, height: int, width: int):
    """The eager model's output for one image from an exported model's ``outputs`` (``Instances``
    or its fields at ``image_size``, the exported input's; or the panoptic dict), instances resized
    to ``height``, ``width`` as by ``detector_postprocess``."""
    fields = dict(outputs.get_fields()) if isinstance(outputs, Instances) else dict(outputs)
    panoptic = "panoptic_seg" in fields
    if panoptic:
        image_size = height, width = tuple(fields["panoptic_seg"].shape)
    instances = Instances(tuple(int(s) for s in image_size))
    for key in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        if key in fields:
            value = fields[key]
            is_box = key == "pred_boxes" and not isinstance(value, Boxes)
            instances.set(key, Boxes(value) if is_box else value)
    if not panoptic:
        return {"instances": detector_postprocess(instances, height, width)}
    return {
        "panoptic_seg": (fields["panoptic_seg"], segments_to_info(fields["segments"])),
        "sem_seg": fields["sem_seg"],
        "instances": instances,
    }


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
