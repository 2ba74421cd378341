#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
CPU latency of one model eager (float32, and bfloat16 under ``torch.autocast``), exported to
TorchScript (tracing, scripting), to ONNX (run in ONNX Runtime) and to OpenVINO (float32, bfloat16
by the inference precision hint, int8 by ONNX Runtime's quantiser with the other ops in float32
or bfloat16 (each with the ops that tools/openvino_backend.py quantises for it; int8-heads: the
mask and semantic heads only), and int8 with the RPN head's outputs quantised too), side by side
in one process:
PANet R50 (``panet_R_50_FPN_1x.yaml``) by default, on one HxW image (800 x 1216 by default).

Every backend computes the same thing, what ``tools/export_support.py`` exports for an instance
model: the raw detections of ``model.inference(inputs, do_postprocess=False)``. Two loads
(``--load``):

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
seconds, the ratio of the medians to eager, the effective GFLOP/s (the model's fvcore count, a
multiply-add counted once, over the median) and its share of the machine's peak in the backend's
precision: float32, bfloat16 and int8 matrix products (2048^3, torch.mm / torch._int_mm) measured
by this script on the same threads. Accuracy: the detections of eager float32 that each backend
also has (same class, box IoU >= 0.95), on the benchmark image and on the in-repo COCO images
(assets/coco_panoptic_sample, resized as the test loader resizes: the accuracy gate; int8 is
calibrated on those images flipped left-right).

    python3 benchmarks/bench_export.py --load default --repeats 5 --threads 2
    python3 benchmarks/bench_export.py --load fixed --repeats 5 --threads 2
    python3 benchmarks/bench_export.py --height 256 --width 384 --repeats 2 \\
        --opts MODEL.RESNETS.DEPTH 18 MODEL.RESNETS.RES2_OUT_CHANNELS 64      # a quick check

Random weights (fixed seed); no checkpoint is downloaded. ONNX Runtime and OpenVINO need
``pip install -e ".[export]"``.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import panet_d2  # noqa: E402,F401  isort: skip  (first: Detectron2 then imports without warnings)
from detectron2.modeling import (  # noqa: E402
    META_ARCH_REGISTRY,
    GeneralizedRCNN,
    PanopticFPN,
    build_model,
)

from benchmarks.options import add_timing_options, positive_number  # noqa: E402
from panet_d2.config import load_config_file  # noqa: E402
from panet_d2.errors import InputError  # noqa: E402
from panet_d2.model_zoo import get_config_file  # noqa: E402

sys.path.insert(
    1, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
)
import export_support as export  # noqa: E402  isort: skip  (tools/)
from openvino_backend import int8_heads_refusal  # noqa: E402  isort: skip  (tools/, torch-free)

BACKENDS = (
    "eager",
    "eager-bf16",
    "torchscript-tracing",
    "torchscript-scripting",
    "onnxruntime",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8-bf16",
    "openvino-int8-heads",
    "openvino-int8-rpn",
)
# the precision of most of each backend's matrix products (the peak it is compared with; fp32 if
# not named: int8-heads quantises the mask and semantic heads only, its other products float32)
# (openvino-int8-rpn: the RPN head's output convolutions quantised too, which the tool does not do)
PRECISION = {
    "eager-bf16": "bf16",
    "openvino-bf16": "bf16",
    "openvino-int8": "int8",
    "openvino-int8-bf16": "int8",
    "openvino-int8-rpn": "int8",
}
COCO_IMAGES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "assets",
    "coco_panoptic_sample",
    "images",
)


def build(cfg, args):
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


def gate_images(model):
    """The in-repo COCO images (BGR, 0..255) resized as the test loader resizes them (shortest
    edge 800, longest at most 1333), as (3, H, W) float tensors."""
    import detectron2.data.transforms as T
    from detectron2.data.detection_utils import read_image

    resize = T.ResizeShortestEdge(800, 1333)
    images = []
    for name in sorted(os.listdir(COCO_IMAGES)):
        original = read_image(os.path.join(COCO_IMAGES, name), format="BGR")
        image = resize.get_transform(original).apply_image(original)
        images.append(torch.as_tensor(image.astype("float32").transpose(2, 0, 1)))
    return images


def openvino_runners(model, inputs, backends, threads, tmpdir, onnx_path):
    """name -> function(image) -> (boxes, classes) for the OpenVINO backends."""
    out = {}
    if not any(b.startswith("openvino-") for b in backends):
        return out
    import openvino_backend

    xmls = {"fp32": openvino_backend.convert_onnx(onnx_path, os.path.join(tmpdir, "model.xml"))}
    xmls["bf16"] = xmls["fp32"]
    # calibration: the in-repo COCO images flipped left-right (not the gate's own inputs)
    calibration = [(im.flip(-1).numpy(),) for im in gate_images(model)]
    excluded = openvino_backend.INT8_QUANTISED["int8"][1]
    rpn_too = tuple(p for p in excluded if not p.startswith("/proposal_generator/"))
    for variant, precision, prefixes in [
        ("int8", "int8", None),
        ("int8-bf16", "int8-bf16", None),
        ("int8-heads", "int8-heads", None),
        ("int8-rpn", "int8", rpn_too),
    ]:
        if "openvino-" + variant in backends:
            quantised = openvino_backend.quantize_onnx(
                onnx_path,
                os.path.join(tmpdir, "model.{}.onnx".format(variant)),
                calibration,
                ["image"],
                precision,
                excluded_prefixes=prefixes,
            )
            xml = os.path.join(tmpdir, "model.{}.xml".format(variant))
            xmls[variant] = openvino_backend.convert_onnx(quantised, xml)
    for name in [b for b in backends if b.startswith("openvino-")]:
        variant = name[len("openvino-") :]
        precision = "int8" if variant == "int8-rpn" else variant
        compiled = openvino_backend.OpenVinoModel(xmls[variant], precision, threads)

        def run(image, compiled=compiled):
            outputs = dict(zip(compiled.output_names, compiled(image.numpy())))
            return torch.from_numpy(outputs["pred_boxes"]), torch.from_numpy(
                outputs["pred_classes"]
            )

        out[name] = run
    return out


def runners(model, image, backends, threads, tmpdir):
    """name -> function(image) running the backend, returning its (boxes (R, 4), classes (R,))."""
    inputs = export.sample_inputs(model, image)
    out = {}

    def eager(img):
        result = model.inference([{"image": img}], do_postprocess=False)[0]
        return result.pred_boxes.tensor, result.pred_classes

    out["eager"] = eager
    if "eager-bf16" in backends:

        def eager_bf16(img):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return eager(img)

        out["eager-bf16"] = eager_bf16
    if "torchscript-tracing" in backends:
        traced, schema = export.trace_model(model, inputs)
        out["torchscript-tracing"] = lambda img: traced(img)[:2]  # pred_boxes, pred_classes
    if "torchscript-scripting" in backends:
        scripted = export.script_model(model)

        def scripting(img):
            result = scripted([{"image": img}])[0]
            return result["pred_boxes"], result["pred_classes"]

        out["torchscript-scripting"] = scripting
    onnx_path = os.path.join(tmpdir, "model.onnx")
    if any(b == "onnxruntime" or b.startswith("openvino-") for b in backends):
        export.export_onnx(model, inputs, onnx_path)
    if "onnxruntime" in backends:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            onnx_path, options, providers=["CPUExecutionProvider"]
        )

        def ort(img):
            boxes, classes = session.run(["pred_boxes", "pred_classes"], {"image": img.numpy()})
            return torch.from_numpy(boxes), torch.from_numpy(classes)

        out["onnxruntime"] = ort
    out.update(openvino_runners(model, inputs, backends, threads, tmpdir, onnx_path))
    return {name: out[name] for name in backends}


def matched(expected, got, threshold=0.95):
    """(matched, total): detections (boxes, classes) of ``expected`` that ``got`` has, of the
    same class with box IoU >= ``threshold``."""
    from detectron2.structures import Boxes, pairwise_iou

    if len(expected[0]) == 0:
        return 0, 0
    if len(got[0]) == 0:
        return 0, len(expected[0])
    iou = pairwise_iou(Boxes(expected[0].float()), Boxes(got[0].float()))
    same = expected[1][:, None] == got[1][None].to(expected[1].dtype)
    return int(((iou >= threshold) & same).any(1).sum()), len(expected[0])


def measure_peaks(threads, n=2048, repeats=5):
    """GFLOP/s (a multiply-add counted once, as fvcore counts the model) of an n x n x n matrix
    product in float32, bfloat16 (torch.mm) and int8 (torch._int_mm, int32 sums): the best of
    ``repeats`` after one warm-up, on ``threads`` threads."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a8 = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
    b8 = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
    products = {
        "fp32": lambda: torch.mm(a, b),
        "bf16": lambda x=a.bfloat16(), y=b.bfloat16(): torch.mm(x, y),
        "int8": lambda: torch._int_mm(a8, b8),
    }
    peaks = {}
    for precision, product in products.items():
        product()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            product()
            best = min(best, time.perf_counter() - t)
        peaks[precision] = n**3 / best / 1e9
    return peaks


def model_gflops(model, image):
    """fvcore's count (panet_d2's handles; a multiply-add once) of the eager inference, GFLOPs."""
    from panet_d2.analysis import flop_count_analysis

    fca = flop_count_analysis(model, [{"image": image}])
    fca.unsupported_ops_warnings(False)
    fca.uncalled_modules_warnings(False)
    return fca.total() / 1e9


def time_backends(runs, image, repeats):
    """Two warm-up runs each, then ``repeats`` rounds alternating the backends: name -> seconds."""
    for run in runs.values():
        run(image)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():  # alternated: each sees the same machine state
            t = time.perf_counter()
            run(image)
            times[name].append(time.perf_counter() - t)
    return times


def print_table(args, times, outputs, gate, gflops, peaks):
    print(
        "| backend | median s | min s | max s | median / eager | GFLOP/s | share of its peak "
        "| bench image: boxes, matched | COCO gate: matched |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = statistics.median(times["eager"])
    for name, ts in times.items():
        median = statistics.median(ts)
        precision = PRECISION.get(name, "fp32")
        effective = gflops / median
        m, n = matched(outputs["eager"], outputs[name])
        gm, gn = (sum(x) for x in zip(*gate[name]))
        print(
            "| {} | {:.3f} | {:.3f} | {:.3f} | {:.2f} | {:.1f} | {:.0%} of {} | {}, {}/{} "
            "| {}/{} ({:.1%}) |".format(
                name,
                median,
                min(ts),
                max(ts),
                median / base,
                effective,
                effective / peaks[precision],
                precision,
                len(outputs[name][0]),
                m,
                n,
                gm,
                gn,
                gm / max(gn, 1),
            )
        )


def check_instance_model(parser, cfg, config):
    """A parser error unless ``cfg`` is of an instance model (a GeneralizedRCNN, not panoptic):
    the benchmark times and compares the final instances of each backend."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if not (isinstance(arch, type) and issubclass(arch, GeneralizedRCNN)) or issubclass(
        arch, PanopticFPN
    ):
        parser.error(
            f"--config {config}: its model is a {cfg.MODEL.META_ARCHITECTURE}; this benchmark "
            "runs instance models (GeneralizedRCNN; tools/export_model.py exports panoptic ones)"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")
    parser.add_argument("--load", default="fixed", choices=("fixed", "default"))
    parser.add_argument(
        "--cls-scale", type=positive_number, default=None, help="with --load default (30)"
    )
    add_timing_options(parser)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=None,
        choices=BACKENDS,
        help="default: every one the model takes (openvino-int8-heads: a mask head)",
    )
    parser.add_argument(
        "--flops", type=positive_number, default=None, help="the model's GFLOPs (skip the count)"
    )
    parser.add_argument("--opts", nargs="*", default=[], help="config changes: KEY VALUE pairs")
    args = parser.parse_args()
    if args.cls_scale is not None and args.load != "default":
        parser.error("--cls-scale: scales the classifier of --load default only")
    args.cls_scale = 30.0 if args.cls_scale is None else args.cls_scale
    if args.backends and args.backends[0] != "eager":
        parser.error("--backends: eager first (the ratios are to eager)")
    torch.set_num_threads(args.threads)
    try:
        cfg = load_config_file(get_config_file(args.config), args.opts, lazy=False, key="--config")
    except (InputError, RuntimeError) as e:  # a bad option, or a config not in the model zoo
        parser.error(" ".join(str(e).split()))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    check_instance_model(parser, cfg, args.config)
    model = build(cfg, args)
    refusal = int8_heads_refusal(model)
    if refusal and args.backends and "openvino-int8-heads" in args.backends:
        parser.error(f"--backends openvino-{refusal}.")
    if args.backends is None:
        args.backends = [b for b in BACKENDS if not (refusal and b == "openvino-int8-heads")]
    image = torch.rand(3, args.height, args.width, generator=torch.Generator().manual_seed(0))
    image = image * 255
    peaks = measure_peaks(args.threads)
    with tempfile.TemporaryDirectory() as tmpdir, torch.no_grad():
        candidates, total = count_candidates(model, image)
        gflops = args.flops or model_gflops(model, image)
        runs = runners(model, image, args.backends, args.threads, tmpdir)
        outputs = {name: run(image) for name, run in runs.items()}  # warm-up 1, and the outputs
        gate_inputs = gate_images(model)
        gate_outputs = {name: [run(im) for im in gate_inputs] for name, run in runs.items()}
        times = time_backends(runs, image, args.repeats)
    gate = {
        name: [matched(e, g) for e, g in zip(gate_outputs["eager"], outs)]
        for name, outs in gate_outputs.items()
    }
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
    print(
        "model: {:.1f} GFLOPs (fvcore, a multiply-add once); measured peak, {} threads, GFLOP/s: "
        "{}".format(
            gflops, args.threads, ", ".join("{} {:.1f}".format(k, v) for k, v in peaks.items())
        )
    )
    print_table(args, times, outputs, gate, gflops, peaks)
    print(
        "matched: eager's detections that the backend has (same class, box IoU >= 0.95); COCO "
        "gate: the {} in-repo COCO images, resized as the test loader resizes".format(
            len(gate_inputs)
        )
    )


if __name__ == "__main__":
    main()
