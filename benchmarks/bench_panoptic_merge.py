#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""Benchmark panet_d2's panoptic merge against Detectron2's, side by side.

    python3 benchmarks/bench_panoptic_merge.py --num-instances 100 --height 800 \
        --width 1333 --repeats 5 --threads 2 --device cpu

Builds realistic random inputs (instance masks = ellipses / boxes with log-uniform
sizes, scores uniform in [0, 1]; a semantic map of ~54 labels as random Voronoi
regions), checks both implementations return identical outputs, and prints the
median time per image of each (runs interleaved, after a warm-up) and the speed-up, for
Detectron2's default thresholds (0.5/4096/0.5) and with every instance kept (score 0).
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import panet_d2  # noqa: E402,F401  isort: skip  (first: Detectron2 then imports without warnings)
from detectron2.modeling.meta_arch.panoptic_fpn import (  # noqa: E402
    combine_semantic_and_instance_outputs as d2_combine,
)
from detectron2.structures import Instances  # noqa: E402

from benchmarks.options import (  # noqa: E402
    add_timing_options,
    at_least,
    check_memory,
    device_option,
)
from panet_d2.modeling.postprocessing.panoptic_merge import (  # noqa: E402
    combine_semantic_and_instance_outputs,
)


def make_inputs(num_instances, height, width, num_labels, seed, float_masks=False):
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_instances, height, width), dtype=bool)
    for i in range(num_instances):
        # log-uniform object size: many small objects, a few large ones
        sh = int(np.exp(rng.uniform(np.log(8), np.log(height * 0.8))))
        sw = int(np.clip(sh * np.exp(rng.uniform(-0.7, 0.7)), 4, width * 0.9))
        y0 = int(rng.integers(0, max(1, height - sh)))
        x0 = int(rng.integers(0, max(1, width - sw)))
        y1, x1 = min(height, y0 + sh), min(width, x0 + sw)
        if rng.random() < 0.5:  # box
            masks[i, y0:y1, x0:x1] = True
        else:  # ellipse inscribed in the box
            yy, xx = np.ogrid[y0:y1, x0:x1]
            cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
            ry, rx = max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
            masks[i, y0:y1, x0:x1] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    inst = Instances((height, width))
    inst.pred_masks = torch.from_numpy(masks)
    if float_masks:
        inst.pred_masks = inst.pred_masks.float() * torch.from_numpy(
            rng.uniform(0.5, 1.0, masks.shape).astype(np.float32)
        )
    inst.scores = torch.from_numpy(rng.random(num_instances).astype(np.float32))
    inst.pred_classes = torch.from_numpy(rng.integers(0, 80, num_instances))
    # semantic map: Voronoi regions of 2 * num_labels random seeds, labels 0..num_labels-1
    # (computed on a 4x coarser grid, then nearest-upsampled)
    num_seeds = 2 * num_labels
    sy = rng.uniform(0, height, num_seeds)
    sx = rng.uniform(0, width, num_seeds)
    lab = rng.integers(0, num_labels, num_seeds)
    gy, gx = np.mgrid[0:height:4, 0:width:4]
    d = (gy[..., None] - sy) ** 2 + (gx[..., None] - sx) ** 2
    coarse = lab[d.argmin(-1)]
    sem = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:height, :width]
    sem = torch.from_numpy(np.ascontiguousarray(sem).astype(np.int64))
    return inst, sem


def _run(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000.0, (time.process_time() - c0) * 1000.0, out


def timeit_interleaved(fns, repeats, device):
    """Runs ``fns`` alternately, ``repeats`` times each (so both see the same machine load);
    per function: median wall-clock ms, median process CPU ms (all threads), last output."""
    times = [[] for _ in fns]
    cpu_times = [[] for _ in fns]
    outs = [None] * len(fns)
    for rep in range(repeats):
        order = range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns)))
        for k in order:
            t, c, outs[k] = _run(fns[k], device)
            times[k].append(t)
            cpu_times[k].append(c)
    return [
        (statistics.median(t), statistics.median(c), o) for t, c, o in zip(times, cpu_times, outs)
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-instances", type=at_least(0), default=100)
    add_timing_options(p, width=1333)
    p.add_argument(
        "--num-labels", type=at_least(1), default=54, help="semantic labels (0 = things)"
    )
    p.add_argument("--device", type=device_option, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float-masks", action="store_true", help="probability masks, not bool")
    args = p.parse_args(argv)
    per_pixel = args.num_instances * (17 if args.float_masks else 1) + 4 * args.num_labels
    what = f"--num-instances {args.num_instances} at {args.height}x{args.width} (and the labels)"
    check_memory(p, per_pixel * args.height * args.width, what)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    inst, sem = make_inputs(
        args.num_instances, args.height, args.width, args.num_labels, args.seed, args.float_masks
    )
    inst, sem = inst.to(device), sem.to(device)

    # (overlap, stuff area, score threshold): Detectron2 defaults, and every instance kept
    settings = [(0.5, 4096, 0.5), (0.5, 4096, 0.0)]
    print(
        f"panoptic merge: {args.num_instances} instances, {args.height}x{args.width}, "
        f"{args.num_labels} semantic labels, device={args.device}, threads={args.threads}, "
        f"median of {args.repeats} interleaved runs (after 1 warm-up), "
        f"masks={'float' if args.float_masks else 'bool'}"
    )
    header = (
        f"{'overlap/stuff/score':>20} | {'segments':>8} | {'detectron2 ms':>13} | "
        f"{'ours ms':>8} | {'speed-up':>8} | {'d2 / ours CPU ms':>17} | identical"
    )
    print(header)
    print("-" * len(header))
    all_same = True
    for overlap, stuff, score in settings:
        a = (overlap, stuff, score)
        d2_combine(inst, sem, *a)  # warm-up
        combine_semantic_and_instance_outputs(inst, sem, *a)
        (t_d2, c_d2, (seg_d2, info_d2)), (t_ours, c_ours, (seg, info)) = timeit_interleaved(
            [
                lambda: d2_combine(inst, sem, *a),
                lambda: combine_semantic_and_instance_outputs(inst, sem, *a),
            ],
            args.repeats,
            device,
        )
        same = bool(torch.equal(seg, seg_d2)) and seg.dtype == seg_d2.dtype and info == info_d2
        all_same &= same
        label = f"{overlap}/{stuff}/{score}"
        print(
            f"{label:>20} | {len(info):>8} | {t_d2:>13.1f} | {t_ours:>8.1f} | "
            f"{t_d2 / t_ours:>7.1f}x | {c_d2:>8.0f} / {c_ours:<6.0f} | {same}"
        )
    if not all_same:
        print("ERROR: outputs differ from Detectron2's")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
