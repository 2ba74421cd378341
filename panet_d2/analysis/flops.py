# -*- coding: utf-8 -*-
"""
FLOP counts of the ops PANet adds, for Detectron2's ``FlopCountAnalysis``.

The project's FLOP path :func:`flop_count_analysis` (Detectron2's analysis with the handles below,
set through fvcore's public ``set_op_handle``); tools/run_d2_tool.py gives them to Detectron2's
``tools/analyze_model.py`` for its command only (:func:`panet_d2.compat.fvcore_op_handles`).
Importing panet_d2 changes no FLOP count.

fvcore counts convolutions, linear layers and matmuls, and Detectron2 ignores element-wise ops;
the ops below are "unsupported" there (skipped, counted as 0): the per-level fc1
(``aten::baddbmm``), the fusion over levels (``aten::amax`` / ``aten::sum``) and RoIAlign.

Counting convention (fvcore's): one multiply-add = one flop.

* ``aten::baddbmm`` (L, M, in) x (L, in, out): L * M * in * out (the bias add is element-wise);
* ``aten::amax`` / ``aten::sum`` over a dim: one op per input element that is folded into an
  output element, numel(input) - numel(output) ((L - 1) * M * C * H * W for an L-level fusion);
* ``torchvision::roi_align``: 4 multiply-adds (bilinear) per sample, sampling_ratio^2 samples per
  output element; with sampling_ratio 0 (adaptive: the samples depend on each box's size, which
  the traced graph does not show) counted as 1 sample per bin, a lower bound.
* ``aten::embedding_bag`` (the all-level RoIAlign of traced CPU graphs, ``multilevel_roi_align``):
  one multiply-add per index and embedding column, numel(indices) * dim: RoIAlign's count again
  (each bag is one output bin's sampling_ratio^2 samples x 4 bilinear taps).
"""

from numbers import Number
from typing import Any, List

from fvcore.nn.jit_handles import get_shape

from detectron2.utils.analysis import FlopCountAnalysis

__all__ = [
    "FLOP_HANDLES",
    "flop_count_analysis",
    "baddbmm_flop_jit",
    "reduction_flop_jit",
    "roi_align_flop_jit",
    "embedding_bag_flop_jit",
]


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """``baddbmm(bias, (B, N, K), (B, K, P))``: B * N * K * P multiply-adds."""
    b, n, k = get_shape(inputs[1])
    p = get_shape(inputs[2])[-1]
    return b * n * k * p


def reduction_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """A reduction (max or sum) over some dims: numel(input) - numel(output) ops."""
    return _numel(get_shape(inputs[0])) - _numel(get_shape(outputs[0]))


def roi_align_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """``roi_align(input, rois, scale, h, w, sampling_ratio, aligned)``: 4 * samples per output."""
    ratio = inputs[5].toIValue() if len(inputs) > 5 else 0
    samples = ratio * ratio if isinstance(ratio, int) and ratio > 0 else 1
    return 4 * samples * _numel(get_shape(outputs[0]))


def embedding_bag_flop_jit(inputs: List[Any], outputs: List[Any]) -> Number:
    """``embedding_bag(weight (V, D), indices, ...)``: numel(indices) * D multiply-adds."""
    return _numel(get_shape(inputs[1])) * get_shape(inputs[0])[-1]


# {op name: handle} of the ops above
FLOP_HANDLES = {
    "aten::baddbmm": baddbmm_flop_jit,
    "aten::amax": reduction_flop_jit,
    "aten::sum": reduction_flop_jit,
    "torchvision::roi_align": roi_align_flop_jit,
    "aten::embedding_bag": embedding_bag_flop_jit,
}


def flop_count_analysis(model, inputs) -> FlopCountAnalysis:
    """Detectron2's ``FlopCountAnalysis(model, inputs)`` that also counts :data:`FLOP_HANDLES`."""
    return FlopCountAnalysis(model, inputs).set_op_handle(**FLOP_HANDLES)
