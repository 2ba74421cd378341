#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
What PANet adds to Detectron2's Mask R-CNN R50-FPN: parameters per component, and inference time
of both models on one image, measured side by side in one run (interleaved repeats, median).

    python3 benchmarks/bench_model.py --height 800 --width 1216 --repeats 5 --threads 2

Both models have random weights (no checkpoints are downloaded); to time the whole pipeline as a
trained model runs it, both keep their top DETECTIONS_PER_IMAGE (100) boxes
(SCORE_THRESH_TEST = 0), so the mask head runs on 100 RoIs in each.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2 import model_zoo as d2_model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from panet_d2 import add_panet_config  # noqa: E402
from panet_d2.model_zoo import get_config_file  # noqa: E402

PANET = "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml"
COMPONENTS = {
    # name: config overrides switching it on, starting from Mask R-CNN (everything off)
    "Mask R-CNN R50-FPN (all off)": [],
    "+ BPA": ["MODEL.BACKBONE.NAME", "build_resnet_pafpn_backbone"],
    "+ AFP": ["MODEL.AFP.ENABLED", True],
    "+ FF": ["MODEL.FF.ENABLED", True],
    "+ HHD (heavier box head)": ["MODEL.ROI_BOX_HEAD.NUM_CONV", 4, "MODEL.ROI_BOX_HEAD.NUM_FC", 1],
}
ALL_OFF = [
    "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
    "MODEL.AFP.ENABLED", False,
    "MODEL.FF.ENABLED", False,
]


def panet_cfg(opts, device):
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(get_config_file(PANET))
    cfg.merge_from_list(list(opts) + ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    return cfg


def d2_cfg(device):
    cfg = get_cfg()
    cfg.merge_from_file(d2_model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""])
    return cfg


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def timed_model(cfg):
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # Random ResNet weights with FrozenBN blow activations up; scale the stem to keep them O(1).
    model.backbone.bottom_up.stem.conv1.weight.data *= 1e-3
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print("## Parameters (COCO, 80 classes)")
    print("| model (each row adds one component to the row above) | parameters | this component adds |")
    print("|---|---|---|")
    opts, base, prev = list(ALL_OFF), None, None
    for name, extra in COMPONENTS.items():
        opts += extra
        n = num_params(build_model(panet_cfg(opts, "cpu")))
        base = base if base is not None else n
        print("| {} | {:,} | {:+,} |".format(name, n, n - (prev if prev is not None else n)))
        prev = n
        if name == "+ FF":
            full = n
    print("| PANet R50 (BPA+AFP+FF, {}) | {:,} | {:+,} ({:+.1f}%) |".format(PANET, full, full - base, 100.0 * (full - base) / base))
    assert num_params(build_model(d2_cfg("cpu"))) == base, "all-off model differs from Detectron2's"

    print("\n## Inference, one {}x{} image, {} threads, device {}".format(args.height, args.width, args.threads, args.device))
    models = {
        "Detectron2 Mask R-CNN R50-FPN": timed_model(d2_cfg(args.device)),
        "PANet R50 (panet_R_50_FPN_1x)": timed_model(panet_cfg([], args.device)),
    }
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(3, args.height, args.width, generator=g) * 255).to(args.device)
    times = {k: [] for k in models}
    dets = {}
    with torch.no_grad():
        for name, model in models.items():  # warm-up
            model([{"image": image}])
        for _ in range(args.repeats):
            for name, model in models.items():  # interleaved: both see the same machine state
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                out = model([{"image": image}])[0]["instances"]
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
                dets[name] = len(out)
    print("| model | median s/image | min | max | detections |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        print("| {} | {:.3f} | {:.3f} | {:.3f} | {} |".format(name, statistics.median(ts), min(ts), max(ts), dets[name]))
    a, b = (statistics.median(times[k]) for k in models)
    print("\nPANet / Mask R-CNN time ratio: {:.2f}x".format(b / a))


if __name__ == "__main__":
    main()
