#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
The cost of PANet against Detectron2's own models, side by side in one process, at fixed RoI loads:

* PANet R50 (``panet_R_50_FPN_1x.yaml``) vs Detectron2's Mask R-CNN R50-FPN, and one row per
  component (each row switches one more on, from Mask R-CNN = the PANet code path all off);
* panoptic PANet R50 (``panoptic_panet_R_50_1x.yaml``) vs Detectron2's PanopticFPN R50.

Loads: inference on one HxW image with a fixed set of 1000 proposals (the RPN still runs, its
output is replaced) and 100 detections (SCORE_THRESH_TEST 0, box deltas zeroed so that every model
pools the same boxes); a training step (forward, backward, SGD step) on 2 images with 512 sampled
RoIs each (fixed proposals, the same ground truth). Per row: FLOPs (Detectron2's FlopCountAnalysis
of the inference, and of the training forward), time (median, min, max of the alternated runs) and
peak memory (CUDA: max allocated; CPU: peak RSS of a child process during its second run); the
ratios to the baseline.

    python3 benchmarks/bench_model.py --repeats 5 --threads 2              # everything, CPU
    python3 benchmarks/bench_model.py --device cuda --amp                  # GPU, mixed precision
    python3 benchmarks/bench_model.py --rows instance --task inference     # a part
    python3 benchmarks/bench_model.py --profile "PANet R50"                # where the time goes

Random weights; no checkpoint is downloaded.
"""

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import panet_d2  # noqa: E402,F401  isort: skip  (first: Detectron2 then imports without warnings)
from fvcore.nn import FlopCountAnalysis as FvcoreFlopCountAnalysis  # noqa: E402

from detectron2 import model_zoo as d2_model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from benchmarks.options import add_timing_options, device_option  # noqa: E402
from panet_d2 import add_panet_config  # noqa: E402
from panet_d2.analysis import FLOP_HANDLES, flop_count_analysis  # noqa: E402
from panet_d2.config import MASK_RCNN_OPTS  # noqa: E402
from panet_d2.model_zoo import get_config_file  # noqa: E402

ALL_OFF = list(MASK_RCNN_OPTS)  # every PANet component off: Detectron2's Mask R-CNN
HHD = ["MODEL.ROI_BOX_HEAD.NUM_CONV", 4, "MODEL.ROI_BOX_HEAD.NUM_FC", 1]
# name -> (config source, overrides); the first row of a group is that group's baseline
ROWS = {
    "instance": {
        "Detectron2 Mask R-CNN R50-FPN": (
            "d2",
            "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
            [],
        ),
        "PANet R50": ("panet", "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml", []),
    },
    "components": {
        "all off (= Mask R-CNN)": (
            "panet",
            "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
            ALL_OFF,
        ),
        "+ BPA": (
            "panet",
            "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
            ALL_OFF + ["MODEL.BACKBONE.NAME", "build_resnet_pafpn_backbone"],
        ),
        "+ BPA + AFP": (
            "panet",
            "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
            ["MODEL.FF.ENABLED", False],
        ),
        "+ BPA + AFP + FF (PANet)": (
            "panet",
            "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
            [],
        ),
        "+ BPA + AFP + FF + HHD": (
            "panet",
            "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
            HHD,
        ),
    },
    "panoptic": {
        "Detectron2 PanopticFPN R50": (
            "d2",
            "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
            [],
        ),
        "panoptic PANet R50": (
            "panet",
            "COCO-PanopticSegmentation/panoptic_panet_R_50_1x.yaml",
            [],
        ),
    },
}


def make_cfg(source, name, opts, device):
    cfg = get_cfg()
    if source == "d2":
        cfg.merge_from_file(d2_model_zoo.get_config_file(name))
    else:
        add_panet_config(cfg)
        cfg.merge_from_file(get_config_file(name))
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    return cfg


class FixedProposals(nn.Module):
    """Runs the model's RPN (its cost counts) but returns a fixed set of proposals."""

    def __init__(self, rpn, proposals):
        super().__init__()
        self.rpn, self.proposals = rpn, proposals

    def forward(self, images, features, gt_instances=None):
        _, losses = self.rpn(images, features, gt_instances)
        return [p.to(images.tensor.device) for p in self.proposals[: len(images)]], losses


def fixed_proposals(h, w, n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
    # log-uniform sizes from 16 to 512 px: every FPN level gets boxes
    wh = torch.exp(torch.empty(n, 2).uniform_(2.77, 6.24, generator=g))
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    p = Instances((h, w))
    p.proposal_boxes = Boxes(boxes)
    p.objectness_logits = torch.linspace(5, -5, n)
    return p


def ground_truth(h, w, seed, num_classes=80):
    g = torch.Generator().manual_seed(seed)
    n = 12
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 32 + torch.rand(n, 2, generator=g) * 300
    boxes = torch.cat([xy, (xy + wh).minimum(torch.tensor([w - 1.0, h - 1.0]))], 1)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
    inst.gt_masks = BitMasks(masks)
    return inst


def build(cfg, args):
    torch.manual_seed(0)
    model = build_model(cfg)
    # Random ResNet weights with FrozenBN blow activations up; scale the stem to keep them O(1).
    model.backbone.bottom_up.stem.conv1.weight.data *= 1e-3
    # Box deltas zeroed: every model refines no box, so all see the same RoIs.
    model.roi_heads.box_predictor.bbox_pred.weight.data.zero_()
    model.roi_heads.box_predictor.bbox_pred.bias.data.zero_()
    n = cfg.MODEL.RPN.POST_NMS_TOPK_TEST
    model.proposal_generator = FixedProposals(
        model.proposal_generator,
        [fixed_proposals(args.height, args.width, n, seed=i) for i in range(2)],
    )
    return model


def inference_inputs(args, device):
    g = torch.Generator().manual_seed(0)
    return [{"image": (torch.rand(3, args.height, args.width, generator=g) * 255).to(device)}]


def training_inputs(cfg, args, device):
    out = []
    for i in range(2):
        g = torch.Generator().manual_seed(10 + i)
        d = {
            "image": (torch.rand(3, args.height, args.width, generator=g) * 255).to(device),
            "instances": ground_truth(args.height, args.width, seed=i),
        }
        if cfg.MODEL.META_ARCHITECTURE in ("PanopticFPN", "PanopticPANet"):
            d["sem_seg"] = torch.randint(
                0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (args.height, args.width), generator=g
            ).to(device)
        out.append(d)
    return out


def autocast(args):
    if args.amp:
        return torch.autocast(device_type="cuda" if args.device.startswith("cuda") else "cpu")
    return contextlib.nullcontext()


def run_inference(model, inputs, args):
    with torch.no_grad(), autocast(args):
        return model(inputs)


def run_training_step(model, inputs, args, optimizer):
    with EventStorage(0), autocast(args):
        losses = model(inputs)
    optimizer.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    optimizer.step()
    return losses


def sync(args):
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def inference_flops(model, inputs):
    model.eval()
    fca = flop_count_analysis(model, inputs)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return fca.total()


class _TrainingForward(nn.Module):
    """The training forward as a function of tensors, for fvcore's tracer."""

    def __init__(self, model, inputs):
        super().__init__()
        self.model, self.inputs = model, inputs

    def forward(self, *images):
        batch = [dict(d, image=im) for d, im in zip(self.inputs, images)]
        with EventStorage(0):
            losses = self.model(batch)
        return sum(losses.values())


def training_flops(model, inputs):
    """FLOPs of the training forward (backward: about twice that, as for any model)."""
    model.train()
    fca = FvcoreFlopCountAnalysis(
        _TrainingForward(model, inputs), tuple(d["image"] for d in inputs)
    )
    from detectron2.utils.analysis import _IGNORED_OPS

    fca.set_op_handle(**{k: None for k in _IGNORED_OPS}, **FLOP_HANDLES)
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return fca.total()


def _vm_hwm():
    """Peak RSS of this process (bytes) since start or since the last :func:`_reset_hwm`."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _reset_hwm():
    # Linux >= 4.0: "5" resets the peak RSS to the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_memory_child(spec, task, args, queue):
    # A fresh interpreter (spawn): the peak of the parent (which holds every model of the group)
    # is not this process's. ru_maxrss is not used: Linux carries the pre-exec peak of the
    # forked parent over into it.
    torch.set_num_threads(args.threads)
    cfg = make_cfg(*spec, args.device)
    model = build(cfg, args)
    if task == "inference":
        model.eval()
        inputs = inference_inputs(args, args.device)
        run = lambda: run_inference(model, inputs, args)  # noqa: E731
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        inputs = training_inputs(cfg, args, args.device)
        run = lambda: run_training_step(model, inputs, args, opt)  # noqa: E731
    run()  # warm-up: lazy allocations, optimizer state
    _reset_hwm()
    run()
    queue.put(_vm_hwm())


def peak_memory(model, spec, task, args, run):
    """
    Bytes: CUDA max allocated of one run; CPU: peak RSS of a child process during its second run
    (model, inputs and optimizer state included).
    """
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        run()
        sync(args)
        return torch.cuda.max_memory_allocated()
    ctx = multiprocessing.get_context("spawn")  # fork deadlocks with OpenMP threads
    queue = ctx.Queue()
    p = ctx.Process(target=_peak_memory_child, args=(spec, task, args, queue))
    p.start()
    value = queue.get()
    p.join()
    return value


def bench_group(group, rows, task, args):
    models, runs, flops, mem = {}, {}, {}, {}
    for name, spec in rows.items():
        cfg = make_cfg(*spec, args.device)
        model = build(cfg, args)
        if task == "inference":
            inputs = inference_inputs(args, args.device)
            flops[name] = inference_flops(model, inputs)
            model.eval()
            runs[name] = lambda m=model, i=inputs: run_inference(m, i, args)
        else:
            inputs = training_inputs(cfg, args, args.device)
            flops[name] = training_flops(model, inputs)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
            runs[name] = lambda m=model, i=inputs, o=opt: run_training_step(m, i, args, o)
        mem[name] = peak_memory(model, spec, task, args, runs[name])
        models[name] = model
    for name in rows:  # warm-up
        runs[name]()
    times = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name in rows:  # alternated: every model sees the same machine state
            sync(args)
            t = time.perf_counter()
            runs[name]()
            sync(args)
            times[name].append(time.perf_counter() - t)
    base = next(iter(rows))
    tb, fb, mb = statistics.median(times[base]), flops[base], mem[base]
    print(
        "\n### {} ({}), {} x {}, {} runs{}".format(
            group,
            task,
            args.height,
            args.width,
            args.repeats,
            ", training forward FLOPs" if task == "training" else "",
        )
    )
    print(
        "| model | GFLOPs | FLOPs ratio | median s | min s | max s | time ratio "
        "| time / FLOPs ratio | peak memory MiB | memory ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    prev_f = prev_t = None
    for name in rows:
        t = statistics.median(times[name])
        rf, rt = flops[name] / fb, t / tb
        added = (
            ""
            if prev_f is None or group != "components"
            else " ({:+.1f} GFLOPs, {:+.3f} s)".format((flops[name] - prev_f) / 1e9, t - prev_t)
        )
        print(
            "| {}{} | {:.1f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.0f} "
            "| {:.3f} |".format(
                name,
                added,
                flops[name] / 1e9,
                rf,
                t,
                min(times[name]),
                max(times[name]),
                rt,
                rt / rf,
                mem[name] / 2**20,
                mem[name] / mb,
            )
        )
        prev_f, prev_t = flops[name], t
    sys.stdout.flush()


def profile(name, args):
    spec = next(rows[name] for rows in ROWS.values() if name in rows)
    cfg = make_cfg(*spec, args.device)
    model = build(cfg, args)
    if args.task == "training":
        inputs, opt = training_inputs(cfg, args, args.device), torch.optim.SGD(
            model.parameters(), lr=1e-4
        )
        model.train()
        run = lambda: run_training_step(model, inputs, args, opt)  # noqa: E731
    else:
        inputs = inference_inputs(args, args.device)
        model.eval()
        run = lambda: run_inference(model, inputs, args)  # noqa: E731
    run()  # warm-up, not profiled
    with torch.profiler.profile() as prof:
        for _ in range(args.repeats):
            run()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_timing_options(parser)
    parser.add_argument("--device", type=device_option, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true", help="mixed precision (torch.autocast)")
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ROWS), help="default: all")
    parser.add_argument(
        "--task",
        nargs="+",
        default=None,
        choices=["inference", "training"],
        help="default: both (--profile: inference)",
    )
    parser.add_argument(
        "--profile",
        metavar="ROW",
        help="profile one row instead (torch.profiler): --repeats runs after a warm-up",
    )
    args = parser.parse_args()
    names = [name for rows in ROWS.values() for name in rows]
    if args.profile is not None and args.profile not in names:
        parser.error(f"--profile {args.profile!r}: a row of {', '.join(map(repr, names))}")
    if args.profile is not None and (args.rows or len(args.task or ()) > 1):
        parser.error("--profile runs one row (not --rows) for one --task")
    torch.set_num_threads(args.threads)
    if args.profile:
        args.task = (args.task or ["inference"])[0]
        return profile(args.profile, args)
    args.rows, args.task = args.rows or list(ROWS), args.task or ["inference", "training"]
    print(
        "## bench_model.py: device {}{}, {} threads, torch {}".format(
            args.device, " (AMP)" if args.amp else "", args.threads, torch.__version__
        )
    )
    for task in args.task:
        for group in args.rows:
            bench_group(group, ROWS[group], task, args)


if __name__ == "__main__":
    main()
