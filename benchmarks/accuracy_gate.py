#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
The accuracy gate of the lower-precision backends (docs/deployment.md): one trained checkpoint
evaluated eager in float32 (the reference), eager under ``torch.autocast("cpu", torch.bfloat16)``
and exported to OpenVINO in each ``--precision`` (``tools/export_model.py --run-eval``), all by
the same evaluators (the project's evaluator of the test dataset, as ``train_net.py
--eval-only``); prints PQ, box AP, mask AP and mIoU, each difference to float32 eager, and
whether it is within the gate (PQ 0.5, box and mask AP 0.3), and the share of eager float32's
final detections that each backend also has (same class, box IoU >= 0.95; from the evaluators'
``coco_instances_results.json``): of all of them (the R50 gate's measure) and of those scored at
least 0.5.

The test dataset is the config's ``DATASETS.TEST[0]`` or, with ``--num-images N``, a held-out
split of the generated dataset of N images (``--seed``; its panoptic view for a panoptic model,
its instances for an instance model; the main job's validation split has 16
images, where one detection that crosses a score threshold moves AP by about 0.3-0.6).

    python3 benchmarks/accuracy_gate.py \\
        --config-file configs/quick_schedules/panoptic_panet_R_18_synth.yaml \\
        --weights output/quick_schedules/panoptic_panet_R_18_synth/model_final.pth \\
        --num-images 256 --threads 2
"""

import argparse
import json
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import panet_d2  # noqa: E402,F401  isort: skip  (first: Detectron2 then imports without warnings)
from benchmarks.options import at_least  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tools"))

from detectron2.evaluation import inference_on_dataset  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN, build_model  # noqa: E402
from detectron2.structures import Boxes, BoxMode, pairwise_iou  # noqa: E402

from panet_d2.checkpoint import PANetCheckpointer  # noqa: E402
from panet_d2.config import load_config_file  # noqa: E402
from panet_d2.data import register_synthetic_dataset  # noqa: E402
from panet_d2.engine import PANetTrainer, one_line_errors  # noqa: E402
from panet_d2.engine.checks import check_output_dir  # noqa: E402
from panet_d2.errors import ConfigError  # noqa: E402
from panet_d2.evaluation import build_evaluator  # noqa: E402

import export_model  # noqa: E402  isort: skip  (tools/)
from openvino_backend import (  # noqa: E402  isort: skip  (tools/, torch-free)
    PRECISIONS,
    int8_heads_refusal,
)

# metric: (task, key, the gate: largest difference to float32 eager, None: reported only)
METRICS = {
    "PQ": ("panoptic_seg", "PQ", 0.5),
    "box AP": ("bbox", "AP", 0.3),
    "mask AP": ("segm", "AP", 0.3),
    "mIoU": ("sem_seg", "mIoU", None),
}


class Autocast(torch.nn.Module):
    """``model`` run under ``torch.autocast("cpu", torch.bfloat16)``."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        with torch.autocast("cpu", torch.bfloat16):
            return self.model(inputs)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="the trained checkpoint")
    parser.add_argument("--num-images", type=at_least(0), default=0, help="0: DATASETS.TEST[0]")
    parser.add_argument(
        "--seed", type=at_least(0), default=99, help="of the generated held-out split"
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=list(PRECISIONS),
        default=None,
        help="default: every one the model takes (int8-heads: a mask or semantic head)",
    )
    parser.add_argument("--no-eager-bf16", action="store_true")
    parser.add_argument("--calibration-count", type=at_least(1), default=16)
    parser.add_argument("--threads", type=at_least(1), default=2)
    parser.add_argument(
        "--output",
        default=None,
        help="keep the exports here (default: a temporary directory, removed)",
    )
    return parser


def eager_metrics(cfg, weights, bf16, output_dir):
    model = build_model(cfg)
    PANetCheckpointer(model).load(weights)
    model.eval()
    dataset = cfg.DATASETS.TEST[0]
    loader = PANetTrainer.build_test_loader(cfg, dataset)
    evaluator = build_evaluator(cfg, dataset, os.path.join(output_dir, "inference"))
    with torch.no_grad():
        return inference_on_dataset(Autocast(model) if bf16 else model, loader, evaluator)


def detections(output_dir):
    """image id -> (boxes XYXY (N, 4), classes (N,), scores (N,)) of the evaluator's results
    file."""
    with open(os.path.join(output_dir, "inference", "coco_instances_results.json")) as f:
        results = json.load(f)
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    out = {}
    for image_id, rs in by_image.items():
        boxes = BoxMode.convert(
            torch.tensor([r["bbox"] for r in rs]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS
        )
        classes = torch.tensor([r["category_id"] for r in rs])
        out[image_id] = (Boxes(boxes), classes, torch.tensor([r["score"] for r in rs]))
    return out


def matched(reference, other, min_score=0.0):
    """(eager's detections scored >= ``min_score`` that ``other`` has (same class, box IoU >=
    0.95, any score); their count)."""
    hits = total = 0
    for image_id, (boxes, classes, scores) in reference.items():
        keep = scores >= min_score
        boxes, classes = boxes[keep], classes[keep]
        total += len(classes)
        if image_id in other and len(classes):
            iou = pairwise_iou(boxes, other[image_id][0])
            same = classes[:, None] == other[image_id][1][None, :]
            hits += int(((iou >= 0.95) & same).any(dim=1).sum())
    return hits, total


def row(name, metrics, reference, matches):
    cells, passed = [name], True
    for task, key, limit in METRICS.values():
        if task not in metrics:  # e.g. no panoptic task for an instance model
            cells.append("-")
            continue
        value = metrics[task][key]
        if reference is None:
            cells.append("{:.3f}".format(value))
            continue
        delta = value - reference[task][key]
        passed &= limit is None or abs(delta) <= limit
        cells.append("{:.3f} ({:+.2f})".format(value, delta))
    for match in matches:
        cells.append("{}/{} ({:.1f}%)".format(*match, 100.0 * match[0] / max(match[1], 1)))
    cells.append("(reference)" if reference is None else "pass" if passed else "FAILS")
    return "| " + " | ".join(cells) + " |"


def check_args(args):
    """Refuse a bad --output before the eager evaluation (minutes to hours; counts: the parser)."""
    if args.output is not None:
        check_output_dir(args.output, "--output")


def main(argv=None):
    args = get_parser().parse_args(argv)
    check_args(args)
    if args.output is not None:
        return gate(args, args.output)
    with tempfile.TemporaryDirectory(prefix="accuracy_gate_") as output:
        return gate(args, output)


def gate(args, output):
    torch.set_num_threads(args.threads)
    opts = ["MODEL.WEIGHTS", args.weights, "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
    cfg = load_config_file(args.config_file, opts, lazy=False)  # (a .py: one line)
    if args.num_images:  # the split's panoptic view for a panoptic model, else its instances'
        prefix = "panet_gate_n{}_s{}".format(args.num_images, args.seed)
        split = {"val": {"num_images": args.num_images, "seed": args.seed}}
        register_synthetic_dataset(prefix, splits=split)
        arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        panoptic = isinstance(arch, type) and issubclass(arch, PanopticFPN)
        opts += ["DATASETS.TEST", "('{}_val{}',)".format(prefix, "_panoptic" * panoptic)]
        cfg = load_config_file(args.config_file, opts, lazy=False)
    cfg.freeze()
    refusal = int8_heads_refusal(build_model(cfg))  # before the evaluations (minutes to hours)
    if refusal and args.precisions and "int8-heads" in args.precisions:
        raise ConfigError(f"--precisions {refusal}.")
    if args.precisions is None:
        args.precisions = [p for p in PRECISIONS if not (refusal and p == "int8-heads")]
    dirs = [os.path.join(output, "eager_fp32")]
    results = [("eager fp32", eager_metrics(cfg, args.weights, False, dirs[0]))]
    if not args.no_eager_bf16:
        dirs.append(os.path.join(output, "eager_bf16"))
        results.append(("eager bf16 (autocast)", eager_metrics(cfg, args.weights, True, dirs[-1])))
    for precision in args.precisions:
        dirs.append(os.path.join(output, precision))
        tool_args = ["--config-file", args.config_file, "--format", "openvino", "--run-eval"]
        tool_args += ["--precision", precision, "--output", dirs[-1]]
        if precision.startswith("int8"):
            tool_args += ["--calibration-count", str(args.calibration_count)]
        metrics = export_model.main(tool_args + opts)
        results.append(("OpenVINO " + precision, metrics))

    print(
        "\n## accuracy gate: {} on {}, {} threads".format(
            os.path.basename(args.weights), cfg.DATASETS.TEST[0], args.threads
        )
    )
    print("| backend | " + " | ".join(METRICS) + " | matched | matched, score >= 0.5 | gate |")
    print("|---" * (len(METRICS) + 4) + "|")
    reference = detections(dirs[0])
    for (name, metrics), d in zip(results, dirs):
        matches = [matched(reference, detections(d), s) for s in (0.0, 0.5)]
        print(row(name, metrics, None if name == "eager fp32" else results[0][1], matches))
    return results


if __name__ == "__main__":
    with one_line_errors():
        main()
