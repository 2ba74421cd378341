#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Which all-level RoIAlign each exported form of AFP should hold, on the CPU: the forward of the
box branch's all-level pooler (every one of 1000 proposals pooled from N2..N5 of an HxW image,
256 channels, 7x7 bins, sampling ratio 2) and the mask branch's (100 detections, 14x14 bins), as

* eager: torchvision's RoIAlign on each level / the batched op (``multilevel_roi_align``);
* TorchScript (the pooler traced): the batched op;
* ONNX Runtime (opset 16): ONNX's RoiAlign on each level (what ``AdaptiveFeaturePooler`` exports),
  and the batched op exported as it is, whose ``embedding_bag`` the exporter writes as a Loop
  over the output bins (``--onnx-loop-rois`` RoIs of the mask branch only: it is that slow).

The variants alternate, median of the runs; the last column is the largest difference to
torchvision's op.

    python3 benchmarks/bench_export_pooler.py --repeats 5 --threads 2
"""

import io
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import panet_d2  # noqa: E402,F401  isort: skip  (first: Detectron2 then imports without warnings)
from detectron2.structures import Boxes  # noqa: E402

from benchmarks.bench_afp_sampling import pooler_parser, pyramid_features  # noqa: E402
from benchmarks.bench_model import fixed_proposals  # noqa: E402
from benchmarks.options import at_least  # noqa: E402
from panet_d2.modeling import AdaptiveFeaturePooler  # noqa: E402
from panet_d2.modeling.poolers import multilevel_roi_align  # noqa: E402

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


class PerLevel(nn.Module):
    """The pooler forced onto torchvision's RoIAlign on each level."""

    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, a, b, c, d, boxes):
        grids = [p(f, boxes) for f, p in zip((a, b, c, d), self.pooler.level_poolers)]
        return torch.stack(grids, dim=1)


class Batched(nn.Module):
    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, a, b, c, d, boxes):
        p = self.pooler
        args = (p._scales, p._output_size, p._sampling_ratio, p._aligned)
        return multilevel_roi_align([a, b, c, d], boxes, *args)


def onnx_session(module, inputs, threads):
    import onnxruntime

    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        inputs,
        buffer,
        dynamo=False,
        opset_version=16,
        input_names=["a", "b", "c", "d", "boxes"],
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(
        buffer.getvalue(), options, providers=["CPUExecutionProvider"]
    )
    feed = {k: x.numpy() for k, x in zip(["a", "b", "c", "d", "boxes"], inputs)}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def main():
    parser = pooler_parser(__doc__)
    parser.add_argument("--onnx-loop-rois", type=at_least(1), default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    feats = pyramid_features(args.height, args.width)
    boxes = fixed_proposals(args.height, args.width, 1000, seed=0).proposal_boxes.tensor
    rows, ref = {}, {}
    for branch, size, n in (
        ("box", 7, 1000),
        ("mask", 14, 100),
        ("mask", 14, args.onnx_loop_rois),
    ):
        pooler = AdaptiveFeaturePooler(size, SCALES, sampling_ratio=2, pooler_type="ROIAlignV2")
        rois = torch.cat([torch.zeros(n, 1), boxes[:n]], dim=1)
        inputs = (*feats, rois)
        per_level, batched = PerLevel(pooler).eval(), Batched(pooler).eval()
        key = "{} ({} RoIs)".format(branch, n)
        with torch.no_grad():
            ref[key] = per_level(*inputs)
            traced = torch.jit.trace(batched, inputs, check_trace=False)
        if n == args.onnx_loop_rois:
            rows[(key, "ONNX Runtime, embedding_bag (a Loop)")] = onnx_session(
                batched, inputs, args.threads
            )
            rows[(key, "ONNX Runtime, RoiAlign per level (exported)")] = onnx_session(
                pooler_module(pooler), inputs, args.threads
            )
            continue
        rows[(key, "eager, torchvision per level")] = lambda m=per_level, i=inputs: m(*i)
        rows[(key, "eager, batched (multilevel_roi_align)")] = lambda m=batched, i=inputs: m(*i)
        rows[(key, "TorchScript traced, batched (exported)")] = lambda m=traced, i=inputs: m(*i)
        rows[(key, "ONNX Runtime, RoiAlign per level (exported)")] = onnx_session(
            pooler_module(pooler), inputs, args.threads
        )
    times = {k: [] for k in rows}
    with torch.no_grad():
        # the first call warms up
        diffs = {k: (run() - ref[k[0]]).abs().max().item() for k, run in rows.items()}
        for _ in range(args.repeats):
            for k, run in rows.items():
                t = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - t)
    print(
        "| all-level pooler, {}x{} image, sampling ratio 2 | op | forward median s (min, max) "
        "| max diff to torchvision |".format(args.height, args.width)
    )
    print("|---|---|---|---|")
    for (key, name), ts in times.items():
        print(
            "| {} | {} | {:.3f} ({:.3f}, {:.3f}) | {:.1e} |".format(
                key, name, statistics.median(ts), min(ts), max(ts), diffs[(key, name)]
            )
        )


def pooler_module(pooler):
    """The pooler itself on (a, b, c, d, rois): exported to ONNX, it holds RoiAlign per level."""

    class Pooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.pooler = pooler

        def forward(self, a, b, c, d, rois):
            return self.pooler([a, b, c, d], [Boxes(rois[:, 1:])])

    return Pooler().eval()


if __name__ == "__main__":
    main()
