# -*- coding: utf-8 -*-
"""
Adaptive feature pooling (AFP), Sec. 3.2 of the PANet paper.

FPN pools each proposal from the single level its size selects. AFP pools every proposal from
every level with RoIAlign (each level at its own scale), passes each level's grid through its own
parametric layer (fc1 in the box branch, conv1 in the mask branch; separate weights per level), and
fuses the results element-wise (max or sum).

* :class:`AdaptiveFeaturePooler`: one RoIAlign call per level for all boxes of the batch.
  Output: (M, L, C, H, W) level-stacked grids.
* :class:`AFPConv2d`, :class:`AFPLinear`: the per-level first layer, run as one batched op over
  all levels (a grouped conv / a batched matmul), then the fusion.
* :func:`expand_single_level_weights`: warm start of the per-level layers from a checkpoint of a
  model with one such layer (e.g. Detectron2's Mask R-CNN): every level gets a copy.
"""
import logging
from typing import Dict, List

import torch
from torch import nn

from detectron2.layers import Conv2d, get_norm
from detectron2.modeling.poolers import ROIPooler, convert_boxes_to_pooler_format
from detectron2.structures import Boxes

from .config import AFP_FUSE_TYPES, NORMS, check_choice

__all__ = [
    "AdaptiveFeaturePooler",
    "AFPConv2d",
    "AFPLinear",
    "fuse_levels",
    "expand_single_level_weights",
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
    if fuse_type == "sum":
        return x.sum(dim=dim)
    raise ValueError("Unknown fusion {!r}; allowed: {}".format(fuse_type, AFP_FUSE_TYPES))


class AdaptiveFeaturePooler(ROIPooler):
    """
    Pools every box from every feature level (no level assignment).

    Same constructor as Detectron2's :class:`ROIPooler`; ``canonical_box_size`` and
    ``canonical_level`` are unused since no box is assigned to a level.
    """

    @property
    def num_levels(self) -> int:
        return len(self.level_poolers)

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]):
        """
        Args:
            x (list[Tensor]): L feature maps, each (N, C, Hl, Wl), ordered like the scales.
            box_lists (list[Boxes]): N lists of boxes in image coordinates.

        Returns:
            Tensor: shape (M, L, C, output_size, output_size), M boxes over the batch; entry
            [m, l] is box m pooled from level l with RoIAlign.
        """
        if len(x) != self.num_levels:
            raise ValueError(
                "AdaptiveFeaturePooler built for {} levels got {} feature maps".format(
                    self.num_levels, len(x)
                )
            )
        if len(box_lists) == 0:
            return x[0].new_zeros((0, self.num_levels, x[0].shape[1]) + tuple(self.output_size))
        pooler_fmt_boxes = convert_boxes_to_pooler_format(box_lists)
        # One RoIAlign call per level, each over all boxes of the batch.
        grids = [pooler(f, pooler_fmt_boxes) for f, pooler in zip(x, self.level_poolers)]
        return torch.stack(grids, dim=1)


def _per_level_norm(norm: str, channels: int, num_levels: int):
    """
    A norm over (M, L * channels, ...) that acts on each level separately, so that one layer
    normalises all levels at once: per-channel norms (BN, SyncBN) are per level already; GroupNorm
    gets 32 groups per level.
    """
    if not norm:
        return None
    if norm == "GN":
        return nn.GroupNorm(32 * num_levels, channels * num_levels)
    return get_norm(norm, channels * num_levels)


class _PerLevelLayer:
    """
    Mixin of the per-level first layers: the warm start that copies a single-level layer's
    weights to every level.
    """

    num_levels: int

    def _check_levels(self, num_levels: int, fuse_type: str, norm: str):
        if num_levels < 2:
            raise ValueError("Adaptive feature pooling needs >= 2 levels, got {}".format(num_levels))
        check_choice("MODEL.AFP.FUSE_TYPE", fuse_type, AFP_FUSE_TYPES)
        check_choice("the norm of the AFP layer", norm, NORMS)

    def expand_single_level_state(self, state_dict: Dict[str, torch.Tensor], prefix: str):
        """
        Replace, in ``state_dict``, every tensor of this layer that has the shape of a single-level
        layer by one copy per level (in place).

        Args:
            state_dict (dict): a model state dict (tensors).
            prefix (str): this module's name in the model, with a trailing dot.

        Returns:
            list[str]: the keys that were replicated.
        """
        replicated = []
        L = self.num_levels
        for name, ours in self.state_dict().items():
            key = prefix + name
            theirs = state_dict.get(key)
            if not isinstance(theirs, torch.Tensor) or theirs.shape == ours.shape:
                continue
            if ours.dim() == theirs.dim() + 1 and ours.shape == (L,) + tuple(theirs.shape):
                state_dict[key] = theirs.unsqueeze(0).repeat(L, *([1] * theirs.dim()))
            elif (
                ours.dim() == theirs.dim() >= 1
                and ours.shape[0] == L * theirs.shape[0]
                and ours.shape[1:] == theirs.shape[1:]
            ):
                state_dict[key] = theirs.repeat(L, *([1] * (theirs.dim() - 1)))
            else:
                continue
            replicated.append(key)
        return replicated

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A plain `model.load_state_dict(single_level_state_dict)` warm-starts every level too.
        self.expand_single_level_state(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AFPConv2d(_PerLevelLayer, Conv2d):
    """
    Per-level 3x3 conv (+ norm) + ReLU, followed by element-wise fusion over levels.

    The L convs run as one grouped convolution: ``weight`` has shape
    (L * out_channels, in_channels, k, k), level l owning rows [l * out_channels, (l+1) *
    out_channels); parameter names are those of Detectron2's :class:`Conv2d`, so a single-level
    conv's weights (out_channels, in_channels, k, k) warm-start it (copied to every level).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_levels: int,
        *,
        norm: str = "",
        fuse_type: str = "max",
        kernel_size: int = 3,
    ):
        self._check_levels(num_levels, fuse_type, norm)
        super().__init__(
            in_channels * num_levels,
            out_channels * num_levels,
            kernel_size=kernel_size,
            padding=kernel_size // 2,
            groups=num_levels,
            bias=not norm,
            norm=_per_level_norm(norm, out_channels, num_levels),
            activation=nn.ReLU(),
        )
        self.num_levels = num_levels
        self.fuse_type = fuse_type
        self.level_out_channels = out_channels
        # Detectron2's c2_msra_fill, level by level (fan-out of one level's conv).
        for w in self.weight.data.view(num_levels, out_channels, -1, kernel_size, kernel_size):
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.constant_(self.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): level-stacked grids, shape (M, L, C, H, W).

        Returns:
            Tensor: fused features, shape (M, out_channels, H, W).
        """
        M, L, C, H, W = x.shape
        y = super().forward(x.reshape(M, L * C, H, W))
        return fuse_levels(y.view(M, L, self.level_out_channels, H, W), self.fuse_type)


class AFPLinear(_PerLevelLayer, nn.Module):
    """
    Per-level fully-connected layer (+ norm) + ReLU, followed by element-wise fusion over levels.

    ``weight`` has shape (L, out_features, in_features) and ``bias`` (L, out_features); the L
    layers run as one batched matmul. A single-level fc's weights warm-start every level.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_levels: int,
        *,
        norm: str = "",
        fuse_type: str = "max",
    ):
        self._check_levels(num_levels, fuse_type, norm)
        super().__init__()
        self.num_levels = num_levels
        self.fuse_type = fuse_type
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(num_levels, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_levels, out_features))
        self.norm = _per_level_norm(norm, out_features, num_levels)
        # Detectron2's c2_xavier_fill, level by level.
        for w in self.weight.data:
            nn.init.kaiming_uniform_(w, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (Tensor): shape (M, L, in_features) (level-stacked grids, flattened per level).

        Returns:
            Tensor: fused features, shape (M, out_features).
        """
        M = x.shape[0]
        # (L, M, in) @ (L, in, out) + (L, 1, out) -> (L, M, out)
        y = torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1), self.weight.transpose(1, 2))
        if self.norm is not None:
            y = self.norm(y.transpose(0, 1).reshape(M, -1)).view(M, self.num_levels, -1)
            return fuse_levels(torch.relu(y), self.fuse_type, dim=1)
        return fuse_levels(torch.relu(y), self.fuse_type, dim=0)

    def extra_repr(self):
        return "in_features={}, out_features={}, num_levels={}, fuse_type={}".format(
            self.in_features, self.out_features, self.num_levels, self.fuse_type
        )


def expand_single_level_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """
    Warm start of adaptive feature pooling: for every per-level layer of ``model``, replace its
    single-level tensors in ``state_dict`` (e.g. Detectron2 Mask R-CNN's ``box_head.fc1.weight``,
    shape (1024, 12544)) by one copy per level (shape (L, 1024, 12544)). In place.

    Args:
        model (nn.Module): the model to be loaded.
        state_dict (dict[str, Tensor]): its checkpoint, keys named as in ``model.state_dict()``.

    Returns:
        list[str]: the replicated keys.
    """
    replicated = []
    for name, module in model.named_modules():
        if isinstance(module, _PerLevelLayer):
            replicated += module.expand_single_level_state(state_dict, name + "." if name else "")
    return replicated
