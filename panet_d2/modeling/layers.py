"""AFP's per-level first layers batched over levels, their norms and the fusion (docs/design.md)."""

import logging
from typing import List

import torch
from torch import nn

from detectron2.layers import Conv2d, get_norm

from ..config import AFP_FUSE_TYPES, PER_LEVEL_NAME
from ..errors import check_choice, check_norm

logger = logging.getLogger(__name__)


def fuse_levels(x: torch.Tensor, fuse_type: str, dim: int = 1) -> torch.Tensor:
    """Max or sum over the level dimension: (M, L, ...) -> (M, ...) for ``dim=1``."""
    return x.amax(dim=dim) if fuse_type == "max" else x.sum(dim=dim)


# norms of each channel on its own: one over the L * C channels normalises each level separately
_PER_CHANNEL_NORMS = ("BN", "SyncBN", "FrozenBN", "naiveSyncBN", "naiveSyncBN_N", "nnSyncBN")


class LevelwiseNorm(nn.Module):
    """One norm per level over (M, L * C, H, W), level l owning channels [l * C, (l + 1) * C)."""

    def __init__(self, norm, channels: int, num_levels: int):
        super().__init__()
        self.levels = nn.ModuleList([get_norm(norm, channels) for _ in range(num_levels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one call per level, as TorchScript compiles it (no zip over a ModuleList)
        chunks = x.chunk(len(self.levels), dim=1)
        outputs: List[torch.Tensor] = []
        for i, norm in enumerate(self.levels):
            outputs.append(norm(chunks[i]))
        return torch.cat(outputs, dim=1)


def per_level_norm(norm, channels: int, num_levels: int):
    """A norm (any ``get_norm`` spec, None for none) of (M, L * channels, H, W), level by level."""
    check_norm("the norm of the per-level layer", norm)
    if norm is None or (isinstance(norm, str) and not norm):
        return None
    if norm == "GN":
        return nn.GroupNorm(32 * num_levels, channels * num_levels)
    if isinstance(norm, str) and norm in _PER_CHANNEL_NORMS:
        return get_norm(norm, channels * num_levels)
    return LevelwiseNorm(norm, channels, num_levels)


class _PerLevelLayer(nn.Module):
    """Base of the per-level first layers: the warm start from a single-level layer."""

    def __init__(self, num_levels: int, fuse_type: str):
        super().__init__()
        self.num_levels = num_levels
        self.fuse_type = check_choice("MODEL.AFP.FUSE_TYPE", fuse_type, AFP_FUSE_TYPES)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # before the children load: a single-level layer's tensors copied to every level
        L, replicated = self.num_levels, []
        for name, ours in self.state_dict().items():
            single = prefix + PER_LEVEL_NAME.sub(r"\1", name)
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
            keys = ", ".join(sorted(set(k[len(prefix) :] for k in replicated)))
            logger.info(f"AFP warm start: {keys} copied to each of the {L} levels of {prefix[:-1]}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AFPConv2d(_PerLevelLayer):
    """Per-level conv (+ norm) + ReLU, then the fusion; the L convs are one grouped conv
    ``per_level`` (level l owning output channels [l * out_channels, (l + 1) * out_channels))."""

    def __init__(
        self, in_channels, out_channels, num_levels, *, norm="", fuse_type="max", kernel_size=3
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
        # Detectron2's c2_msra_fill, level by level
        for w in self.per_level.weight.data.chunk(num_levels):
            nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu")
        if self.per_level.bias is not None:
            nn.init.constant_(self.per_level.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, L, C, H, W) level-stacked grids -> (M, out_channels, H, W) fused features."""
        M, L, C, H, W = x.shape
        y = self.per_level(x.reshape(M, L * C, H, W))
        return fuse_levels(y.view(M, L, self.out_channels, H, W), self.fuse_type)


class GroupedLinear(nn.Module):
    """L fc layers as one ``bmm``: (L, M, in) -> (L, M, out); weight (L, out, in), bias (L, out)."""

    def __init__(self, in_features: int, out_features: int, num_groups: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_groups, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_groups, out_features))
        for w in self.weight.data:  # Detectron2's c2_xavier_fill, group by group
            nn.init.kaiming_uniform_(w, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bmm plus an add, not baddbmm: fvcore's FLOP counter counts bmm and has no baddbmm handle
        return torch.bmm(x, self.weight.transpose(1, 2)) + self.bias.unsqueeze(1)

    def extra_repr(self):
        return "in_features={2}, out_features={1}, groups={0}".format(*self.weight.shape)


class AFPLinear(_PerLevelLayer):
    """Per-level fc (one :class:`GroupedLinear` ``per_level``) (+ norm) + ReLU, then the fusion."""

    def __init__(
        self, in_features: int, out_features: int, num_levels: int, *, norm="", fuse_type="max"
    ):
        super().__init__(num_levels, fuse_type)
        self.per_level = GroupedLinear(in_features, out_features, num_levels)
        self.norm = per_level_norm(norm, out_features, num_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(M, L, in_features) flattened level-stacked grids -> (M, out_features)."""
        y = self.per_level(x.transpose(0, 1))  # (L, M, out)
        if self.norm is not None:
            L, M, D = y.shape
            y = self.norm(y.transpose(0, 1).reshape(M, L * D, 1, 1)).view(M, L, D).transpose(0, 1)
        return fuse_levels(torch.relu(y), self.fuse_type, dim=0)
