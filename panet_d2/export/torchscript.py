"""TorchScript by scripting or tracing, the deployable copy of a model, and the eager outputs."""

import copy
from typing import Dict, List

import torch
from torch import nn

from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

from ..modeling.postprocessing.panoptic_merge import segments_to_info

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
            "Cannot export a {}: panet_d2.export exports GeneralizedRCNN (PANet) and PanopticPANet "
            "models.".format(type(model).__name__)
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
