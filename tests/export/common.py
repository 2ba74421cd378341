# -*- coding: utf-8 -*-
"""Shared helpers of the export tests: small models and output comparisons."""

import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from ..common import NARROW_HEADS, NO_THRESHOLDS, R18, load_script, panet_cfg, random_image

# What tools/export_model.py exports with (tools/export_support.py)
export = load_script("tools/export_support.py", "panet_export_support")

# Small and fast, with outputs worth comparing: ResNet-18; GroupNorm in the ResNet, because with
# random weights its default FrozenBN (identity statistics) lets activations grow so large that
# every score is 1.0 (ties, whose order is up to each sort implementation); no score thresholds,
# so that every image has instances and the panoptic merge has things and stuff.
SMALL = (
    R18
    + ["MODEL.RESNETS.NORM", "GN"]
    + NARROW_HEADS
    + ["MODEL.ROI_BOX_HEAD.CONV_DIM", 64, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32]
    + NO_THRESHOLDS
)

# (image height, width, seed): the size exported with, then another one
TRACE_IMAGE = (128, 160, 1)
OTHER_IMAGE = (96, 224, 2)


def small_model(config, opts=()):
    cfg = panet_cfg(config, opts=SMALL + list(opts))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def image(spec):
    return random_image(*spec)


def instances_fields(instances):
    """Fields of Instances (eager, rebuilt by a schema, or scripted) as tensors."""
    if not isinstance(instances, (Instances, dict)):  # Detectron2's scripted Instances class
        instances = {n: getattr(instances, "_" + n) for n in instances._field_names}
    fields = instances.get_fields() if isinstance(instances, Instances) else instances
    return {
        k: (v.tensor if isinstance(v, Boxes) else v) for k, v in fields.items() if v is not None
    }


def assert_equal_fields(expected: dict, actual: dict, keys=None, atol=None):
    """Same keys; tensors equal (``atol``: per key, the largest allowed difference)."""
    atol = atol or {}
    keys = sorted(expected) if keys is None else keys
    assert sorted(k for k in actual if k in keys) == sorted(keys)
    for k in keys:
        a, b = expected[k], actual[k].to(expected[k].device)
        assert a.shape == b.shape, (k, a.shape, b.shape)
        if k in atol:
            diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
            assert diff <= atol[k], "{} differs by {} > {}".format(k, diff, atol[k])
        else:
            assert torch.equal(a, b.to(a.dtype)), "{} differs".format(k)


def assert_same_panoptic(expected: dict, got: dict, sem_atol: float):
    """The panoptic map and segments (but scores) of ``got`` equal ``expected``'s, except at pixels
    where eager's two best semantic logits are within ``2 * sem_atol``: there another backend's
    logits (within ``sem_atol``) may rank the two stuff classes either way. A segment's area then
    differs by at most the number of such pixels."""
    seg, info = expected["panoptic_seg"]
    got_seg, got_info = got["panoptic_seg"]
    best = expected["sem_seg"].topk(2, dim=0).values
    ties = best[0] - best[1] <= 2 * sem_atol
    differ = got_seg != seg
    assert not (differ & ~ties).any(), "the panoptic maps differ where no logits tie"
    assert [(s["id"], s["category_id"], s["isthing"]) for s in got_info] == [
        (s["id"], s["category_id"], s["isthing"]) for s in info
    ]
    for s, g in zip(info, got_info):
        assert (g.get("instance_id"), "area" in g) == (s.get("instance_id"), "area" in s)
        assert abs(g.get("area", 0) - s.get("area", 0)) <= int(differ.sum()), (s, g)
