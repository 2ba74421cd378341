#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
What RoIAlign costs in adaptive feature pooling: the box branch's all-level pooler (every one of
1000 proposals pooled from N2..N5 of an HxW image, 256 channels, 7x7 bins) and the mask branch's
(100 detections, 14x14 bins):

* MODEL.AFP.POOLER_SAMPLING_RATIO 0 (Detectron2's adaptive default): torchvision's RoIAlign on each
  level;
* 2 (the authors' release), torchvision's RoIAlign on each level (what CUDA and ONNX export use);
* 2, the batched op that eager mode uses on the CPU (``multilevel_roi_align``).

Forward alone (inference) and forward + backward (training: the gradient of every level), the
variants alternated, median of the runs.

    python3 benchmarks/bench_afp_sampling.py --repeats 5 --threads 2
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import panet_d2  # noqa: E402,F401  isort: skip  (first: Detectron2 then imports without warnings)
from benchmarks.bench_model import fixed_proposals  # noqa: E402
from benchmarks.options import add_timing_options  # noqa: E402
from panet_d2.modeling import AdaptiveFeaturePooler  # noqa: E402


def pooler_parser(doc):
    """The options of the pooler benchmarks: image size, repeats, threads."""
    return add_timing_options(argparse.ArgumentParser(description=doc.split("\n\n")[0]))


def pyramid_features(height, width, seed=0):
    """Seeded N2..N5 features of an HxW image: 4 tensors (1, 256, H / 2^k, W / 2^k), k = 2..5."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 256, height // 2**k, width // 2**k, generator=g) for k in (2, 3, 4, 5)]


def main():
    args = pooler_parser(__doc__).parse_args()
    torch.set_num_threads(args.threads)
    feats = pyramid_features(args.height, args.width)
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    boxes = fixed_proposals(args.height, args.width, 1000, seed=0).proposal_boxes
    variants = (
        ("0, torchvision per level", 0, False),
        ("2, torchvision per level", 2, False),
        ("2, batched (eager CPU default)", 2, True),
    )
    rows = {}
    for branch, size, n in (("box", 7, 1000), ("mask", 14, 100)):
        for name, ratio, batched in variants:
            pooler = AdaptiveFeaturePooler(
                size, scales, sampling_ratio=ratio, pooler_type="ROIAlignV2"
            )
            if not batched:  # force the per-level path
                pooler._use_multilevel_roi_align = lambda x: False
            rows[(branch, n, name)] = (pooler, [boxes[:n]])
    fwd = {k: [] for k in rows}
    fwd_bwd = {k: [] for k in rows}
    for _ in range(args.repeats + 1):  # the first round warms up
        for k, (pooler, b) in rows.items():
            with torch.no_grad():
                t = time.perf_counter()
                pooler(feats, b)
                fwd[k].append(time.perf_counter() - t)
            x = [f.requires_grad_() for f in feats]
            t = time.perf_counter()
            out = pooler(x, b)
            torch.autograd.grad(out, x, torch.ones_like(out))
            fwd_bwd[k].append(time.perf_counter() - t)
            for f in feats:
                f.requires_grad_(False)
    print(
        "| all-level pooler, {}x{} image | sampling ratio, op | forward median s (min, max) "
        "| forward + backward median s (min, max) |".format(args.height, args.width)
    )
    print("|---|---|---|---|")
    for k in rows:
        branch, n, name = k
        a, b = fwd[k][1:], fwd_bwd[k][1:]
        print(
            "| {} ({} RoIs) | {} | {:.3f} ({:.3f}, {:.3f}) | {:.3f} ({:.3f}, {:.3f}) |".format(
                branch,
                n,
                name,
                statistics.median(a),
                min(a),
                max(a),
                statistics.median(b),
                min(b),
                max(b),
            )
        )


if __name__ == "__main__":
    main()
