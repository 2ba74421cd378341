#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
CPU latency of one model eager, exported to TorchScript (tracing, scripting) and to ONNX (run in
ONNX Runtime), side by side in one process: PANet R50 (``panet_R_50_FPN_1x.yaml``) by default, on
one HxW image (800 x 1216 by default).

Every backend computes the same thing, what ``panet_d2.export`` exports for an instance model: the
raw detections of ``model.inference(inputs, do_postprocess=False)``. Two loads (``--load``):

* ``fixed``: SCORE_THRESH_TEST 0, so every (proposal, class) candidate (1000 x 80) reaches NMS
  and every backend keeps TEST.DETECTIONS_PER_IMAGE (100) detections and runs the mask head on
  them: the worst case of the post-processing.
* ``default``: the config's SCORE_THRESH_TEST (0.05), with scores made realistic: random weights
  give every class about the same probability (1 / 81, below the threshold), so the classifier's
  weights and bias are multiplied by ``--cls-scale`` (default 30), which spreads the logits so
  that a few of the 80 classes of each proposal stand out, as a trained model's do; the number of
  candidates above the threshold (those that reach NMS) is printed.

Runs are alternated (backend after backend, --repeats rounds, after two warm-up runs each:
TorchScript optimises a graph on its first calls); the table gives the median, min and max
seconds and the ratio of the medians to eager. A line checks that the backends agree.

    python3 benchmarks/bench_export.py --load fixed --repeats 5 --threads 2
    python3 benchmarks/bench_export.py --load default --repeats 5 --threads 2
    python3 benchmarks/bench_export.py --height 256 --width 384 --repeats 2 \\
        --opts MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64      # a quick check

Random weights; no checkpoint is downloaded. ONNX needs ``pip install -e ".[export]"``.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from panet_d2 import add_panet_config, export  # noqa: E402
from panet_d2.model_zoo import get_config_file  # noqa: E402

BACKENDS = ("eager", "torchscript-tracing", "torchscript-scripting", "onnxruntime")


def build(args):
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(get_config_file(args.config))
    cfg.merge_from_list(list(args.opts) + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    if args.load == "fixed":
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Random ResNet weights with FrozenBN blow activations up; scale the stem to keep them O(1)
    # (as benchmarks/bench_model.py does).
    model.backbone.bottom_up.stem.conv1.weight.data *= 1e-3
    if args.load == "default":  # realistic scores: see the module docstring
        model.roi_heads.box_predictor.cls_score.weight.data *= args.cls_scale
        model.roi_heads.box_predictor.cls_score.bias.data *= args.cls_scale
    return model


def count_candidates(model, image):
    """The number of (proposal, class) candidates above the score threshold (those that reach
    NMS) in the eager model's inference of ``image``."""
    images = model.preprocess_image([{"image": image}])
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    heads = model.roi_heads
    x = heads.box_pooler(
        [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in proposals]
    )
    predictor = heads.box_predictor
    scores = predictor.predict_probs(predictor(heads.box_head(x)), proposals)[0][:, :-1]
    return int((scores > predictor.test_score_thresh).sum()), scores.numel()


def runners(model, image, backends, threads, tmpdir):
    """name -> function running the backend on ``image``, returning its boxes (R, 4)."""
    inputs = export.sample_inputs(model, image)
    out = {}
    if "eager" in backends:

        def eager():
            return model.inference([{"image": image}], do_postprocess=False)[0].pred_boxes.tensor

        out["eager"] = eager
    if "torchscript-tracing" in backends:
        traced, schema = export.trace_model(model, inputs)
        out["torchscript-tracing"] = lambda: traced(*inputs)[0]  # pred_boxes: the first field
    if "torchscript-scripting" in backends:
        scripted = export.script_model(model)
        out["torchscript-scripting"] = lambda: scripted([{"image": image}])[0]["pred_boxes"]
    if "onnxruntime" in backends:
        import onnxruntime

        path = os.path.join(tmpdir, "model.onnx")
        export.export_onnx(model, inputs, path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"image": image.numpy()}
        out["onnxruntime"] = lambda: torch.from_numpy(session.run(["pred_boxes"], feed)[0])
    return out


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")
    parser.add_argument("--load", default="fixed", choices=("fixed", "default"))
    parser.add_argument("--cls-scale", type=float, default=30.0)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--opts", nargs="*", default=[], help="config changes: KEY VALUE pairs")
    args = parser.parse_args()
    if args.backends[0] != "eager":
        parser.error("--backends: eager first (the ratios are to eager)")
    torch.set_num_threads(args.threads)
    model = build(args)
    image = torch.rand(3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    image = image * 255
    with tempfile.TemporaryDirectory() as tmpdir, torch.no_grad():
        candidates, total = count_candidates(model, image)
        runs = runners(model, image, args.backends, args.threads, tmpdir)
        boxes = {name: run() for name, run in runs.items()}  # warm-up 1, and the outputs
        for run in runs.values():  # warm-up 2
            run()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():  # alternated: each sees the same machine state
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)

    print(
        "## bench_export.py: {}, {} x {}, CPU, {} threads, {} runs, torch {}".format(
            args.config, args.height, args.width, args.threads, args.repeats, torch.__version__
        )
    )
    load = "SCORE_THRESH_TEST {:g}".format(model.roi_heads.box_predictor.test_score_thresh)
    if args.load == "default":
        load += ", classifier x {:g}".format(args.cls_scale)
    print("load {}: {}; {} of {} candidates reach NMS".format(args.load, load, candidates, total))
    if args.opts:
        print("config changes: {}".format(" ".join(args.opts)))
    print("| backend | median s | min s | max s | median / eager |")
    print("|---|---|---|---|---|")
    base = statistics.median(times["eager"])
    for name, ts in times.items():
        median = statistics.median(ts)
        print(
            "| {} | {:.3f} | {:.3f} | {:.3f} | {:.2f} |".format(
                name, median, min(ts), max(ts), median / base
            )
        )
    ref = boxes["eager"]
    agree = ", ".join(
        "{}: {} boxes, max |diff| {:.2g} px".format(
            name, len(b), (b - ref).abs().max().item() if b.shape == ref.shape else float("nan")
        )
        for name, b in boxes.items()
        if name != "eager"
    )
    print("eager: {} boxes; {}".format(len(ref), agree))


if __name__ == "__main__":
    main()
