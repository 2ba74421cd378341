"""Detectron (v1)'s quantised anchors, as the authors' PANet release uses (docs/design.md)."""

import math
from typing import List

import torch

from detectron2.modeling import ANCHOR_GENERATOR_REGISTRY
from detectron2.modeling.anchor_generator import BufferList, DefaultAnchorGenerator


@ANCHOR_GENERATOR_REGISTRY.register()
class DetectronAnchorGenerator(DefaultAnchorGenerator):
    """:class:`DefaultAnchorGenerator` (same keys and anchor order) with Detectron's rounding."""

    # a TorchScript constant (RPN reads it): the parent's Final annotation is not inherited
    box_dim: torch.jit.Final[int] = 4

    def _calculate_anchors(self, sizes, aspect_ratios):
        levels = zip(self.strides, sizes, aspect_ratios)  # (stride, sizes, aspect ratios) each
        return BufferList([self.generate_quantized_cell_anchors(*a).float() for a in levels])

    @staticmethod
    def generate_quantized_cell_anchors(
        stride: int, sizes: List[float], aspect_ratios: List[float]
    ) -> torch.Tensor:
        """(len(sizes) * len(aspect_ratios), 4) boxes (x0, y0, x1, y1) centred on 0, for anchor
        sizes S (pixels) and height / width ratios r at the stride s."""
        anchors = []
        for size in sizes:
            for r in aspect_ratios:
                w0 = round(math.sqrt(stride * stride / r))  # round() halves to even, as NumPy's
                h0 = round(w0 * r)
                w, h = w0 * size / stride, h0 * size / stride
                anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(anchors)
