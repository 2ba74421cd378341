#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
The GPU check: every CUDA path of panet_d2 on one GPU, in a few minutes, with one line per check.

    bash benchmarks/gpu_check.sh            # on a machine with a GPU (R50, 800 x 1216)
    python3 benchmarks/gpu_check.py --dry   # the same on the CPU, small (tests/tools/)

Checks: the forward and backward of the backbone (FPN + bottom-up path) and of both heads on the
same RoIs equal the CPU's within float tolerance (TF32 off), which exercises CUDA RoIAlign (one
torchvision call per level) against the CPU's batched pooler; the panoptic merge on the device
equals the CPU's; mixed-precision training steps (float16 with a gradient scaler on CUDA; bfloat16
in the dry run) of the instance and panoptic models give finite losses; a short ``train_net.py``
run on the device. Then it prints the PANet / Mask R-CNN time ratio of inference and of a training
step, and the peak memory of each. Exit code 1 when a check fails.
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import panet_d2  # noqa: E402,F401  isort: skip  (first: Detectron2 then imports without warnings)
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from benchmarks.options import at_least  # noqa: E402
from panet_d2.config import MASK_RCNN_OPTS, load_config_file  # noqa: E402
from panet_d2.modeling.postprocessing import combine_semantic_and_instance_outputs  # noqa: E402

CONFIGS = {
    "instance": "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml",
    "panoptic": "COCO-PanopticSegmentation/panoptic_panet_R_50_1x.yaml",
}
SMOKE = "configs/quick_schedules/panet_R_18_synth_instance_smoke.yaml"
# the dry run: ResNet-18, narrow heads, few proposals (the same code paths)
DRY_OPTS = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
DRY_OPTS += ["MODEL.FPN.OUT_CHANNELS", 64, "MODEL.ROI_BOX_HEAD.FC_DIM", 128]
DRY_OPTS += ["MODEL.ROI_MASK_HEAD.CONV_DIM", 64, "MODEL.FF.CONV_DIMS", [64, 32]]
DRY_OPTS += ["MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.RPN.POST_NMS_TOPK_TEST", 64]
DRY_OPTS += ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32]
TOLERANCE = 1e-3  # float32 on two devices, relative to the largest magnitude


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="on the CPU, small models and images")
    parser.add_argument("--repeats", type=at_least(1), default=5, help="timed runs per measurement")
    parser.add_argument(
        "--train-iters", type=at_least(1), default=20, help="train_net.py iterations"
    )
    return parser


class Run:
    """The settings of one check run: device, image size, config options."""

    def __init__(self, args):
        self.dry = args.dry
        self.device = "cpu" if args.dry else "cuda"
        self.size = (128, 160) if args.dry else (800, 1216)
        self.opts = DRY_OPTS if args.dry else []
        self.amp_dtype = torch.bfloat16 if args.dry else torch.float16
        self.repeats = 2 if args.dry else args.repeats
        self.train_iters = 2 if args.dry else args.train_iters
        self.failed = []

    def report(self, name, ok, detail):
        print("{} {}: {}".format("ok  " if ok else "FAIL", name, detail), flush=True)
        if not ok:
            self.failed.append(name)

    def model(self, kind, device, extra=()):
        cfg = load_config_file(os.path.join(ROOT, "configs", CONFIGS[kind]))
        cfg.merge_from_list([str(v) if isinstance(v, list) else v for v in self.opts + list(extra)])
        cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = device, ""
        torch.manual_seed(0)
        return build_model(cfg)

    def image(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (3, *self.size), generator=g, dtype=torch.uint8)


def _rel(a, b):
    return (a.detach().float().cpu() - b.detach().float().cpu()).abs().max().item() / max(
        b.detach().abs().max().item(), 1e-12
    )


def _fixed_boxes(size, n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
    wh = 8 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
    return torch.cat([xy, xy + wh], 1)


def _heads_outputs(model, image, boxes):
    """Backbone features, both heads' outputs on the fixed boxes, and a scalar of all of them."""
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    heads = model.roi_heads
    feats = [features[f] for f in heads.in_features]
    box_list = [Boxes(boxes.to(images.tensor.device))]
    box_feats = heads.box_head(heads.box_pooler(feats, box_list))
    scores, deltas = heads.box_predictor(box_feats)
    masks = heads.mask_head.layers(heads.mask_pooler(feats, box_list))
    outs = dict(features, scores=scores, deltas=deltas, masks=masks)
    g = torch.Generator().manual_seed(2)
    total = sum((v * torch.randn(v.shape, generator=g).to(v)).sum() for v in outs.values())
    return outs, total


def check_forward_backward(run):
    """The device's forward and backward equal the CPU's (same weights, TF32 off)."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ref = run.model("instance", "cpu")
    dev = run.model("instance", run.device)
    dev.load_state_dict(ref.state_dict())
    image, boxes = run.image(), _fixed_boxes(run.size)
    results = []
    for model in (ref, dev):
        model.eval()
        outs, total = _heads_outputs(model, image, boxes)
        total.backward()
        grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
        results.append((outs, grads))
    (o_ref, g_ref), (o_dev, g_dev) = results
    worst_out = max((_rel(o_dev[k], o_ref[k]), k) for k in o_ref)
    worst_grad = max((_rel(g_dev[k], g_ref[k]), k) for k in g_ref)
    ok = worst_out[0] <= TOLERANCE and worst_grad[0] <= TOLERANCE and set(g_dev) == set(g_ref)
    run.report(
        "forward and backward vs CPU (backbone, AFP poolers, box and mask heads)",
        ok,
        "largest output difference {:.2e} ({}), gradient {:.2e} ({}), {} tensors".format(
            *worst_out, *worst_grad, len(g_ref)
        ),
    )


def check_panoptic_merge(run):
    """The merge of instance and semantic results on the device equals the CPU's."""
    g = torch.Generator().manual_seed(3)
    h, w = run.size
    inst = Instances((h, w))
    inst.pred_masks = torch.rand(12, h, w, generator=g) > 0.8
    inst.scores = torch.rand(12, generator=g)
    inst.pred_classes = torch.randint(0, 5, (12,), generator=g)
    sem = torch.randint(0, 6, (h, w), generator=g)
    ref = combine_semantic_and_instance_outputs(inst, sem, 0.5, 64, 0.5)
    out = combine_semantic_and_instance_outputs(
        inst.to(run.device), sem.to(run.device), 0.5, 64, 0.5
    )
    ok = torch.equal(out[0].cpu(), ref[0]) and out[1] == ref[1]
    run.report("panoptic merge vs CPU", ok, "{} segments".format(len(ref[1])))


def _training_inputs(run, kind):
    h, w = run.size
    boxes = _fixed_boxes(run.size, n=4, seed=4)
    masks = torch.zeros(4, h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 1, 2, 3]))
    inst.gt_masks = BitMasks(masks)
    d = {"image": run.image(5), "instances": inst}
    if kind == "panoptic":
        d["sem_seg"] = torch.randint(0, 4, (h, w), generator=torch.Generator().manual_seed(6))
    return [d]


def check_amp_training(run, kind, steps=3):
    """Mixed-precision training steps: the losses stay finite."""
    model = run.model(kind, run.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=not run.dry)
    inputs, losses = _training_inputs(run, kind), []
    with EventStorage():
        for _ in range(steps):
            with torch.autocast(run.device, dtype=run.amp_dtype):
                loss = sum(model(inputs).values())
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(loss.item())
    ok = all(torch.isfinite(torch.tensor(losses)))
    detail = "{} steps in {}, losses {}".format(
        steps, str(run.amp_dtype).replace("torch.", ""), ", ".join("%.3f" % v for v in losses)
    )
    run.report("AMP training of the {} model".format(kind), ok, detail)


def check_train_net(run):
    """A short train_net.py run on the device (the smoke config, generated dataset)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PANET_D2_DATASETS=os.path.join(tmp, "data"))
        cmd = [sys.executable, "train_net.py", "--config-file", SMOKE, "--num-gpus", "1"]
        cmd += ["MODEL.DEVICE", run.device, "SOLVER.MAX_ITER", str(run.train_iters)]
        cmd += ["OUTPUT_DIR", os.path.join(tmp, "out"), "DATASETS.TEST", "()"]
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wrote = os.path.isfile(os.path.join(tmp, "out", "model_final.pth"))
    tail = (out.stderr or out.stdout).strip().splitlines()[-1:] if out.returncode else []
    run.report(
        "train_net.py on {}".format(run.device),
        out.returncode == 0 and wrote,
        "{} iterations, exit code {}, {:.0f} s{}".format(
            run.train_iters, out.returncode, time.perf_counter() - start, "".join(tail)
        ),
    )


def _sync(run):
    if run.device == "cuda":
        torch.cuda.synchronize()


def _peak_mib(run):
    if run.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's, in MiB


def _timed(run, fn):
    times = []
    for _ in range(run.repeats + 1):  # the first run warms up
        _sync(run)
        start = time.perf_counter()
        fn()
        _sync(run)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def time_models(run):
    """PANet / Mask R-CNN: median inference and training-step time, peak memory."""
    rows = {}
    for name, extra in (("Mask R-CNN", list(MASK_RCNN_OPTS)), ("PANet", [])):
        model = run.model("instance", run.device, extra)
        if run.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        image, inputs = run.image(), _training_inputs(run, "instance")
        with torch.no_grad():
            infer = _timed(run, lambda: model.eval()([{"image": image}]))
        model.train()
        with EventStorage():
            train = _timed(run, lambda: sum(model(inputs).values()).backward())
        rows[name] = (infer, train, _peak_mib(run))
    (i0, t0, _), (i1, t1, _) = rows["Mask R-CNN"], rows["PANet"]
    print("timing on {} at {} x {}:".format(run.device, *run.size))
    for name, (i, t, m) in rows.items():
        print(
            "  {:<10} inference {:.4f} s, training step {:.4f} s, peak {:.0f} MiB".format(
                name, i, t, m
            )
        )
    print("  PANet / Mask R-CNN: inference {:.2f}x, training step {:.2f}x".format(i1 / i0, t1 / t0))


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("ERROR: no CUDA device; run with --dry for the CPU check.", file=sys.stderr)
        return 2
    run = Run(args)
    start = time.perf_counter()
    check_forward_backward(run)
    check_panoptic_merge(run)
    for kind in ("instance", "panoptic"):
        check_amp_training(run, kind)
    check_train_net(run)
    time_models(run)
    print("{} checks failed; {:.0f} s".format(len(run.failed), time.perf_counter() - start))
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
