#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
What RoIAlign's sampling ratio costs in adaptive feature pooling: the box branch's all-level pooler
(every one of 1000 proposals pooled from N2..N5 of an HxW image, 256 channels, 7x7 bins) and the
mask branch's (100 detections, 14x14 bins), with MODEL.AFP.POOLER_SAMPLING_RATIO 0 (Detectron2's
adaptive default) and 2 (the authors' release), alternated, median of the runs.

    python3 benchmarks/bench_afp_sampling.py --repeats 5 --threads 2
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_model import fixed_proposals  # noqa: E402
from panet_d2.modeling import AdaptiveFeaturePooler  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    feats = [
        torch.randn(1, 256, args.height // 2**k, args.width // 2**k, generator=g)
        for k in (2, 3, 4, 5)
    ]
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    boxes = fixed_proposals(args.height, args.width, 1000, seed=0).proposal_boxes
    rows = {}
    for branch, size, n in (("box", 7, 1000), ("mask", 14, 100)):
        for ratio in (0, 2):
            pooler = AdaptiveFeaturePooler(
                size, scales, sampling_ratio=ratio, pooler_type="ROIAlignV2"
            )
            rows[(branch, ratio)] = (pooler, [boxes[:n]])
    times = {k: [] for k in rows}
    with torch.no_grad():
        for _ in range(args.repeats + 1):  # the first round warms up
            for k, (pooler, b) in rows.items():
                t = time.perf_counter()
                pooler(feats, b)
                times[k].append(time.perf_counter() - t)
    print(
        "| all-level pooler, {}x{} image | sampling ratio | median s | min s | max s |".format(
            args.height, args.width
        )
    )
    print("|---|---|---|---|---|")
    for (branch, ratio), ts in times.items():
        ts = ts[1:]
        print(
            "| {} ({} RoIs) | {} | {:.3f} | {:.3f} | {:.3f} |".format(
                branch,
                1000 if branch == "box" else 100,
                ratio,
                statistics.median(ts),
                min(ts),
                max(ts),
            )
        )


if __name__ == "__main__":
    main()
