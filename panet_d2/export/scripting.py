# -*- coding: utf-8 -*-
"""TorchScript by scripting (Detectron2's ``scripting_with_instances``)."""

from typing import Dict, List

import torch
from torch import nn

from detectron2.export import scripting_with_instances
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes

from .tracing import deployable_copy, inference_function, is_panoptic

__all__ = ["SCRIPTING_FIELDS", "ScriptableInstanceModel", "script_model"]

# The fields of Instances in PANet's inference, for detectron2.export.scripting_with_instances.
SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
    "pred_masks": torch.Tensor,
}


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
