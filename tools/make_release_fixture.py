#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Record what the authors' PANet release (github:ShuLiu1993/PANet, MIT) computes, as the reference of
``tests/test_release_parity.py``.

The release is Detectron.pytorch on PyTorch 0.4 with compiled CUDA / cython extensions; it does not
build on current PyTorch. This script runs its own module code (``lib/``) on the CPU of current
PyTorch from a checkout given on the command line; nothing of the release is copied into this
repository. Inside this process only, it puts stand-ins where the release needs compiled code or
old APIs:

* ``RoIAlignFunction`` (``modeling/roi_xfrom/roi_align``): ``torchvision.ops.roi_align`` with
  ``aligned=False``, which computes Detectron's RoIAlign (the RoI's corners times the scale, its
  size clamped to at least 1 bin-pixel, ``sampling_ratio`` samples per bin side, bilinear taps as
  Caffe2's ``RoIAlignOp``);
* ``utils.cython_nms`` / ``utils.cython_bbox``: Detectron's greedy NMS and box overlaps with its
  "+1" inclusive box sizes, in numpy (same rule as the .pyx files);
* the RoIPool / RoICrop extensions and the multi-GPU ``nn.parallel`` package (PyTorch 0.4
  internals): never used by these models at inference; stand-ins that raise;
* ``Variable(...).cuda(device)`` of the RoI transform returns the CPU tensor, ``yaml.load`` gets
  PyYAML's ``SafeLoader`` (PyYAML >= 6 requires one), NumPy's removed aliases (``np.float``,
  ``np.int``, ...) are set back.

What it writes (``--out``, default ``tests/fixtures/panet_release``):

* ``keys_{det,det_2fc,mask}.json``: every tensor name and shape of the release's R-50 models,
  built from its configs ``configs/panet/e2e_panet_R-50-FPN_{1x_det,1x_det_2fc,2x_mask}.yaml``
  (``--keys-only`` writes only these);
* ``release_outputs.pt`` (``torch.load(weights_only=True)``): a reduced-width model of each
  variant (the release's modules and structure: ResNet-50 blocks, FPN + bottom-up path with GN,
  the variant's heads, 81 classes; fewer channels, see ``REDUCED``), its seeded random weights in
  the release's format (names and layout of a release checkpoint's ``model``), one 96 x 128 image,
  fixed RoIs, and the release's outputs: the input blob, N2..N6, RPN logits and deltas per level,
  box class probabilities and deltas, mask probabilities;
* ``PROVENANCE.md`` and ``LICENSE.PANet-release`` (the release's MIT notice).

Usage::

    git clone <PANet release> /path/to/PANet
    python3 tools/make_release_fixture.py --release /path/to/PANet
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import types

import numpy as np
import torch

VARIANTS = {
    "det": "configs/panet/e2e_panet_R-50-FPN_1x_det.yaml",
    "det_2fc": "configs/panet/e2e_panet_R-50-FPN_1x_det_2fc.yaml",
    "mask": "configs/panet/e2e_panet_R-50-FPN_2x_mask.yaml",
}
# COCO: 80 classes + background (the release's test_net.py sets it for coco datasets).
NUM_CLASSES = 81
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "panet_release")


# -------------------------------------------------------------------------------------------------
# Stand-ins for the release's compiled parts and PyTorch 0.4 APIs (this process only)
# -------------------------------------------------------------------------------------------------
def _nms_plus1(dets, thresh):
    """Detectron's greedy NMS (utils/cython_nms.pyx ``nms``): "+1" areas and overlaps."""
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr < thresh]
    return np.asarray(keep, dtype=np.int64)


def _bbox_overlaps_plus1(boxes, query_boxes):
    """Detectron's IoU matrix (utils/cython_bbox.pyx ``bbox_overlaps``), "+1" sizes."""
    boxes = np.asarray(boxes, dtype=np.float32)
    query_boxes = np.asarray(query_boxes, dtype=np.float32)
    area_b = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area_q = (query_boxes[:, 2] - query_boxes[:, 0] + 1) * (
        query_boxes[:, 3] - query_boxes[:, 1] + 1
    )
    iw = np.minimum(boxes[:, None, 2], query_boxes[None, :, 2]) - np.maximum(
        boxes[:, None, 0], query_boxes[None, :, 0]
    )
    ih = np.minimum(boxes[:, None, 3], query_boxes[None, :, 3]) - np.maximum(
        boxes[:, None, 1], query_boxes[None, :, 1]
    )
    iw, ih = np.maximum(iw + 1, 0), np.maximum(ih + 1, 0)
    inter = iw * ih
    ua = area_b[:, None] + area_q[None, :] - inter
    return np.where((iw > 0) & (ih > 0), inter / ua, 0.0).astype(np.float32)


class _RoIAlignFunction:
    """
    Stand-in for the release's ``RoIAlignFunction(h, w, spatial_scale, sampling_ratio)(x, rois)``
    (a CUDA extension): Detectron's RoIAlign is torchvision's with ``aligned=False``.
    """

    def __init__(self, aligned_height, aligned_width, spatial_scale, sampling_ratio):
        self.output_size = (int(aligned_height), int(aligned_width))
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)

    def __call__(self, features, rois):
        import torchvision

        return torchvision.ops.roi_align(
            features,
            rois.to(features.dtype),
            self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=False,
        )


class _NotAvailable:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("this stand-in is never used by the PANet release's models")


class _CPUTensor(torch.Tensor):
    """What ``Variable(t)`` returns here: ``.cuda(device)`` keeps it on the CPU."""

    def cuda(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor)


def _variable(tensor, *args, **kwargs):
    return tensor.as_subclass(_CPUTensor)


def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def install_release(release):
    """
    Put the release's ``lib/`` on ``sys.path`` with the stand-ins above; return its modules
    (``core.config``, ``modeling.model_builder``).
    """
    lib = os.path.join(os.path.abspath(release), "lib")
    if not os.path.isfile(os.path.join(lib, "modeling", "model_builder.py")):
        raise SystemExit(
            "--release {!r} is not a PANet release checkout (no lib/modeling/"
            "model_builder.py)".format(release)
        )
    if lib not in sys.path:
        sys.path.insert(0, lib)

    import yaml

    if not getattr(yaml.load, "_release_shim", False):
        _yaml_load = yaml.load

        def _load(stream, Loader=yaml.SafeLoader):
            return _yaml_load(stream, Loader=Loader)

        _load._release_shim = True
        yaml.load = _load

    # NumPy < 1.20 aliases the release uses (np.float, np.int, np.bool, np.object)
    for alias, value in (("float", float), ("int", int), ("bool", bool), ("object", object)):
        if alias not in np.__dict__:
            setattr(np, alias, value)
    # its multi-GPU DataParallel (imports PyTorch 0.4 internals; inference does not use it)
    _module("nn.parallel", DataParallel=_NotAvailable)
    _module("utils.cython_nms", nms=_nms_plus1, soft_nms=_NotAvailable)
    _module("utils.cython_bbox", bbox_overlaps=_bbox_overlaps_plus1)
    _module("model.roi_pooling.functions.roi_pool", RoIPoolFunction=_NotAvailable)
    _module("model.roi_crop.functions.roi_crop", RoICropFunction=_NotAvailable)
    _module("modeling.roi_xfrom.roi_align.functions.roi_align", RoIAlignFunction=_RoIAlignFunction)
    _module("model.nms.nms_gpu", nms_gpu=_NotAvailable)

    config = importlib.import_module("core.config")
    model_builder = importlib.import_module("modeling.model_builder")
    model_builder.Variable = _variable
    return config, model_builder


def release_commit(release):
    try:
        return subprocess.check_output(
            ["git", "-C", release, "rev-parse", "HEAD"], text=True, stderr=subprocess.DEVNULL
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_release_model(config, model_builder, release, variant, overrides=()):
    """
    The release's ``Generalized_RCNN`` of one variant, in eval mode, on the CPU: its config file,
    COCO's 81 classes, no ImageNet weights, then ``overrides`` (key, value pairs).
    """
    cfg = config.cfg
    cfg.immutable(False)
    # a fresh copy of the release's defaults for every model (its cfg is a module-level global)
    importlib.reload(config)
    cfg = config.cfg
    model_builder.cfg = cfg
    for name in list(sys.modules):
        mod = sys.modules[name]
        if getattr(mod, "cfg", None) is not None and name.split(".")[0] in (
            "modeling",
            "utils",
            "core",
            "roi_data",
            "nn",
        ):
            mod.cfg = cfg
    config.merge_cfg_from_file(os.path.join(release, VARIANTS[variant]))
    cfg.MODEL.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.LOAD_IMAGENET_PRETRAINED_WEIGHTS = False
    for key, value in overrides:
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError("release config has no key {}".format(key))
        node[leaf] = value
    config.assert_and_infer_cfg(make_immutable=False)
    model = model_builder.Generalized_RCNN()
    model.eval()
    return model


def key_shapes(model):
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def write_json(path, doc):
    """JSON with one line per entry of a dict value (e.g. one tensor per line)."""
    lines = []
    for k, v in doc.items():
        if isinstance(v, dict):
            inner = ",\n".join(
                "    {}: {}".format(json.dumps(a), json.dumps(b)) for a, b in v.items()
            )
            lines.append("  {}: {{\n{}\n  }}".format(json.dumps(k), inner))
        else:
            lines.append("  {}: {}".format(json.dumps(k), json.dumps(v)))
    with open(path, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def write_key_lists(config, model_builder, release, out, commit):
    for variant, path in VARIANTS.items():
        model = build_release_model(config, model_builder, release, variant)
        shapes = key_shapes(model)
        doc = {
            "variant": variant,
            "release_config": path,
            "release_commit": commit,
            "note": "state_dict() of the release's Generalized_RCNN (R-50, 81 classes) built "
            "on the CPU by tools/make_release_fixture.py; the 'model' of a release checkpoint",
            "num_tensors": len(shapes),
            "tensors": shapes,
        }
        write_json(os.path.join(out, "keys_{}.json".format(variant)), doc)
        print("{}: {} tensors".format(variant, len(shapes)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="a checkout of ShuLiu1993/PANet")
    parser.add_argument("--out", default=DEFAULT_OUT, help="fixture folder")
    parser.add_argument("--keys-only", action="store_true", help="write only keys_*.json")
    args = parser.parse_args(argv)
    release = os.path.abspath(args.release)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    config, model_builder = install_release(release)
    commit = release_commit(release)
    write_key_lists(config, model_builder, release, args.out, commit)
    if args.keys_only:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
