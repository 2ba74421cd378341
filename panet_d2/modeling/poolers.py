"""AFP's pooler: every proposal pooled from every pyramid level (docs/design.md)."""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes

MAX_TAPS = 2**25  # bilinear taps of the batched op (~400 MB) above which each level is pooled


def _bilinear_taps(coord: Tensor, size: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """torchvision's RoIAlign bilinear taps along one axis: low, high indices and their weights."""
    inside, c = (coord >= -1.0) & (coord <= size), coord.clamp(min=0.0)
    low = torch.minimum(c.floor(), size - 1)
    at_edge = low >= size - 1
    c = torch.where(at_edge, low, c)
    high, frac = torch.where(at_edge, low, low + 1), c - low
    return low.long(), high.long(), (1.0 - frac) * inside, frac * inside


def multilevel_roi_align(
    features: List[Tensor],
    rois: Tensor,
    scales: List[float],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """One ``torchvision.ops.roi_align`` per level, stacked, as one ``F.embedding_bag`` of s * s * 4
    taps per bin (docs/design.md). ``features``: L maps (N, C, H_l, W_l) at ``scales``; ``rois``:
    (M, 5) (batch index, x0, y0, x1, y1); the rest as roi_align's (s > 0). -> (M, L, C, Ph, Pw)"""
    L, C, (ph, pw) = len(features), features[0].shape[1], output_size
    # channels-last table of all levels, one row per pixel: n * rows + offset_l + y * W_l + x
    table = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1).reshape(-1, C)
    rows, offsets, w = _roi_align_bags(features, rois, scales, output_size, sampling_ratio, aligned)
    out = F.embedding_bag(rows, table, offsets, mode="sum", per_sample_weights=w.to(table.dtype))
    return out.view(L, rois.shape[0], ph, pw, C).permute(1, 0, 4, 2, 3)


@torch.jit.script_if_tracing
def _roi_align_bags(
    features: List[Tensor],
    rois: Tensor,
    scales: List[float],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Per (level, box, bin) bag: the taps' table rows, the bags' offsets, the taps' weights.
    Scripted when traced: the graph works for every image size and number of boxes."""
    rois = rois.to(dtype=features[0].dtype)  # as Detectron2's ROIAlign
    dev, dt = rois.device, rois.dtype
    s, ph, pw, L = sampling_ratio, output_size[0], output_size[1], len(features)
    H = torch.tensor([f.shape[2] for f in features], device=dev)  # (L,)
    W = torch.tensor([f.shape[3] for f in features], device=dev)
    rows = int((H * W).sum())  # rows of the table per image
    level_offset = torch.cumsum(H * W, 0) - H * W
    Hf, Wf = H.to(dt).view(L, 1, 1, 1), W.to(dt).view(L, 1, 1, 1)
    # torchvision's arithmetic in its order, for all levels at once: (L, M)
    scale, offset = torch.tensor(scales, dtype=dt, device=dev)[:, None], 0.5 if aligned else 0.0
    x0, y0 = rois[:, 1] * scale - offset, rois[:, 2] * scale - offset
    roi_w, roi_h = rois[:, 3] * scale - offset - x0, rois[:, 4] * scale - offset - y0
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = (roi_w / pw)[:, :, None, None], (roi_h / ph)[:, :, None, None]
    sub = (torch.arange(s, device=dev, dtype=dt) + 0.5)[None, :]  # (1, s)
    # sample coordinates (L, M, P, s): start + p * bin + (i + .5) * bin / s
    xs = x0[:, :, None, None] + torch.arange(pw, device=dev, dtype=dt)[:, None] * bin_w
    xs = xs + sub * bin_w / s
    ys = y0[:, :, None, None] + torch.arange(ph, device=dev, dtype=dt)[:, None] * bin_h
    ys = ys + sub * bin_h / s
    xl, xh, wxl, wxh = _bilinear_taps(xs, Wf)
    yl, yh, wyl, wyh = _bilinear_taps(ys, Hf)
    # taps over (L, M, Ph, Pw, s_y, s_x, tap_y, tap_x)
    ry = torch.stack([yl, yh], -1)[:, :, :, None, :, None, :, None] * W.view(L, 1, 1, 1, 1, 1, 1, 1)
    rx = torch.stack([xl, xh], -1)[:, :, None, :, None, :, None, :]
    wy = torch.stack([wyl, wyh], -1)[:, :, :, None, :, None, :, None]
    wx = torch.stack([wxl, wxh], -1)[:, :, None, :, None, :, None, :]
    first = rois[:, 0].long() * rows + level_offset[:, None]  # (L, M)
    index = (first[:, :, None, None, None, None, None, None] + ry + rx).reshape(-1)
    offsets = torch.arange(0, index.shape[0], s * s * 4, device=dev)
    return index, offsets, (wy * wx / (s * s)).reshape(-1)


class AdaptiveFeaturePooler(ROIPooler):
    """:class:`ROIPooler` (same constructor) that pools every box from every level."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batched_roi_align = all(
            type(p) is ROIAlign and p.sampling_ratio > 0 for p in self.level_poolers
        )
        self._scales = [float(p.spatial_scale) for p in self.level_poolers]
        self._output_size = tuple(self.output_size)
        self._sampling_ratio = int(getattr(self.level_poolers[0], "sampling_ratio", 0))
        self._aligned = bool(getattr(self.level_poolers[0], "aligned", False))
        self.max_taps = MAX_TAPS

    def forward(self, x: List[Tensor], box_lists: List[Boxes]):
        """L maps (N, C, Hl, Wl), N box lists -> (M, L, C, Ph, Pw): box m of level l at [m, l]."""
        rois = convert_boxes_to_pooler_format(box_lists)
        s, (ph, pw) = self._sampling_ratio, self._output_size
        taps = len(x) * rois.shape[0] * ph * pw * s * s * 4  # the batched op's, 12 bytes each
        if self._use_multilevel_roi_align(x) and taps <= self.max_taps:
            return multilevel_roi_align(x, rois, self._scales, self._output_size, s, self._aligned)
        grids = [pooler(x[level], rois) for level, pooler in enumerate(self.level_poolers)]
        return torch.stack(grids, dim=1)

    def _use_multilevel_roi_align(self, x: List[Tensor]) -> bool:
        """On CPU, not in ONNX export, if it computes the level poolers (docs/deployment.md)."""
        if not self.batched_roi_align or x[0].device.type != "cpu":
            return False
        if not torch.jit.is_scripting():
            return not torch.onnx.is_in_onnx_export()
        return True
