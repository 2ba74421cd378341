# -*- coding: utf-8 -*-
"""
Deployment of PANet and panoptic PANet with Detectron2's exporters (``detectron2.export``):
TorchScript by scripting (``scripting_with_instances``) or tracing (``TracingAdapter``), and ONNX.

What each model exports (the same as :func:`inference_function` computes in eager mode):

* instance / detection models (``GeneralizedRCNN``): as Detectron2 exports Mask R-CNN, the raw
  detections of ``model.inference(inputs, do_postprocess=False)`` at the input size (boxes,
  scores, classes, and 28x28 mask probabilities); ``detector_postprocess`` (resize, mask pasting)
  stays with the caller, as in Detectron2.
* panoptic models (:class:`PanopticPANet`): ``model.inference_tensors``, everything up to the
  panoptic merge included: inputs image, height, width; outputs panoptic_seg, segments (one row
  per segment, ``SEGMENT_FIELDS``), sem_seg and the instances at (height, width).

ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``; the dynamo exporter
fails inside Detectron2's RPN) at opset 16 (:data:`ONNX_OPSET_VERSION`): RoIAlign with
``aligned=True`` (half-pixel coordinates) exists from opset 16 on; at Detectron2's default opset 11
the boxes are off by more than 100 pixels. The image size is a dynamic axis.

What the graphs hold where eager PyTorch is faster than the generic exported ops
(docs/deployment.md): AFP's all-level RoIAlign is one batched op in TorchScript graphs on the CPU,
as in eager mode, and ONNX's RoiAlign per level in ONNX graphs
(:class:`~panet_d2.modeling.AdaptiveFeaturePooler`); detection post-processing runs one NMS per
class in every form (:mod:`panet_d2.modeling.fast_rcnn`), never torchvision's traced NMS over all
(box, class) candidates at once.

Models whose norms are SyncBatchNorm (the MBN configs) are exported with BatchNorm2d in their place
(:func:`convert_sync_batchnorm`: the same computation in inference; TorchScript cannot compile
SyncBatchNorm). Models built from a LazyConfig (``detectron2.config.instantiate``) keep list and
dict arguments as omegaconf ListConfig / DictConfig attributes, which TorchScript cannot compile
either: they are exported as plain lists and dicts (:func:`convert_omegaconf_attributes`).
"""

import copy
import io
import logging
from typing import Dict, List

import torch
from torch import nn

from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.export.flatten import DictSchema, InstancesSchema
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from .modeling.postprocessing.panoptic_merge import SEGMENT_FIELDS, segments_to_info

__all__ = [
    "ONNX_OPSET_VERSION",
    "SCRIPTING_FIELDS",
    "SEGMENT_FIELDS",
    "convert_sync_batchnorm",
    "convert_omegaconf_attributes",
    "deployable_copy",
    "is_panoptic",
    "sample_inputs",
    "inference_function",
    "ScriptableInstanceModel",
    "script_model",
    "trace_model",
    "export_onnx",
    "OnnxRuntimeModel",
    "eager_outputs",
]

logger = logging.getLogger(__name__)

# The ONNX opset of the project's exports (see the module docstring).
ONNX_OPSET_VERSION = 16

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
    """
    Replace, in place, every SyncBatchNorm (torch's and Detectron2's NaiveSyncBatchNorm) by a
    BatchNorm2d with the same parameters and statistics: the same computation in inference, and
    one that TorchScript compiles. Returns ``module`` (or its replacement if it is one itself).
    """
    if isinstance(module, (nn.SyncBatchNorm, NaiveSyncBatchNorm)):
        bn = nn.BatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        bn.load_state_dict(module.state_dict())
        return bn.train(module.training)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child)
        if new is not child:
            module._modules[name] = new
    return module


def _plain(value):
    """``value`` with every omegaconf container in it (nested in lists, tuples and dicts too)
    converted to plain lists and dicts; ``value`` itself if there is none."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        if any(new is not old for new, old in zip(items, value)):
            return type(value)(items) if type(value) in (list, tuple) else value
    if isinstance(value, dict) and type(value) is dict:
        items = {k: _plain(v) for k, v in value.items()}
        if any(items[k] is not v for k, v in value.items()):
            return items
    return value


def convert_omegaconf_attributes(module: nn.Module) -> nn.Module:
    """
    Replace, in place, on ``module`` and every submodule, the attributes that hold omegaconf
    ListConfig / DictConfig (what ``detectron2.config.instantiate`` leaves of a LazyConfig's lists
    and dicts, e.g. ``ResNet._out_features``) by plain lists and dicts, which TorchScript compiles.
    Returns ``module``.
    """
    for m in module.modules():
        for name, value in list(vars(m).items()):
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            new = _plain(value)
            if new is not value:
                object.__setattr__(m, name, new)
    return module


def deployable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in inference mode, SyncBatchNorm converted and omegaconf attributes made
    plain (:func:`convert_omegaconf_attributes`); ``model`` is unchanged."""
    model = convert_omegaconf_attributes(convert_sync_batchnorm(copy.deepcopy(model)))
    return model.eval()


def is_panoptic(model: nn.Module) -> bool:
    """Whether ``model`` exports the panoptic tensor form (``PanopticPANet.inference_tensors``)."""
    return hasattr(model, "inference_tensors")


def sample_inputs(model: nn.Module, image: torch.Tensor, height=None, width=None):
    """
    The flat tensor inputs of the exported ``model`` for one image (3, H, W) as the model takes it
    (cfg.INPUT.FORMAT, 0..255), converted to float32: ``(image,)``, and for a panoptic model
    ``(image, height, width)`` (0-dim int64; default: the image's size).
    """
    image = image.to(torch.float32)
    if not is_panoptic(model):
        return (image,)
    height = image.shape[-2] if height is None else height
    width = image.shape[-1] if width is None else width
    return (image, torch.tensor(int(height)), torch.tensor(int(width)))


def inference_function(model: nn.Module):
    """
    The function ``f(model, *sample_inputs)`` that the exports record (see the module docstring);
    ``TracingAdapter(model, inputs, f)`` traces it.
    """
    if is_panoptic(model):

        def panoptic(model, image, height, width):
            return model.inference_tensors([{"image": image, "height": height, "width": width}])[0]

        return panoptic

    if not isinstance(model, GeneralizedRCNN):
        raise TypeError(
            "Cannot export a {}: panet_d2.export exports GeneralizedRCNN (PANet) and PanopticPANet "
            "models.".format(type(model).__name__)
        )

    def instances(model, image):
        return model.inference([{"image": image}], do_postprocess=False)[0]

    return instances


class ScriptableInstanceModel(nn.Module):
    """
    A GeneralizedRCNN whose output TorchScript can save and load in another process: per image a
    dict of tensors (the fields of ``model.inference(inputs, do_postprocess=False)``) instead of
    Detectron2's scripted Instances class (pytorch/pytorch#46944), as Detectron2's
    tools/deploy/export_model.py does.
    """

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        results = self.model.inference(inputs, do_postprocess=False)
        return [r.get_fields() for r in results]


def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """
    TorchScript by scripting (:func:`detectron2.export.scripting_with_instances`) of a copy of
    ``model``. Its forward takes ``list[dict[str, Tensor]]`` ("image"; "height" and "width" for a
    panoptic model, optional) and returns per image a ``dict[str, Tensor]``: the instance fields
    (:class:`ScriptableInstanceModel`), or the panoptic tensor form.
    """
    model = deployable_copy(model)
    if not is_panoptic(model):
        inference_function(model)  # checks the type
        model = ScriptableInstanceModel(model).eval()
    return scripting_with_instances(model, SCRIPTING_FIELDS)


def trace_model(model: nn.Module, inputs):
    """
    TorchScript by tracing (:class:`detectron2.export.TracingAdapter`) of a copy of ``model``.

    Args:
        inputs (tuple[Tensor]): :func:`sample_inputs`; the traced model takes tensors of the same
            kinds with other image sizes.

    Returns:
        (ScriptModule, Schema): the traced model (tensors in, a tuple of tensors out) and the
        schema that rebuilds its outputs (``Instances``, or the panoptic dict).
    """
    model = deployable_copy(model)
    adapter = TracingAdapter(model, tuple(inputs), inference_function(model)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    return traced, adapter.outputs_schema


def _output_names(schema, num_outputs: int) -> List[str]:
    """Names of the flat outputs: the dict keys / Instances fields (then "image_size")."""
    if isinstance(schema, DictSchema) and all(s == 1 for s in schema.sizes):
        names = list(schema.keys)
        if isinstance(schema, InstancesSchema):
            names.append("image_size")
        if len(names) == num_outputs:
            return names
    return ["output{}".format(k) for k in range(num_outputs)]


def _unify_if_branch_types(onnx_model) -> int:
    """
    Give the empty tensor that one branch of an ONNX ``If`` makes (``ConstantOfShape``) the element
    type of the other branch's output. Detectron2's ``paste_masks_in_image`` returns uint8 for
    zero instances and bool otherwise, which ONNX Runtime refuses to load. Returns the number of
    outputs changed.
    """
    import onnx
    from onnx import helper, numpy_helper

    changed = 0
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
                pairs = ((then_g, then_out, else_out), (else_g, else_out, then_out))
                for g, out, other in pairs:
                    elem_type = other.type.tensor_type.elem_type
                    if out.type.tensor_type.elem_type == elem_type:
                        break
                    producer = [n for n in g.node if out.name in n.output]
                    if producer and producer[0].op_type == "ConstantOfShape":
                        zero = (
                            torch.zeros(1)
                            .numpy()
                            .astype(helper.tensor_dtype_to_np_dtype(elem_type))
                        )
                        for a in producer[0].attribute:
                            if a.name == "value":
                                a.t.CopyFrom(numpy_helper.from_array(zero))
                        out.type.tensor_type.elem_type = elem_type
                        changed += 1
                        break
    return changed


def export_onnx(model: nn.Module, inputs, f, opset_version: int = ONNX_OPSET_VERSION):
    """
    ONNX export of a copy of ``model`` by tracing (the TorchScript-based exporter), with dynamic
    image size (and height / width of a panoptic model) and dynamic numbers of instances and
    segments.

    Args:
        inputs (tuple[Tensor]): :func:`sample_inputs`.
        f (str or file): where to write the model.

    Returns:
        Schema: rebuilds the outputs (a list of numpy arrays or tensors, in the order of the
        model's outputs) into ``Instances`` or the panoptic dict.
    """
    import onnx

    model = deployable_copy(model)
    adapter = TracingAdapter(model, tuple(inputs), inference_function(model)).eval()
    with torch.no_grad():
        num_outputs = len(adapter(*adapter.flattened_inputs))
    input_names = ["image", "height", "width"][: len(adapter.flattened_inputs)]
    output_names = _output_names(adapter.outputs_schema, num_outputs)
    dynamic_axes = {"image": {1: "image_height", 2: "image_width"}}
    with torch.no_grad():
        for name, value in zip(output_names, adapter(*adapter.flattened_inputs)):
            dynamic_axes[name] = {d: "{}_{}".format(name, d) for d in range(value.dim())}
        buffer = io.BytesIO()
        torch.onnx.export(
            adapter,
            adapter.flattened_inputs,
            buffer,
            dynamo=False,
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
    """
    An exported ONNX model in ONNX Runtime, called like the traced model: ``model(*inputs)`` with
    the tensors of :func:`sample_inputs`, returning the outputs rebuilt by ``schema`` (the value
    :func:`export_onnx` returned), or the flat list of output tensors if ``schema`` is None.
    """

    def __init__(self, path_or_bytes, schema, providers=("CPUExecutionProvider",)):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(path_or_bytes, providers=list(providers))
        self.schema = schema
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs):
        feed = {name: x.cpu().numpy() for name, x in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(o) for o in self.session.run(None, feed)]
        return outputs if self.schema is None else self.schema(outputs)


def eager_outputs(outputs, image_size, height: int, width: int):
    """
    The eager model's output for one image (the dict that Detectron2 models return and evaluators
    read) from an exported model's outputs: rebuilt by their schema, or a scripted model's dict.

    Args:
        outputs: of an instance model: ``Instances`` or a dict of its fields, at the input size;
            of a panoptic model: the panoptic dict, already at its output size.
        image_size (tuple[int]): the size of the image given to the exported model.
        height, width (int): the output size, as "height" and "width" of Detectron2's inputs.

    Returns:
        dict: ``{"instances": Instances}`` resized by Detectron2's ``detector_postprocess``, or
        ``{"panoptic_seg": (panoptic_seg, segments_info), "sem_seg": Tensor, "instances":
        Instances}``.
    """
    from detectron2.modeling.postprocessing import detector_postprocess

    fields = dict(outputs.get_fields()) if isinstance(outputs, Instances) else dict(outputs)
    panoptic = "panoptic_seg" in fields
    if panoptic:
        image_size = height, width = tuple(fields["panoptic_seg"].shape)
    instances = Instances(tuple(int(s) for s in image_size))
    for key in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
        if key in fields:
            value = fields[key]
            if key == "pred_boxes" and not isinstance(value, Boxes):
                value = Boxes(value)
            instances.set(key, value)
    if not panoptic:
        return {"instances": detector_postprocess(instances, height, width)}
    return {
        "panoptic_seg": (fields["panoptic_seg"], segments_to_info(fields["segments"])),
        "sem_seg": fields["sem_seg"],
        "instances": instances,
    }
