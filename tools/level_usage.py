# -*- coding: utf-8 -*-
"""
Fig. 3 of the PANet paper for tools/analyze_level_usage.py: :class:`LevelUsage` counts, with
forward hooks during inference, which pyramid level each element fused by AFP's max comes from
(``docs/level_usage.md``).
"""

import math
from typing import Dict, List

import torch
from torch import nn

from detectron2.modeling.poolers import assign_boxes_to_levels

from panet_d2.modeling import AdaptiveFeaturePooler, AFPConv2d, AFPLinear

__all__ = ["BRANCHES", "TIE_RULES", "LevelUsage", "count_level_sources"]

BRANCHES = ("box", "mask")
TIE_RULES = ("split", "first", "exclude")
_CHUNK = 64  # proposals counted at a time (a mask branch grid is L x 256 x 14 x 14 per proposal)


def count_level_sources(per_level: torch.Tensor, ties: str = "split") -> torch.Tensor:
    """
    Args:
        per_level (Tensor): shape (M, L, E): for M proposals, the L per-level values of each of the
            E elements that the max fusion reduces over the levels.
        ties (str): how an element whose maximum k levels hold is counted: "split" (1/k to each,
            as ``torch.amax``'s gradient), "first" (to the lowest, ``torch.argmax``'s choice) or
            "exclude" (not counted).

    Returns:
        Tensor: float64, shape (M, L): [m, l] = the number of proposal m's elements whose maximum
        is on level l (fractional with ``ties="split"``).
    """
    if ties not in TIE_RULES:
        raise ValueError("ties={!r}; allowed: {}".format(ties, ", ".join(TIE_RULES)))
    out = []
    for y in per_level.split(_CHUNK):
        at_max = y == y.amax(dim=1, keepdim=True)  # (m, L, E)
        k = at_max.sum(dim=1, keepdim=True)  # levels holding the maximum, >= 1
        if ties == "split":
            w = at_max.double() / k
        elif ties == "first":
            w = (at_max & (at_max.cumsum(dim=1) == 1)).double()
        else:
            w = (at_max & (k == 1)).double()
        out.append(w.sum(dim=2))
    if not out:
        return per_level.new_zeros((0, per_level.shape[1]), dtype=torch.float64)
    return torch.cat(out)


class _Branch:
    """One branch's hooks and counts (see :class:`LevelUsage`)."""

    def __init__(self, name: str, layer_name: str, pooler: AdaptiveFeaturePooler, layer, ties):
        self.name = name
        self.layer_name = layer_name
        self.pooler = pooler
        self.layer = layer  # None: the RoIAlign grids are fused (no per-level first layer)
        self.ties = ties
        L = len(pooler.level_poolers)
        self.num_levels = L
        self.counts = torch.zeros(L, L, dtype=torch.float64)  # [FPN level, source level]
        self.proposals = torch.zeros(L, dtype=torch.int64)
        self.elements = 0
        self.tied = 0
        self._levels = None  # FPN levels of the boxes of the last pooler call

    def pooler_hook(self, module, inputs, output):
        box_lists = inputs[1]
        self._levels = assign_boxes_to_levels(
            box_lists,
            self.pooler.min_level,
            self.pooler.max_level,
            self.pooler.canonical_box_size,
            self.pooler.canonical_level,
        ).cpu()
        if self.layer is None:  # fusion of the RoIAlign grids: they are the fused elements
            self.count(output.flatten(2))

    def count(self, per_level: torch.Tensor):
        """``per_level``: (M, L, E), the proposals of the last pooler call."""
        levels, self._levels = self._levels, None
        if levels is None or len(levels) != per_level.shape[0]:
            raise RuntimeError(
                "Level usage ({} branch): {} proposals reached {} but the last call of its pooler "
                "had {}; the hooks cannot pair them.".format(
                    self.name,
                    per_level.shape[0],
                    self.layer_name,
                    "none" if levels is None else len(levels),
                )
            )
        per_level = per_level.detach()
        self.counts.index_add_(0, levels, count_level_sources(per_level, self.ties).cpu())
        self.proposals += torch.bincount(levels, minlength=self.num_levels)
        self.elements += per_level.shape[0] * per_level.shape[2]
        at_max = per_level == per_level.amax(dim=1, keepdim=True)
        self.tied += int((at_max.sum(dim=1) > 1).sum())

    def result(self) -> dict:
        L = self.num_levels
        totals = self.counts.sum(dim=1, keepdim=True)
        percent = torch.where(totals > 0, 100.0 * self.counts / totals.clamp(min=1e-12), math.nan)
        return {
            "layer": self.layer_name,
            "percent": [
                [None if math.isnan(v) else round(v, 4) for v in row] for row in percent.tolist()
            ],
            "proposals": self.proposals.tolist(),
            "elements": self.elements,
            "tied_percent": round(100.0 * self.tied / self.elements, 4) if self.elements else None,
            "rows": ["FPN level {} (N{})".format(i + 1, i + 2) for i in range(L)],
            "columns": ["level {} (N{})".format(i + 1, i + 2) for i in range(L)],
        }


class LevelUsage:
    """
    Counts, during inference of a PANet model with AFP and max fusion, which level each fused
    element comes from (``docs/level_usage.md``). A context manager around the model's calls::

        with LevelUsage(model) as usage:
            for inputs in data_loader:
                model(inputs)
        usage.tables()["box"]["percent"]   # 4 x 4, rows: FPN level of the proposal, sum 100

    Args:
        model (nn.Module): a GeneralizedRCNN / PanopticPANet (or a wrapper with ``.module``) whose
            ``roi_heads`` use :class:`AdaptiveFeaturePooler`.
        ties (str): one of :data:`TIE_RULES` (:func:`count_level_sources`).
        branches (tuple[str]): subset of :data:`BRANCHES`; the mask branch is skipped when the
            model has none.

    Raises:
        ValueError: the model has no AFP, or its fusion is not max.
    """

    def __init__(self, model: nn.Module, ties: str = "split", branches=BRANCHES):
        if ties not in TIE_RULES:
            raise ValueError("ties={!r}; allowed: {}".format(ties, ", ".join(TIE_RULES)))
        model = getattr(model, "module", model)
        roi_heads = getattr(model, "roi_heads", None)
        self.branches: Dict[str, _Branch] = {}
        for name in branches:
            found = self._find(roi_heads, name)
            if found is not None:
                self.branches[name] = _Branch(name, *found, ties=ties)
        if not self.branches:
            raise ValueError(
                "Level usage needs adaptive feature pooling (MODEL.AFP.ENABLED=True): the model's "
                "roi_heads have no AdaptiveFeaturePooler."
            )
        self._handles: List = []

    @staticmethod
    def _find(roi_heads, branch: str):
        """(layer name, pooler, per-level layer or None) of a branch, or None without AFP."""
        pooler = getattr(roi_heads, branch + "_pooler", None)
        head = getattr(roi_heads, branch + "_head", None)
        if branch == "mask" and not getattr(roi_heads, "mask_on", False):
            return None
        if not isinstance(pooler, AdaptiveFeaturePooler) or head is None:
            return None
        fuse_type = getattr(head, "fuse_type", None)
        if fuse_type != "max":
            raise ValueError(
                "Level usage (the paper's Fig. 3) needs max fusion: with {!r} fusion (the {} "
                "head's) every level adds to every element. Use a model trained with "
                "MODEL.AFP.FUSE_TYPE=max.".format(fuse_type, branch)
            )
        if not getattr(head, "per_level_first_layer", False):
            return "roi_heads.{}_pooler".format(branch), pooler, None
        first = {"box": ("fc1", "conv1"), "mask": ("mask_fcn1",)}[branch]
        for attr in first:
            layer = getattr(head, attr, None)
            if isinstance(layer, (AFPLinear, AFPConv2d)):
                return "roi_heads.{}_head.{}".format(branch, attr), pooler, layer
        raise ValueError(
            "The {} head has no per-level first layer (AFPLinear / AFPConv2d)".format(branch)
        )

    def _layer_hooks(self, branch: _Branch):
        """Forward hooks that hand the (M, L, E) per-level outputs, as fused, to ``branch``."""
        layer = branch.layer
        if isinstance(layer, AFPConv2d):
            # per_level is Detectron2's Conv2d with the norm and the ReLU: (M, L * C, H, W)
            L = layer.num_levels

            def conv_hook(module, inputs, output):  # unflatten: also for no proposal (M = 0)
                branch.count(output.flatten(1).unflatten(1, (L, -1)))

            return [layer.per_level.register_forward_hook(conv_hook)]
        # AFPLinear: per_level gives (L, M, D) before the norm; the norm (if any) (M, L * D, 1, 1)
        if layer.norm is None:

            def linear_hook(module, inputs, output):
                branch.count(torch.relu(output.transpose(0, 1)))

            return [layer.per_level.register_forward_hook(linear_hook)]
        L = layer.num_levels

        def norm_hook(module, inputs, output):
            branch.count(torch.relu(output.flatten(1).unflatten(1, (L, -1))))

        return [layer.norm.register_forward_hook(norm_hook)]

    def __enter__(self):
        for branch in self.branches.values():
            self._handles.append(branch.pooler.register_forward_hook(branch.pooler_hook))
            if branch.layer is not None:
                self._handles += self._layer_hooks(branch)
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return False

    def tables(self) -> Dict[str, dict]:
        """
        Returns:
            dict: branch -> {"layer": the per-level layer, "percent": L x L list (row i: the
            proposals FPN assigns to level i + 1; column j: % of their fused elements from level
            j + 1; each row sums to 100, None for a row without proposals), "proposals": per row,
            "elements": counted in all, "tied_percent": % of elements with a tied maximum,
            "rows", "columns": labels}.
        """
        return {name: branch.result() for name, branch in self.branches.items()}
