"""FLOP handles of the ops Detectron2's ``FlopCountAnalysis`` skips in PANet (docs/design.md)."""

from math import prod
from numbers import Number
from typing import Any, List

from fvcore.nn.jit_handles import get_shape

from detectron2.utils.analysis import FlopCountAnalysis


def reduction_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """A reduction (max or sum) over some dims: numel(input) - numel(output) ops."""
    return prod(get_shape(inputs[0])) - prod(get_shape(outputs[0]))


def roi_align_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """``roi_align(input, rois, scale, h, w, sampling_ratio, aligned)``: 4 * samples per output."""
    ratio = inputs[5].toIValue() if len(inputs) > 5 else 0
    samples = ratio * ratio if isinstance(ratio, int) and ratio > 0 else 1
    return 4 * samples * prod(get_shape(outputs[0]))


def embedding_bag_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """``embedding_bag(weight (V, D), indices, ...)``: numel(indices) * D multiply-adds."""
    return prod(get_shape(inputs[1])) * get_shape(inputs[0])[-1]


FLOP_HANDLES = {"aten::amax": reduction_flop_jit, "aten::sum": reduction_flop_jit}
FLOP_HANDLES["torchvision::roi_align"] = roi_align_flop_jit
FLOP_HANDLES["aten::embedding_bag"] = embedding_bag_flop_jit


def flop_count_analysis(model, inputs) -> FlopCountAnalysis:
    """Detectron2's ``FlopCountAnalysis(model, inputs)`` that also counts :data:`FLOP_HANDLES`."""
    return FlopCountAnalysis(model, inputs).set_op_handle(**FLOP_HANDLES)
