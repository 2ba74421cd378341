# -*- coding: utf-8 -*-
"""
Fig. 3 (tools/level_usage.py, tools/analyze_level_usage.py): the level counts of the
hooks equal a brute-force count, element by element in Python, over per-level features recomputed
from the weights with torchvision's roi_align and torch.nn.functional; each row sums to 100; the
tool runs end to end on a checkpoint and writes the JSON and the PNG, leaving matplotlib's backend
as it was; the model (not the config) refuses models without AFP or with sum fusion.
"""

import copy
import json
import math
import os
import sys

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("detectron2")
torchvision_ops = pytest.importorskip("torchvision.ops")

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from panet_d2 import PANetCheckpointer  # noqa: E402
from panet_d2.data import register_synthetic_dataset  # noqa: E402
from panet_d2.modeling.layers import AFPConv2d  # noqa: E402

from ..common import ROOT, error_exit, load_script, panet_cfg, random_image  # noqa: E402

_level_usage = load_script("tools/level_usage.py", "panet_d2_level_usage")
TIE_RULES, LevelUsage = _level_usage.TIE_RULES, _level_usage.LevelUsage
count_level_sources = _level_usage.count_level_sources

pytestmark = pytest.mark.usefixtures("single_thread")

INSTANCE = "quick_schedules/panet_R_18_synth_instance.yaml"
PANOPTIC = "quick_schedules/panoptic_panet_R_18_synth.yaml"


# ------------------------------------------------------------------------------------------------
# brute force: an independent recomputation and a per-proposal, per-element loop
# ------------------------------------------------------------------------------------------------
def _fpn_level(box, canonical_size=224, canonical_level=4, min_level=2, max_level=5):
    """FPN's Eqn. 1 for one box, in Python."""
    x0, y0, x1, y1 = box
    size = math.sqrt((x1 - x0) * (y1 - y0))
    k = math.floor(canonical_level + math.log2(size / canonical_size + 1e-8))
    return min(max(k, min_level), max_level) - min_level


def _norm(norm, y, level, channels):
    """The per-level slice of the layer's norm (None, GroupNorm with 32 groups a level, BN)."""
    if norm is None:
        return y
    sl = slice(level * channels, (level + 1) * channels)
    if isinstance(norm, torch.nn.GroupNorm):
        return F.group_norm(y, 32, norm.weight[sl], norm.bias[sl], norm.eps)
    assert not norm.training
    mean, var = norm.running_mean[sl], norm.running_var[sl]
    return F.batch_norm(y, mean, var, norm.weight[sl], norm.bias[sl], False, 0.0, norm.eps)


def _reference_per_level(cfg, head_cfg, features, boxes, head, layer_name):
    """
    list of L tensors (M, E), float64: for each level, the values max fusion reduces, from the
    weights; those of a per-level layer before its ReLU (in :func:`_brute_force_counts`).
    """
    grids = [
        torchvision_ops.roi_align(
            features[name].double(),
            [boxes.double()],
            output_size=head_cfg.POOLER_RESOLUTION,
            spatial_scale=1.0 / stride,
            sampling_ratio=cfg.MODEL.AFP.POOLER_SAMPLING_RATIO,
            aligned=True,
        )
        for name, stride in zip(cfg.MODEL.ROI_HEADS.IN_FEATURES, (4, 8, 16, 32))
    ]
    if layer_name is None:  # fusion of the RoIAlign grids: no layer, no ReLU
        return [g.flatten(1) for g in grids]
    layer = copy.deepcopy(getattr(head, layer_name)).double()
    out = []
    for level, grid in enumerate(grids):
        if isinstance(layer, AFPConv2d):
            conv, c = layer.per_level, layer.out_channels
            sl = slice(level * c, (level + 1) * c)
            bias = None if conv.bias is None else conv.bias[sl]
            y = F.conv2d(grid, conv.weight[sl], bias, padding=conv.padding)
            y = _norm(conv.norm, y, level, c)
        else:
            w, b = layer.per_level.weight[level], layer.per_level.bias[level]
            y = F.linear(grid.flatten(1), w, b)[:, :, None, None]
            y = _norm(layer.norm, y, level, w.shape[0])
        out.append(y.flatten(1))
    return out


def _brute_force_counts(per_level, fpn_levels, relu=True, eps=1e-4):
    """
    Element by element: the ReLU (``relu``), the levels holding the maximum, the count by each
    tie rule.

    Returns:
        counts (dict: tie rule -> Tensor (L, L)), ambiguous (list[int]): per row, the elements
        whose outcome float32 rounding in the model could change (top two values, or the top value
        and 0, closer than ``eps``; exact zeros, of ReLU'd features, are exact in both): the
        counts may differ there.
    """
    L = len(per_level)
    values = [t.tolist() for t in per_level]
    counts = {ties: [[0.0] * L for _ in range(L)] for ties in TIE_RULES}
    ambiguous = [0] * L
    for m, row in enumerate(fpn_levels):
        for e in range(len(values[0][m])):
            vals = [values[level][m][e] for level in range(L)]
            z = sorted(vals, reverse=True)
            tol = eps * (1.0 + abs(z[0]))
            if 0 < z[0] - z[1] < tol or (relu and 0 < abs(z[0]) < tol):
                ambiguous[row] += 1
            vals = [max(v, 0.0) for v in vals] if relu else vals
            best = max(vals)
            holders = [level for level in range(L) if vals[level] == best]
            for level in holders:
                counts["split"][row][level] += 1.0 / len(holders)
            counts["first"][row][holders[0]] += 1.0
            if len(holders) == 1:
                counts["exclude"][row][holders[0]] += 1.0
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in counts.items()}, ambiguous


VARIANTS = {
    # 2fc box head (fc1fu.fc2), mask conv1: the paper's
    "2fc": [],
    # MBN-style norms after the per-level layers
    "2fc_gn": [
        "MODEL.ROI_BOX_HEAD.FC_NORM",
        "GN",
        "MODEL.ROI_MASK_HEAD.NORM",
        "GN",
        "MODEL.FF.ENABLED",
        "False",  # its 16-channel conv cannot take GN(32)
    ],
    # heavier head: per-level conv1 with BN
    "hhd_bn": [
        "MODEL.ROI_BOX_HEAD.NUM_CONV",
        "4",
        "MODEL.ROI_BOX_HEAD.NUM_FC",
        "1",
        "MODEL.ROI_BOX_HEAD.CONV_DIM",
        "32",
        "MODEL.ROI_BOX_HEAD.NORM",
        "BN",
    ],
    # fu.fc1fc2: the fused elements are the RoIAlign grids
    "fuse_grids": [
        "MODEL.AFP.BOX_FUSE_POSITION",
        "before_first_layer",
        "MODEL.AFP.MASK_FUSE_POSITION",
        "before_first_layer",
    ],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_counts_equal_brute_force(variant):
    torch.manual_seed(0)
    cfg = panet_cfg(INSTANCE, opts=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"] + VARIANTS[variant])
    cfg.TEST.DETECTIONS_PER_IMAGE = 4
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 30
    model = build_model(cfg).eval()
    with torch.no_grad():  # BN: random running statistics, so that the norm is not an identity
        for m in model.roi_heads.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    H, W = 480, 512
    # boxes that FPN assigns to each of the 4 levels (sqrt(area) 40, 150, 300, 470)
    given = torch.tensor(
        [[10, 20, 50, 60], [100, 50, 250, 200], [50, 100, 350, 400], [5, 5, 475, 475]],
        dtype=torch.float32,
    )
    with torch.no_grad():
        images = model.preprocess_image([{"image": random_image(H, W, seed=1)}])
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
    # box branch: the RPN's proposals and the given boxes; mask branch: the detections, then the
    # given boxes (forward_with_given_boxes, as with precomputed boxes)
    proposals[0] = Instances.cat(
        [
            proposals[0],
            Instances((H, W), proposal_boxes=Boxes(given), objectness_logits=torch.zeros(4)),
        ]
    )
    instances = Instances((H, W), pred_boxes=Boxes(given), pred_classes=torch.tensor([0, 1, 2, 0]))

    usages = {}
    for ties in TIE_RULES:
        with LevelUsage(model, ties=ties) as usage, torch.no_grad():
            detections, _ = model.roi_heads(images, features, proposals, None)
            model.roi_heads.forward_with_given_boxes(features, [instances])
        usages[ties] = usage

    boxes = {
        "box": proposals[0].proposal_boxes.tensor,
        "mask": torch.cat([detections[0].pred_boxes.tensor, given]),
    }
    heads = {"box": model.roi_heads.box_head, "mask": model.roi_heads.mask_head}
    for branch in ("box", "mask"):
        head_cfg = cfg.MODEL.ROI_BOX_HEAD if branch == "box" else cfg.MODEL.ROI_MASK_HEAD
        layer_name = usages["split"].branches[branch].layer_name.split(".")[-1]
        layer_name = None if layer_name.endswith("_pooler") else layer_name
        with torch.no_grad():
            per_level = _reference_per_level(
                cfg, head_cfg, features, boxes[branch], heads[branch], layer_name
            )
        fpn_levels = [_fpn_level(b) for b in boxes[branch].tolist()]
        assert set(fpn_levels) == {0, 1, 2, 3}
        expected, ambiguous = _brute_force_counts(per_level, fpn_levels, relu=bool(layer_name))
        assert sum(ambiguous) <= 1e-3 * len(fpn_levels) * per_level[0].shape[1]
        tolerance = torch.tensor(ambiguous, dtype=torch.float64)[:, None] + 1e-6
        for ties, usage in usages.items():
            got = usage.branches[branch]
            assert ((got.counts - expected[ties]).abs() <= tolerance).all(), (branch, ties)
            assert got.proposals.tolist() == [fpn_levels.count(k) for k in range(4)]
        table = usages["split"].tables()[branch]
        assert table["elements"] == len(fpn_levels) * per_level[0].shape[1]
        for row in table["percent"]:
            assert sum(row) == pytest.approx(100.0, abs=1e-3)
        # a random model's ReLU leaves zeros on every level: ties, which "exclude" leaves out
        split, exclude = usages["split"].branches[branch], usages["exclude"].branches[branch]
        assert split.tied > 0
        assert exclude.counts.sum() == pytest.approx(split.counts.sum() - split.tied)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_proposals_count_zero(variant):
    """An image without RoIs (no detections reach the mask head): nothing counted, no error."""
    cfg = panet_cfg(INSTANCE, opts=VARIANTS[variant])
    model = build_model(cfg).eval()
    H, W = 64, 96
    empty = Boxes(torch.zeros(0, 4))
    with torch.no_grad():
        images = model.preprocess_image([{"image": random_image(H, W, seed=2)}])
        features = model.backbone(images.tensor)
    proposals = [Instances((H, W), proposal_boxes=empty, objectness_logits=torch.zeros(0))]
    instances = Instances((H, W), pred_boxes=empty, pred_classes=torch.zeros(0, dtype=torch.long))
    with LevelUsage(model) as usage, torch.no_grad():
        detections, _ = model.roi_heads(images, features, proposals, None)
        model.roi_heads.forward_with_given_boxes(features, [instances])
    assert len(detections[0]) == 0
    tables = usage.tables()
    assert sorted(tables) == ["box", "mask"]
    for table in tables.values():
        assert table["proposals"] == [0, 0, 0, 0] and table["elements"] == 0
        assert table["percent"] == [[None] * 4] * 4 and table["tied_percent"] is None


def test_tie_rules():
    # one proposal, 3 elements over 4 levels: a clear max on level 2; a tie of levels 0 and 3;
    # all zero (ReLU)
    y = torch.tensor([[[0.1, 0.5, 0.0], [0.2, 0.1, 0.0], [0.9, 0.2, 0.0], [0.3, 0.5, 0.0]]])
    assert count_level_sources(y, "split").tolist() == [[0.75, 0.25, 1.25, 0.75]]
    assert count_level_sources(y, "first").tolist() == [[2.0, 0.0, 1.0, 0.0]]
    assert count_level_sources(y, "exclude").tolist() == [[0.0, 0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="ties"):
        count_level_sources(y, "random")


# ------------------------------------------------------------------------------------------------
# the tool
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tool():
    return load_script("tools/analyze_level_usage.py", "analyze_level_usage")


def _run_tool(tool, tmp_path, monkeypatch, name, seed, score):
    """The tool on 2 generated images with a checkpoint of a freshly built model, as training
    writes it (PANetCheckpointer): its result, output folder and weights."""
    root = str(tmp_path / "datasets")
    monkeypatch.setenv("PANET_D2_DATASETS", root)
    register_synthetic_dataset(name, root=root, splits={"val": {"num_images": 2, "seed": seed}})
    torch.manual_seed(0)
    PANetCheckpointer(build_model(panet_cfg(PANOPTIC)), save_dir=str(tmp_path)).save("model_final")
    out, weights = tmp_path / "fig3", str(tmp_path / "model_final.pth")
    argv = ["--config-file", os.path.join(ROOT, "configs", PANOPTIC), "--output", str(out)]
    argv += ["--dataset", name + "_val_panoptic", "--num-images", "2", "MODEL.WEIGHTS", weights]
    argv += ["MODEL.DEVICE", "cpu", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(score)]
    return tool.invoke_main(argv), out, weights


def test_tool_end_to_end(tool, tmp_path, monkeypatch):
    result, out, weights = _run_tool(tool, tmp_path, monkeypatch, "test_level_usage_synth", 3, 0.0)
    with open(out / "level_usage.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(result))
    assert saved["num_images"] == 2 and saved["weights"] == weights
    assert (saved["canonical_box_size"], saved["canonical_level"]) == (224, 4)
    assert sorted(saved["branches"]) == ["box", "mask"]
    assert saved["branches"]["box"]["layer"] == "roi_heads.box_head.fc1"
    assert saved["branches"]["mask"]["layer"] == "roi_heads.mask_head.mask_fcn1"
    for table in saved["branches"].values():
        assert len(table["percent"]) == 4 and sum(table["proposals"]) > 0
        for row, n in zip(table["percent"], table["proposals"]):
            assert (sum(row) == pytest.approx(100.0, abs=1e-2)) if n else row == [None] * 4
    png = out / "level_usage.png"
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000


def test_tool_images_without_detections(tool, tmp_path, monkeypatch):
    """No detection passes the score threshold: the mask branch counts zero, the run carries on."""
    result, out, _ = _run_tool(tool, tmp_path, monkeypatch, "test_level_usage_none", 4, 1.0)
    mask, box = result["branches"]["mask"], result["branches"]["box"]
    assert mask["proposals"] == [0, 0, 0, 0] and mask["elements"] == 0
    assert mask["percent"] == [[None] * 4] * 4
    assert sum(box["proposals"]) > 0 and result["num_images"] == 2
    assert (out / "level_usage.json").is_file() and (out / "level_usage.png").is_file()


def test_drawing_leaves_matplotlib_as_it_was(tool, tmp_path):
    """The chart is drawn on a figure of its own (Agg canvas): no backend switched, no pyplot."""
    matplotlib = pytest.importorskip("matplotlib")
    backend = dict.__getitem__(matplotlib.rcParams, "backend")  # unresolved: as the user left it
    pyplot = "matplotlib.pyplot" in sys.modules
    table = {
        "layer": "roi_heads.box_head.fc1",
        "percent": [[40.0, 30.0, 20.0, 10.0], [None] * 4, [25.0] * 4, [10.0, 20.0, 30.0, 40.0]],
        "proposals": [5, 0, 2, 1],
        "columns": ["level {}".format(j + 1) for j in range(4)],
    }
    png = tmp_path / "fig.png"
    tool.draw_level_usage({"box": table, "mask": table}, str(png), title="t")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    assert ("matplotlib.pyplot" in sys.modules) == pyplot
    text = tool.format_table("box", table).splitlines()
    assert text[2].split()[-4:] == ["40.0", "30.0", "20.0", "10.0"] and text[3].endswith("-")


@pytest.mark.parametrize(
    "opts, message",
    [
        (["MODEL.AFP.ENABLED", "False"], "needs adaptive feature pooling (MODEL.AFP.ENABLED=True)"),
        (["MODEL.AFP.FUSE_TYPE", "sum"], "needs max fusion: with 'sum' fusion"),
    ],
)
def test_tool_refuses_models_without_max_fusion(tool, tmp_path, opts, message):
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "--output", str(tmp_path)]
    assert message in error_exit(tool.invoke_main, argv + opts)
    assert not os.listdir(tmp_path)


def test_level_usage_refuses_sum_fusion():
    cfg = panet_cfg(INSTANCE, opts=["MODEL.AFP.FUSE_TYPE", "sum"])
    with pytest.raises(ValueError, match="max fusion"):
        LevelUsage(build_model(cfg))
    cfg = panet_cfg(INSTANCE, opts=["MODEL.AFP.ENABLED", "False"])
    with pytest.raises(ValueError, match="AFP.ENABLED=True"):
        LevelUsage(build_model(cfg))


def test_tool_refuses_bad_arguments_before_the_model(tool, tmp_path):
    # the weights do not exist: each refusal comes before the model loads
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"mine")
    argv = ["--config-file", os.path.join(ROOT, "configs", INSTANCE), "MODEL.DEVICE", "cpu"]
    argv += ["MODEL.WEIGHTS", str(tmp_path / "missing.pth")]
    assert error_exit(tool.invoke_main, ["--num-images", "-3"] + argv) == (
        "ERROR: --num-images -3: must be 0 (every image) or positive"
    )
    assert error_exit(tool.invoke_main, ["--output", str(mine)] + argv) == (
        "ERROR: --output={!r} is a file: give a folder (created if missing).".format(str(mine))
    )
    assert mine.read_bytes() == b"mine"
