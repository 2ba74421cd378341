# -*- coding: utf-8 -*-
"""
The AFP and FF keys reach the heads they name (issue 28, item 6).

Each head is built from a config (Detectron2's ``build_roi_heads``, as a model builds it) and run
on level-stacked RoI grids; its output is compared with an independent construction from the
paper's definition (Sec. 3.2, 3.3), written here with plain torch ops and the head's own weights:

* the grids: torchvision's RoIAlign of every box on every level (MODEL.AFP.POOLER_SAMPLING_RATIO);
* the box head with MODEL.AFP.BOX_FUSE_POSITION, the mask head with MODEL.AFP.MASK_FUSE_POSITION:
  "after_first_layer" runs each level's grid through that level's first layer (fc1 of the 2fc
  head, conv1 of the heavier head and of the mask FCN), then fuses the levels element-wise
  (MODEL.AFP.FUSE_TYPE); "before_first_layer" fuses the grids, then runs one shared head;
* the mask head's fc path (MODEL.FF.*): two convs and an fc from the output of
  conv<START_LAYER>, fused with every class's FCN logits by FUSE_TYPE.

The box and mask heads get different fusion positions, so that a head reading the other head's
key fails. MODEL.AFP.FUSE_TYPE is one key for both heads (panet_d2/config.py): the heads cannot
be given different AFP fusion ops, only both the same one. Every Table 4 (AFP) and Table 5 (FF)
ablation config is also built and checked against the values its row names.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_roi_heads
from detectron2.structures import Boxes

from panet_d2 import AFPConv2d, AFPLinear

from ..common import panet_cfg

POSITIONS = ("after_first_layer", "before_first_layer")
LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32}  # MODEL.ROI_HEADS.IN_FEATURES and their strides
CHANNELS = 8
INPUT_SHAPE = {k: ShapeSpec(channels=CHANNELS, stride=s) for k, s in LEVELS.items()}
# Tiny heads: 3 classes, fc 32, convs 16, FF convs 16 and 8.
SMALL = [
    "MODEL.MASK_ON",
    True,
    "MODEL.ROI_HEADS.NUM_CLASSES",
    3,
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    32,
    "MODEL.ROI_BOX_HEAD.CONV_DIM",
    16,
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    16,
    "MODEL.FF.CONV_DIMS",
    [16, 8],
]
HEAVIER = ["MODEL.ROI_BOX_HEAD.NUM_CONV", 4, "MODEL.ROI_BOX_HEAD.NUM_FC", 1]
# Boxes of one 96 x 128 image: small (a few pixels at N5), large, past the border.
BOXES = torch.tensor(
    [
        [3.0, 5.0, 14.0, 11.0],
        [10.0, 20.0, 90.0, 80.0],
        [40.5, 7.25, 127.0, 95.0],
        [-8.0, 30.0, 30.0, 70.0],
        [60.0, 60.0, 140.0, 100.0],
    ]
)


# -------------------------------------------------------------------------------------------------
# The independent construction
# -------------------------------------------------------------------------------------------------
def _fuse(tensors, op):
    stacked = torch.stack(list(tensors))
    return stacked.amax(0) if op == "max" else stacked.sum(0)


def _norm(y, norm, rows):
    """Eval-mode per-channel norm (BN / SyncBN statistics and affine) of channels ``rows``."""
    if norm is None:
        return y
    stats = (norm.running_mean[rows], norm.running_var[rows], norm.weight[rows], norm.bias[rows])
    return F.batch_norm(y, *stats, training=False, eps=norm.eps)


def _conv(x, conv, rows=slice(None)):
    """ReLU(norm(3x3 conv)) with the output channels ``rows`` of a Detectron2 Conv2d."""
    bias = None if conv.bias is None else conv.bias[rows]
    return F.relu(_norm(F.conv2d(x, conv.weight[rows], bias, padding=1), conv.norm, rows))


def _fc(x, weight, bias, norm, rows=slice(None)):
    return F.relu(_norm(F.linear(x, weight, bias), norm, rows))


def _level_rows(level, width):
    return slice(level * width, (level + 1) * width)


def _first_layer_per_level(grids, layer, op):
    """Each level's grid through its own weights of ``layer`` (AFPConv2d / AFPLinear), fused."""
    per_level, L = layer.per_level, grids.shape[1]
    if isinstance(layer, AFPConv2d):
        width = per_level.weight.shape[0] // L
        outs = [_conv(grids[:, l], per_level, _level_rows(l, width)) for l in range(L)]
    else:
        w, b, width = per_level.weight, per_level.bias, per_level.weight.shape[1]
        rows = [_level_rows(l, width) for l in range(L)]
        outs = [_fc(grids[:, l].flatten(1), w[l], b[l], layer.norm, rows[l]) for l in range(L)]
    return _fuse(outs, op)


def _box_reference(head, grids, position, op, num_conv, num_fc):
    """The box head of the paper (2fc, or the heavier head: convs then fcs) on the grids."""
    first = head.conv1 if num_conv else head.fc1
    if position == "after_first_layer":
        x = _first_layer_per_level(grids, first, op)
    elif num_conv:
        x = _conv(_fuse(grids.unbind(1), op), first)
    else:
        x = _fc(_fuse(grids.unbind(1), op).flatten(1), first.weight, first.bias, _fc_norm(first))
    for k in range(2, num_conv + 1):
        x = _conv(x, getattr(head, "conv{}".format(k)))
    x = x.flatten(1)
    for k in range(1 if num_conv else 2, num_fc + 1):
        fc = getattr(head, "fc{}".format(k))
        x = _fc(x, fc.weight, fc.bias, _fc_norm(fc))
    return x


def _fc_norm(fc):
    return getattr(fc, "norm", None)  # NormLinear (MODEL.ROI_BOX_HEAD.FC_NORM) or nn.Linear


def _mask_reference(head, grids, position, op, num_conv, ff):
    """
    The mask head of the paper on the grids: the FCN (fusion at ``position``), deconv, predictor;
    ``ff``: None, or (start layer, fuse type, fc activation) of the fully-connected fusion.
    """
    if position == "after_first_layer":
        x = _first_layer_per_level(grids, head.mask_fcn1, op)
    else:
        x = _conv(_fuse(grids.unbind(1), op), head.mask_fcn1)
    outputs = [x]
    for k in range(2, num_conv + 1):
        x = _conv(x, getattr(head, "mask_fcn{}".format(k)))
        outputs.append(x)
    x = F.relu(F.conv_transpose2d(x, head.deconv.weight, head.deconv.bias, stride=2))
    logits = F.conv2d(x, head.predictor.weight, head.predictor.bias)
    if ff is None:
        return logits
    start, ff_op, fc_activation = ff
    path = head.fc_fusion
    h = _conv(_conv(outputs[start - 1], path.conv1), path.conv2)
    fc_mask = F.linear(h.flatten(1), path.fc.weight, path.fc.bias)
    if fc_activation:
        fc_mask = F.relu(fc_mask)
    fc_mask = fc_mask.view(-1, 1, *logits.shape[2:])  # class-agnostic, fused with every class
    if ff_op == "sum":
        return logits + fc_mask
    if ff_op == "max":
        return torch.maximum(logits, fc_mask)
    assert ff_op == "product", ff_op
    return logits * fc_mask


def _grids(features, resolution, sampling_ratio):
    """Every box RoIAligned (ROIAlignV2) from every level: (M, L, C, R, R)."""
    rois = torch.cat([torch.zeros(len(BOXES), 1), BOXES], dim=1)
    return torch.stack(
        [
            roi_align(f, rois, resolution, 1.0 / s, sampling_ratio, aligned=True)
            for f, s in zip(features, LEVELS.values())
        ],
        dim=1,
    )


# -------------------------------------------------------------------------------------------------
# The check
# -------------------------------------------------------------------------------------------------
def _randomize_norms(module, seed=0):
    """Random eval-mode statistics and affine of every BN-like norm, so that none is an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(getattr(m, "running_mean", None), torch.Tensor):
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(1 + torch.randn(n, generator=g) * 0.2)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _check_structure(name, first_layer, per_level_class, position):
    per_level = isinstance(first_layer, per_level_class)
    assert per_level == (
        position == "after_first_layer"
    ), "the {} head's first layer is {}per-level, but its fuse position key says {!r}".format(
        name, "" if per_level else "not ", position
    )


def check_heads(cfg, box, mask, ff):
    """
    Builds the ROI heads of ``cfg`` and checks each head against the independent construction
    with the values the test expects: ``box`` and ``mask`` (fuse position, fuse type), ``ff``
    (None, or start layer, fuse type, fc activation).
    """
    torch.manual_seed(0)
    heads = build_roi_heads(cfg, INPUT_SHAPE).eval()
    _randomize_norms(heads)
    num_conv, num_fc = cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC
    box_first = (heads.box_head.conv1, AFPConv2d) if num_conv else (heads.box_head.fc1, AFPLinear)
    _check_structure("box", *box_first, box[0])
    _check_structure("mask", heads.mask_head.mask_fcn1, AFPConv2d, mask[0])
    g = torch.Generator().manual_seed(1)
    features = [torch.randn(1, CHANNELS, 96 // s, 128 // s, generator=g) for s in LEVELS.values()]
    ratio = cfg.MODEL.AFP.POOLER_SAMPLING_RATIO
    with torch.no_grad():
        box_grids = _grids(features, cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION, ratio)
        mask_grids = _grids(features, cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION, ratio)
        ours = {
            "box grids": heads.box_pooler(features, [Boxes(BOXES)]),
            "mask grids": heads.mask_pooler(features, [Boxes(BOXES)]),
        }
        ours["box head"] = heads.box_head(ours["box grids"])
        ours["mask head"] = heads.mask_head.layers(ours["mask grids"])
        mask_conv = cfg.MODEL.ROI_MASK_HEAD.NUM_CONV
        expected = {
            "box grids": box_grids,
            "mask grids": mask_grids,
            "box head": _box_reference(heads.box_head, box_grids, *box, num_conv, num_fc),
            "mask head": _mask_reference(heads.mask_head, mask_grids, *mask, mask_conv, ff),
        }
    for name, value in expected.items():
        msg = "{}: not what box {}, mask {} (fuse position, type) and FF {} say".format(
            name, box, mask, ff
        )
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-5, msg=msg)
    return heads


# -------------------------------------------------------------------------------------------------
# Different fuse positions for the box and mask heads
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("box_head", ["2fc", "4conv1fc"])
@pytest.mark.parametrize("fuse_type", ["max", "sum"])
@pytest.mark.parametrize(
    "box_position,mask_position", list(itertools.product(POSITIONS, POSITIONS))
)
def test_each_head_fuses_where_its_own_key_says(box_position, mask_position, fuse_type, box_head):
    # FF with values other than the defaults (conv3, sum, no activation)
    ff = (2, "max", True)
    keys = {
        "MODEL.AFP.FUSE_TYPE": fuse_type,
        "MODEL.AFP.BOX_FUSE_POSITION": box_position,
        "MODEL.AFP.MASK_FUSE_POSITION": mask_position,
        "MODEL.FF.ENABLED": True,
        "MODEL.FF.START_LAYER": ff[0],
        "MODEL.FF.FUSE_TYPE": ff[1],
        "MODEL.FF.FC_ACTIVATION": ff[2],
    }
    opts = (
        SMALL + (HEAVIER if box_head == "4conv1fc" else []) + [x for kv in keys.items() for x in kv]
    )
    heads = check_heads(
        panet_cfg(opts=opts), (box_position, fuse_type), (mask_position, fuse_type), ff
    )
    assert heads.box_head.fuse_position == box_position
    assert heads.box_head.fuse_type == heads.mask_head.fuse_type == fuse_type


# -------------------------------------------------------------------------------------------------
# The Table 4 and Table 5 rows
# -------------------------------------------------------------------------------------------------
# Table 4: fuse before ("fu.fc1fc2") or after ("fc1fu.fc2") the first layer, by max or sum, in both
# heads; FF off (its base, MST + MBN + BPA + AFP).
TABLE4 = {
    "afp_{}_fc1_{}.yaml".format(where, op): (position, op)
    for where, position in (("before", POSITIONS[1]), ("after", POSITIONS[0]))
    for op in ("max", "sum")
}
# Table 5: FF from conv2, conv3 or conv4, fused by max, sum or product; AFP as its base (max,
# after the first layer).
TABLE5 = {
    "ff_conv{}_{}.yaml".format(k, op): (k, op)
    for k in (2, 3, 4)
    for op in ("max", "sum", "product")
}


def _row(name):
    """What the row's name says: (AFP fuse position, AFP fuse type), FF (start, type) or None."""
    if name in TABLE4:
        return TABLE4[name], None
    return ("after_first_layer", "max"), TABLE5[name]


@pytest.mark.parametrize("name", sorted(TABLE4) + sorted(TABLE5))
def test_ablation_row_reaches_the_heads(name):
    (position, op), ff = _row(name)
    cfg = panet_cfg("ablations/" + name, opts=SMALL)
    afp = cfg.MODEL.AFP
    # the file says what its row says
    assert (afp.ENABLED, afp.FUSE_TYPE) == (True, op)
    assert afp.BOX_FUSE_POSITION == afp.MASK_FUSE_POSITION == position
    assert cfg.MODEL.FF.ENABLED == (ff is not None)
    if ff is not None:
        assert (cfg.MODEL.FF.START_LAYER, cfg.MODEL.FF.FUSE_TYPE) == ff
    ff_values = None if ff is None else ff + (cfg.MODEL.FF.FC_ACTIVATION,)
    heads = check_heads(cfg, (position, op), (position, op), ff_values)
    box_head, mask_head = heads.box_head, heads.mask_head
    per_level = position == "after_first_layer"
    assert (box_head.fuse_position, box_head.fuse_type) == (position, op)
    assert box_head.per_level_first_layer == mask_head.per_level_first_layer == per_level
    assert mask_head.fuse_type == op
    assert mask_head.ff_start_layer == (0 if ff is None else ff[0])
    assert (mask_head.fc_fusion is None) == (ff is None)
    if ff is not None:
        assert mask_head.fc_fusion.fuse_type == ff[1]
