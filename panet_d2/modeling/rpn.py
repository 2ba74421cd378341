"""The RPN's parts: Detectron (v1)'s quantised anchors, as the authors' PANet release uses
(docs/design.md), and Detectron2's RPN head with its outputs checked at inference."""

import math
from typing import List

import torch

from detectron2.modeling import ANCHOR_GENERATOR_REGISTRY, RPN_HEAD_REGISTRY
from detectron2.modeling.anchor_generator import BufferList, DefaultAnchorGenerator
from detectron2.modeling.proposal_generator import StandardRPNHead

from ..errors import check_finite


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


@RPN_HEAD_REGISTRY.register()
class PANetRPNHead(StandardRPNHead):
    """:class:`StandardRPNHead` (same arguments, keys, outputs) that raises NonFiniteOutputError
    at inference for NaN or inf in its outputs (Detectron2's RPN drops those proposals silently)."""

    def forward(self, features: List[torch.Tensor]):
        """L (N, C, Hi, Wi) maps -> L (N, A, Hi, Wi) objectness logits, L (N, 4A, Hi, Wi) deltas."""
        hidden = [self.conv(x) for x in features]
        logits = [self.objectness_logits(t) for t in hidden]
        deltas = [self.anchor_deltas(t) for t in hidden]
        if not self.training:
            for x in logits:
                check_finite("The RPN's objectness logits", x)
            for x in deltas:
                check_finite("The RPN's anchor deltas", x)
        return logits, deltas
