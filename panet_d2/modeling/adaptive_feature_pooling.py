# -*- coding: utf-8 -*-
"""
Adaptive feature pooling (AFP), Sec. 3.2 of the PANet paper.

FPN pools each proposal from the single level its size selects. AFP instead pools every proposal
from every level with RoIAlign (each level at its own scale), passes each level's grid through its
own parametric layer (fc1 in the box branch, conv1 in the mask branch; separate weights per level),
and fuses the results element-wise (max or sum).

* :class:`AdaptiveFeaturePooler`: RoIAlign of all boxes of the batch from every level. Output:
  (M, L, C, H, W) level-stacked grids. On the CPU with a fixed sampling ratio (the default, 2)
  all levels are one batched op (:func:`multilevel_roi_align`, equal to torchvision's RoIAlign),
  in eager mode and in TorchScript (scripted and traced graphs); otherwise (CUDA, ONNX export,
  sampling ratio 0) one torchvision RoIAlign call per level.
* :class:`AFPConv2d`, :class:`AFPLinear`: the per-level first layer, run as one batched op over
  all levels (a grouped conv / a batched matmul), its norm, ReLU, then the fusion.

Warm start: the per-level weights live under ``<layer>.per_level.*``, a name that a single-level
checkpoint (e.g. Detectron2's Mask R-CNN: ``box_head.fc1.weight`` (1024, 12544)) does not have.
So every loader that goes through ``nn.Module.load_state_dict`` (Detectron2's
``DetectionCheckpointer`` included, whose shape filter only sees keys the model has) hands the
single-level tensors to :meth:`_PerLevelLayer._load_from_state_dict`, which copies them to every
level (and logs it) instead of leaving the first layers random.
"""

import logging
import re
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from detectron2.layers import Conv2d, ROIAlign, get_norm
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes

from ..config import AFP_FUSE_TYPES
from ..errors import ConfigError, check_choice

__all__ = [
    "AdaptiveFeaturePooler",
    "multilevel_roi_align",
    "AFPConv2d",
    "AFPLinear",
    "fuse_levels",
    "per_level_norm",
    "check_norm",
]

logger = logging.getLogger(__name__)


def fuse_levels(x: torch.Tensor, fuse_type: str, dim: int = 1) -> torch.Tensor:
    """
    Element-wise fusion over the level dimension.

    Args:
        x (Tensor): shape (M, L, ...) for ``dim=1``.
        fuse_type (str): "max" or "sum".

    Returns:
        Tensor: shape (M, ...).
    """
    if fuse_type == "max":
        return x.amax(dim=dim)
    return x.sum(dim=dim)


def _bilinear_taps(
    coord: torch.Tensor, size: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    torchvision's RoIAlign bilinear rule along one axis: for sample coordinates ``coord`` on an
    axis of ``size`` pixels (broadcastable), the low/high pixel indices (int64) and their
    weights (both 0 for a sample outside [-1, size]).
    """
    inside = (coord >= -1.0) & (coord <= size)
    c = coord.clamp(min=0.0)
    low = torch.minimum(c.floor(), size - 1)
    at_edge = low >= size - 1
    c = torch.where(at_edge, low, c)
    high = torch.where(at_edge, low, low + 1)
    frac = c - low
    return low.long(), high.long(), (1.0 - frac) * inside, frac * inside


def multilevel_roi_align(
    features: List[torch.Tensor],
    rois: torch.Tensor,
    scales: List[float],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """
    RoIAlign of every box from every level in one batched op: the same values (to float
    rounding) and gradients as one ``torchvision.ops.roi_align`` call per level, stacked.

    Why: torchvision's CPU RoIAlign is single-threaded, and its backward recomputes the
    bilinear weights of every sample for every channel, so AFP's L x M pooled grids cost far
    more than their arithmetic on the CPU (a training step of PANet R50 spent 5.6 of 33 s in
    its backward). With a fixed sampling ratio s, each output bin is a weighted sum of
    s * s * 4 feature-map pixels (s x s samples, 4 bilinear taps each), i.e. one bag of
    ``F.embedding_bag`` over the channels-last pixels of all levels: multi-threaded, no
    per-channel index arithmetic, and its backward is a weighted scatter of whole C-vectors.
    (Neither Detectron2's ROIPooler nor torchvision has a multi-level RoIAlign to call.)

    TorchScript scripting compiles it, and tracing records it for any image size and number of
    boxes (the bags' index arithmetic is scripted when traced). ONNX export records
    ``embedding_bag`` as a Loop over the bags (one iteration per output bin), far slower than
    ONNX's RoiAlign: :class:`AdaptiveFeaturePooler` exports RoiAlign per level instead.

    Args:
        features (list[Tensor]): L maps, level l of shape (N, C, H_l, W_l).
        rois (Tensor): (M, 5) rows (batch index, x0, y0, x1, y1) in image coordinates.
        scales (list[float]): L spatial scales (1 / stride).
        output_size (tuple[int, int]): (P_h, P_w).
        sampling_ratio (int): s > 0 samples per bin side.
        aligned (bool): the half-pixel offset of ROIAlignV2 (Detectron2's default pooler).

    Returns:
        Tensor: (M, L, C, P_h, P_w).
    """
    L, C, (ph, pw) = len(features), features[0].shape[1], output_size
    # channels-last table of all levels, one row per pixel: n * rows + offset_l + y * W_l + x
    table = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1).reshape(-1, C)
    index, offsets, weight = _roi_align_bags(
        features, rois, scales, output_size, sampling_ratio, aligned
    )
    out = F.embedding_bag(
        index, table, offsets, mode="sum", per_sample_weights=weight.to(table.dtype)
    )
    return out.view(L, rois.shape[0], ph, pw, C).permute(1, 0, 4, 2, 3)


@torch.jit.script_if_tracing
def _roi_align_bags(
    features: List[torch.Tensor],
    rois: torch.Tensor,
    scales: List[float],
    output_size: Tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The bags of :func:`multilevel_roi_align`, for ``F.embedding_bag``: one bag per (level, box,
    bin), in that order, of its s * s * 4 taps: their rows in the channels-last table of all
    levels (flat), the bags' offsets into them, and the taps' weights (flat). Scripted when
    traced: a traced graph holds it as one call that works for every image size and number of
    boxes.
    """
    rois = rois.to(dtype=features[0].dtype)  # as Detectron2's ROIAlign
    dev, dt = rois.device, rois.dtype
    s, ph, pw, L = sampling_ratio, output_size[0], output_size[1], len(features)
    H = torch.tensor([f.shape[2] for f in features], device=dev)  # (L,)
    W = torch.tensor([f.shape[3] for f in features], device=dev)
    rows = int((H * W).sum())  # rows of the table per image
    level_offset = torch.cumsum(H * W, 0) - H * W
    Hf, Wf = H.to(dt).view(L, 1, 1, 1), W.to(dt).view(L, 1, 1, 1)

    # torchvision's arithmetic in its order, for all levels at once: (L, M)
    scale = torch.tensor(scales, dtype=dt, device=dev)[:, None]
    offset = 0.5 if aligned else 0.0
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
    index = first[:, :, None, None, None, None, None, None] + ry + rx
    weight = wy * wx / (s * s)
    index = index.reshape(-1)
    offsets = torch.arange(0, index.shape[0], s * s * 4, device=dev)
    return index, offsets, weight.reshape(-1)


class AdaptiveFeaturePooler(ROIPooler):
    """
    Pools every box from every feature level (no level assignment).

    Same constructor as Detectron2's :class:`ROIPooler`; ``canonical_box_size`` and
    ``canonical_level`` are unused since no box is assigned to a level.
    """

    # whether the level poolers are RoIAlign with a fixed sampling ratio (what
    # multilevel_roi_align computes), and their arguments, as TorchScript reads them
    batched_roi_align: bool
    _scales: List[float]
    _output_size: Tuple[int, int]
    _sampling_ratio: int
    _aligned: bool

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        first = self.level_poolers[0]
        self.batched_roi_align = all(
            type(p) is ROIAlign and p.sampling_ratio > 0 for p in self.level_poolers
        )
        self._scales = [float(p.spatial_scale) for p in self.level_poolers]
        size = _pair(first.output_size)
        self._output_size = (int(size[0]), int(size[1]))
        self._sampling_ratio = int(getattr(first, "sampling_ratio", 0))
        self._aligned = bool(getattr(first, "aligned", False))

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]):
        """
        Args:
            x (list[Tensor]): L feature maps, each (N, C, Hl, Wl), ordered like the scales.
            box_lists (list[Boxes]): N lists of boxes in image coordinates.

        Returns:
            Tensor: shape (M, L, C, output_size, output_size), M boxes over the batch; entry
            [m, l] is box m pooled from level l with RoIAlign.
        """
        pooler_fmt_boxes = convert_boxes_to_pooler_format(box_lists)
        if self._use_multilevel_roi_align(x):
            return multilevel_roi_align(
                x,
                pooler_fmt_boxes,
                self._scales,
                self._output_size,
                self._sampling_ratio,
                self._aligned,
            )
        # One RoIAlign call per level, each over all boxes of the batch.
        grids = [
            pooler(x[level], pooler_fmt_boxes) for level, pooler in enumerate(self.level_poolers)
        ]
        return torch.stack(grids, dim=1)

    def _use_multilevel_roi_align(self, x: List[torch.Tensor]) -> bool:
        """
        True where :func:`multilevel_roi_align` computes what the level poolers would (RoIAlign
        with a fixed sampling ratio) and is the faster op: features on the CPU, in eager mode,
        scripted and traced graphs (a graph traced on the CPU keeps it). CUDA keeps torchvision's
        op (its kernels are parallel), and so does ONNX export (ONNX's RoiAlign; the exported
        ``embedding_bag`` is a Loop over bins) and sampling ratio 0 (no fixed number of samples).
        """
        if not self.batched_roi_align:
            return False
        if not torch.jit.is_scripting():
            if torch.onnx.is_in_onnx_export():
                return False
        return x[0].device.type == "cpu"


# Detectron2 norms that normalise each channel on its own: one such norm over the L * C channels
# of all levels normalises every level separately.
_PER_CHANNEL_NORMS = ("BN", "SyncBN", "FrozenBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN")


class LevelwiseNorm(nn.Module):
    """
    One norm module per level, for norms that mix channels (LayerNorm, a callable returning any
    module): input (M, L * C, H, W), level l owning channels [l * C, (l + 1) * C).
    """

    def __init__(self, norm, channels: int, num_levels: int):
        super().__init__()
        self.levels = nn.ModuleList([get_norm(norm, channels) for _ in range(num_levels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A module of unknown kind cannot be batched over levels: one call per level (L = 4),
        # written as TorchScript compiles it (no zip over a ModuleList).
        chunks = x.chunk(len(self.levels), dim=1)
        outputs: List[torch.Tensor] = []
        for i, norm in enumerate(self.levels):
            outputs.append(norm(chunks[i]))
        return torch.cat(outputs, dim=1)


def per_level_norm(norm, channels: int, num_levels: int):
    """
    A norm over (M, L * channels, H, W) that normalises each level separately.

    Args:
        norm (str or callable): any norm spec of Detectron2's ``get_norm``: "" / None (no norm),
            a name ("GN", "BN", "SyncBN", "LN", ...) or a callable ``channels -> nn.Module``.

    Returns:
        nn.Module or None: per-channel norms over all L * channels channels; GroupNorm with 32
        groups per level; else :class:`LevelwiseNorm` (one module per level).
    """
    check_norm("the norm of the per-level layer", norm)
    if norm is None or (isinstance(norm, str) and not norm):
        return None
    if norm == "GN":
        return nn.GroupNorm(32 * num_levels, channels * num_levels)
    if isinstance(norm, str) and norm in _PER_CHANNEL_NORMS:
        return get_norm(norm, channels * num_levels)
    return LevelwiseNorm(norm, channels, num_levels)


def check_norm(key: str, norm):
    """Raise :class:`ConfigError` unless ``norm`` is a norm spec Detectron2's ``get_norm`` takes."""
    if norm is None or callable(norm) or norm == "":
        return norm
    try:
        get_norm(norm, 32)
    except (KeyError, TypeError):
        raise ConfigError(
            "Invalid config value {}={!r}; allowed: '' (no norm), a norm name of Detectron2's "
            "get_norm ('GN', 'BN', 'SyncBN', 'naiveSyncBN', 'nnSyncBN', 'FrozenBN', 'LN') or a "
            "callable returning an nn.Module.".format(key, norm)
        ) from None
    return norm


class _PerLevelLayer(nn.Module):
    """
    Base of the per-level first layers: checks, and the warm start from a single-level layer.
    Subclasses keep their per-level parameters under names that contain ``per_level`` or
    ``levels.<l>`` (per-level norm modules).
    """

    def __init__(self, num_levels: int, fuse_type: str):
        super().__init__()
        if num_levels < 2:
            raise ConfigError(
                "Adaptive feature pooling needs >= 2 levels, got {}".format(num_levels)
            )
        self.num_levels = num_levels
        self.fuse_type = check_choice("MODEL.AFP.FUSE_TYPE", fuse_type, AFP_FUSE_TYPES)

    @staticmethod
    def _single_level_name(name: str) -> str:
        """ "per_level.weight" -> "weight", "norm.levels.2.bias" -> "norm.bias"."""
        return re.sub(r"(^|\.)(per_level|levels\.\d+)\.", r"\1", name)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Runs before the children load: turn a single-level layer's tensors (a Detectron2
        # checkpoint: "<prefix>weight", "<prefix>norm.weight") into ours, copied to every level.
        L, replicated = self.num_levels, []
        for name, ours in self.state_dict().items():
            single = prefix + self._single_level_name(name)
            theirs = state_dict.get(single)
            if prefix + name in state_dict or not isinstance(theirs, torch.Tensor):
                continue
            if theirs.shape == ours.shape:  # a per-level norm module, or an older layout
                value = theirs
            elif ours.shape == (L,) + theirs.shape:
                value = theirs.unsqueeze(0).expand_as(ours)
            elif theirs.dim() >= 1 and ours.shape == (L * theirs.shape[0],) + theirs.shape[1:]:
                value = theirs.repeat(L, *([1] * (theirs.dim() - 1)))
            else:
                continue  # left to the shape check of the loader
            state_dict[prefix + name] = value.clone()
            replicated.append(single)
        for key in set(replicated):
            del state_dict[key]
        if replicated:
            logger.info(
                "AFP warm start: {} copied to each of the {} levels of {}".format(
                    ", ".join(sorted(set(k[len(prefix) :] for k in replicated))), L, prefix[:-1]
                )
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AFPConv2d(_PerLevelLayer):
    """
    Per-level 3x3 conv (+ norm) + ReLU, followed by element-wise fusion over levels.

    The L convs run as one grouped convolution ``per_level``: weight (L * out_channels,
    in_channels, k, k), level l owning rows [l * out_channels, (l + 1) * out_channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_levels: int,
        *,
        norm="",
        fuse_type: str = "max",
        kernel_size: int = 3,
    ):
        super().__init__(num_levels, fuse_type)
        self.out_channels = out_channels
        self.per_level = Conv2d(
            in_channels * num_levels,
            out_channels * num_levels,
            kernel_size=kernel_size,
            padding=kernel_size // 2,
            groups=num_levels,
            bias=not norm,
            norm=per_level_norm(norm, out_channels, num_levels),
            activation=nn.ReLU(),
        )
        # Detectron2's c2_msra_fill, level by level (fan-out of one level's conv).
        for w in self.per_level.weight.data.view(
            num_levels, out_channels, -1, *([kernel_size] * 2)
        ):
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        if self.per_level.bias is not None:
            nn.init.constant_(self.per_level.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): level-stacked grids, shape (M, L, C, H, W).

        Returns:
            Tensor: fused features, shape (M, out_channels, H, W).
        """
        M, L, C, H, W = x.shape
        y = self.per_level(x.reshape(M, L * C, H, W))
        return fuse_levels(y.view(M, L, self.out_channels, H, W), self.fuse_type)


class GroupedLinear(nn.Module):
    """
    L independent fully-connected layers as one batched matmul: ``weight`` (L, out, in),
    ``bias`` (L, out). Input (L, M, in), output (L, M, out).
    """

    def __init__(self, in_features: int, out_features: int, num_groups: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_groups, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_groups, out_features))
        for w in self.weight.data:  # Detectron2's c2_xavier_fill, group by group
            nn.init.kaiming_uniform_(w, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def extra_repr(self):
        L, out_features, in_features = self.weight.shape
        return "in_features={}, out_features={}, groups={}".format(in_features, out_features, L)


class AFPLinear(_PerLevelLayer):
    """
    Per-level fully-connected layer (+ norm) + ReLU, followed by element-wise fusion over levels.
    The L layers are one :class:`GroupedLinear` ``per_level``; a single-level fc's weights
    warm-start every level.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_levels: int,
        *,
        norm="",
        fuse_type: str = "max",
    ):
        super().__init__(num_levels, fuse_type)
        self.per_level = GroupedLinear(in_features, out_features, num_levels)
        self.norm = per_level_norm(norm, out_features, num_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): shape (M, L, in_features) (level-stacked grids, flattened per level).

        Returns:
            Tensor: fused features, shape (M, out_features).
        """
        y = self.per_level(x.transpose(0, 1))  # (L, M, out)
        if self.norm is not None:
            L, M, D = y.shape
            y = self.norm(y.transpose(0, 1).reshape(M, L * D, 1, 1)).view(M, L, D).transpose(0, 1)
        return fuse_levels(torch.relu(y), self.fuse_type, dim=0)
