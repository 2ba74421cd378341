# -*- coding: utf-8 -*-
"""
Fig. 3 of the PANet paper: the share of AFP's fused features that comes from each pyramid level.

With adaptive feature pooling (AFP) and max fusion, the share is counted for the proposals grouped
by the level FPN would have assigned them to.

:class:`LevelUsage` counts it during ordinary inference, with forward hooks on the model (the
model code is not touched):

* the all-level pooler of a branch (``roi_heads.box_pooler`` / ``mask_pooler``) gives the boxes,
  and Detectron2's ``assign_boxes_to_levels`` (the pooler's canonical box size 224 and level 4,
  FPN's Eqn. 1) the level FPN assigns each to: row 0..L-1 = N2..N5 ("level 1".."level 4");
* the per-level layer before the fusion gives the L per-level outputs of every fused element,
  as they enter the max: after the norm and the ReLU of the box head's per-level fc1
  (``box_head.fc1``, an ``AFPLinear``), of the heavier head's per-level conv1
  (``box_head.conv1``) or of the mask head's per-level conv1 (``mask_head.mask_fcn1``, both
  ``AFPConv2d``). With the fusion before the first layer ("fu.fc1fc2"), the fused elements are
  the RoIAlign grids themselves (the pooler's output).

An element "comes from" the level that holds its maximum (the value max fusion passes on).

Ties: after the ReLU an element that is negative on every level is 0 on all of them, and the max
picks no level. ``ties`` says how such elements (any element whose maximum several levels hold)
are counted:

* ``"split"`` (default): 1/k to each of the k levels that hold the maximum, as the gradient of
  ``torch.amax`` is shared among them;
* ``"first"``: to the lowest of those levels (``torch.argmax``'s choice);
* ``"exclude"``: not counted; the shares are those of the elements with a single maximum.

The share of tied elements is reported with the tables (``tied_percent``).
"""

import math
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.modeling.poolers import assign_boxes_to_levels

from ..modeling.layers import AFPConv2d, AFPLinear
from ..modeling.poolers import AdaptiveFeaturePooler

__all__ = [
    "BRANCHES",
    "TIE_RULES",
    "LevelUsage",
    "count_level_sources",
    "draw_level_usage",
    "format_table",
]

BRANCHES = ("box", "mask")
TIE_RULES = ("split", "first", "exclude")
_CHUNK = 64  # proposals counted at a time (a mask branch grid is L x 256 x 14 x 14 per proposal)


def count_level_sources(per_level: torch.Tensor, ties: str = "split") -> torch.Tensor:
    """
    Args:
        per_level (Tensor): shape (M, L, E): for M proposals, the L per-level values of each of the
            E elements that the max fusion reduces over the levels.
        ties (str): one of :data:`TIE_RULES` (module docstring).

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
    element comes from (module docstring). Use as a context manager around the model's calls::

        with LevelUsage(model) as usage:
            for inputs in data_loader:
                model(inputs)
        usage.tables()["box"]["percent"]   # 4 x 4, rows: FPN level of the proposal, sum 100

    Args:
        model (nn.Module): a GeneralizedRCNN / PanopticPANet (or a wrapper with ``.module``) whose
            ``roi_heads`` use :class:`AdaptiveFeaturePooler`.
        ties (str): one of :data:`TIE_RULES`.
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

            def conv_hook(module, inputs, output):
                branch.count(output.reshape(output.shape[0], L, -1))

            return [layer.per_level.register_forward_hook(conv_hook)]
        # AFPLinear: per_level gives (L, M, D) before the norm; the norm (if any) (M, L * D, 1, 1)
        if layer.norm is None:

            def linear_hook(module, inputs, output):
                branch.count(torch.relu(output.transpose(0, 1)))

            return [layer.per_level.register_forward_hook(linear_hook)]
        L = layer.num_levels

        def norm_hook(module, inputs, output):
            branch.count(torch.relu(output.reshape(output.shape[0], L, -1)))

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


def format_table(name: str, table: dict) -> str:
    """A branch's table as text, for printing."""
    head = "{:<26}".format("{} branch".format(name)) + "".join(
        "{:>10}".format("level {}".format(j + 1)) for j in range(len(table["columns"]))
    )
    lines = [
        "{} branch, after {}: % of the fused elements from each level (columns), by the level FPN "
        "assigns the proposal to (rows)".format(name, table["layer"]),
        head,
    ]
    for i, row in enumerate(table["percent"]):
        label = "level {} (N{}, {} props)".format(i + 1, i + 2, table["proposals"][i])
        lines.append(
            "{:<26}".format(label)
            + "".join("{:>10}".format("-" if v is None else "{:.1f}".format(v)) for v in row)
        )
    return "\n".join(lines)


def draw_level_usage(tables: Dict[str, dict], path: str, title: Optional[str] = None):
    """
    Draws the paper's Fig. 3 as grouped bars into ``path`` (PNG, matplotlib's Agg backend): one
    panel per branch; horizontal axis the level the pooled features come from; one series per
    group of proposals (the level FPN assigns them to; the paper's "lines"; level 1 blue,
    level 4 yellow as in the paper's text).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#f2c80f", "#9467bd", "#8c564b"]
    fig, axes = plt.subplots(1, len(tables), figsize=(5.0 * len(tables), 3.6), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        rows = table["percent"]
        L = len(rows)
        width = 0.8 / L
        for i, row in enumerate(rows):
            xs = [j + (i - (L - 1) / 2) * width for j in range(L)]
            ys = [0.0 if v is None else v for v in row]
            label = "level {} ({} proposals)".format(i + 1, table["proposals"][i])
            ax.bar(xs, ys, width, color=colors[i % len(colors)], label=label)
        ax.set_xticks(range(L))
        ax.set_xticklabels(["level {}".format(j + 1) for j in range(L)])
        ax.set_xlabel("level the pooled features come from")
        ax.set_ylabel("ratio (%)")
        ax.set_ylim(0, 100)
        ax.set_title("{} branch ({})".format(name, table["layer"].split(".")[-1]))
        ax.legend(title="FPN level of proposal", fontsize=8, title_fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
