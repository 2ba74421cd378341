# -*- coding: utf-8 -*-
"""TorchScript by tracing, the deployable copy of a model, and the eager outputs of an export."""

import copy

import torch
from torch import nn

from detectron2.export import TracingAdapter
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from ..modeling.postprocessing.panoptic_merge import segments_to_info

__all__ = [
    "convert_sync_batchnorm",
    "convert_omegaconf_attributes",
    "deployable_copy",
    "is_panoptic",
    "sample_inputs",
    "inference_function",
    "trace_model",
    "eager_outputs",
]


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
    The function ``f(model, *sample_inputs)`` that the exports record (docs/deployment.md);
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
