#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
How much each setting that the release configs change moves the model's outputs, with the
authors' weights in place: a full-size R-50 release model of one variant in the release's format
with seeded random weights (convs He-initialised, biases N(0, 0.1), norm and affine weights
1 + N(0, 0.1): trained models have nonzero biases, the release initialises them to 0), converted
by tools/convert_panet_release.py and loaded strictly into the release config's model; then one
setting at a time set back to what panet_d2 had before the release configs:

* pixel mean: Detectron2's default (103.530, 116.280, 123.675) instead of the release's;
* the bottom-up path's conv biases dropped (MODEL.PAFPN.CONV_BIAS False cannot hold them);
* ROIAlignV2 (aligned=True, Detectron2's default) instead of Detectron's RoIAlign in both heads.

Outputs on one in-repo photo (assets/demo_images/img1.jpg, short side --size) and fixed
proposals (log-uniform sizes 16..512 px): N2..N6, the box head's class probabilities and deltas,
the mask head's logits. Reported: ||changed - release|| / ||release|| (relative L2) per output.

    python3 benchmarks/release_config_effects.py --variant mask --size 512 --threads 2
"""

import argparse
import importlib.util
import math
import os
import re
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import panet_d2  # noqa: E402,F401  isort: skip  (first: Detectron2 then imports without warnings)
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from benchmarks.bench_model import fixed_proposals  # noqa: E402
from benchmarks.options import at_least  # noqa: E402
from panet_d2 import add_panet_config  # noqa: E402
from tests.release.release_format import FULL, release_shapes  # noqa: E402


def _tool():
    path = os.path.join(ROOT, "tools", "convert_panet_release.py")
    spec = importlib.util.spec_from_file_location("convert_panet_release", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_release_state(variant, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in release_shapes(variant, FULL).items():
        if len(shape) > 1:  # conv / fc weight: He (fan in)
            fan_in = math.prod(shape[1:])
            out[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        elif k.endswith("weight"):  # GN / affine scale
            out[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[k] = 0.1 * torch.randn(shape, generator=g)
    return out


def build(tool, variant, state, opts=()):
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", tool.RELEASE_CONFIGS[variant]))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + list(opts))
    model = build_model(cfg).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    return model, cfg, missing, unexpected


@torch.no_grad()
def outputs(model, image, proposals):
    images = model.preprocess_image([{"image": image}])
    feats = model.backbone(images.tensor)
    out = {"N%d" % (int(k[1:])): v for k, v in feats.items()}
    rh = model.roi_heads
    x = rh.box_pooler([feats[f] for f in rh.box_in_features], [proposals.proposal_boxes])
    scores, deltas = rh.box_predictor(rh.box_head(x))
    out["box class probabilities"] = scores.softmax(-1)
    out["box deltas"] = deltas
    if getattr(rh, "mask_on", False):
        boxes = [proposals.proposal_boxes[:50]]
        out["mask logits"] = rh.mask_head.layers(
            rh.mask_pooler([feats[f] for f in rh.mask_in_features], boxes)
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="mask", choices=("det", "det_2fc", "mask"))
    parser.add_argument(
        "--size",
        type=at_least(1, 988),
        default=512,
        help="short side of the image (its long side 1400 at most: 988 for its 353 x 500 image)",
    )
    parser.add_argument("--threads", type=at_least(1), default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tool = _tool()
    state = tool.convert_release_state_dict(random_release_state(args.variant, args.seed))
    release, cfg, missing, unexpected = build(tool, args.variant, state)
    assert not missing and not unexpected, (missing, unexpected)
    img = read_image(os.path.join(ROOT, "assets", "demo_images", "img1.jpg"), format="BGR")
    img = T.ResizeShortestEdge(args.size, 1400).get_transform(img).apply_image(img)
    image = torch.as_tensor(img.transpose(2, 0, 1).copy()).float()
    h, w = image.shape[1:]
    proposals = fixed_proposals(h, w, 300, seed=1)
    ref = outputs(release, image, proposals)

    no_bias = {k: v for k, v in state.items() if not re.search(r"bpa_(down|out)\d\.bias$", k)}
    changes = [
        ("pixel mean of Detectron2", ["MODEL.PIXEL_MEAN", [103.530, 116.280, 123.675]], state),
        ("no bottom-up conv bias", ["MODEL.PAFPN.CONV_BIAS", False], no_bias),
        (
            "ROIAlignV2 (aligned=True)",
            ["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignV2"]
            + (["MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlignV2"] if cfg.MODEL.MASK_ON else []),
            state,
        ),
    ]
    print(
        "variant {}, image {}x{}, {} proposals, {} threads; relative L2 change per output".format(
            args.variant, h, w, len(proposals), args.threads
        )
    )
    rows = []
    for name, opts, weights in changes:
        model, _, missing, unexpected = build(tool, args.variant, weights, opts)
        assert not missing and not unexpected, (missing, unexpected)
        out = outputs(model, image, proposals)
        rows.append((name, {k: ((out[k] - v).norm() / v.norm()).item() for k, v in ref.items()}))
    keys = list(ref)
    print("| change | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, rel in rows:
        print("| {} | ".format(name) + " | ".join("{:.1%}".format(rel[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
