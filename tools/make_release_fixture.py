#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Record what the authors' PANet release (github:ShuLiu1993/PANet, MIT) computes, as the reference of
``tests/release/test_parity.py``.

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

With ``--e2e OUT.json`` it writes no fixture; instead it runs, for each variant, the release's
whole test path (``core/test.py`` ``im_detect_all``) and panet_d2's ``DefaultPredictor`` on the same
seeded weights (the full R-50 model, converted by ``tools/convert_panet_release.py``) on the in-repo
COCO images, and compares the final detections (docs/release_parity.md).

Usage::

    git clone <PANet release> /path/to/PANet
    python3 tools/make_release_fixture.py --release /path/to/PANet
    python3 tools/make_release_fixture.py --release /path/to/PANet --e2e e2e.json
"""

import argparse
import contextlib
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


# -------------------------------------------------------------------------------------------------
# The reduced-width models, their seeded weights, and the outputs
# -------------------------------------------------------------------------------------------------
SEED = 20
# ResNet-50 stage outputs 256 / 512 / 1024 / 2048 divided by this (the stem keeps its 64, which
# the release hard-codes): 32 / 64 / 128 / 256, bottlenecks 8 / 16 / 32 / 64 (WIDTH_PER_GROUP 8).
RESNET_OUT_DIVISOR = 8
# Release config keys of the reduced models (the same for the three variants). GroupNorm keeps
# its 32 groups: 2 channels per group in FPN, the bottom-up path and the heads' convs, 4 in the
# fcs of the 2fc head.
REDUCED = (
    ("RESNETS.WIDTH_PER_GROUP", 8),
    ("FPN.DIM", 64),
    ("FAST_RCNN.CONV_HEAD_DIM", 64),
    ("FAST_RCNN.MLP_HEAD_DIM", 128),
    ("MRCNN.DIM_REDUCED", 64),
    ("MRCNN.ROI_XFORM_RESOLUTION", 7),
    ("MRCNN.RESOLUTION", 14),
    ("TEST.SCALE", 96),
    ("TEST.MAX_SIZE", 128),
)
# The fixture image: a 96 x 128 crop of a downscaled in-repo COCO image (BGR, uint8).
IMAGE = os.path.join("assets", "coco_panoptic_sample", "images", "000000439180.jpg")
IMAGE_SIZE = (96, 128)
# Fixed RoIs (x0, y0, x1, y1) in image pixels, as the release passes them to its heads: small
# (level 2 by FPN's rule) to whole-image, fractional corners, one past the image border, one
# thinner than a pixel at the coarse levels.
ROIS = (
    (10.0, 12.0, 40.0, 50.0),
    (0.0, 0.0, 127.0, 95.0),
    (55.5, 20.25, 71.75, 33.5),
    (3.0, 60.0, 9.0, 66.0),
    (90.0, 50.0, 150.0, 110.0),
    (30.2, 5.7, 118.9, 88.1),
    (64.0, 40.0, 64.5, 47.0),
    (-6.0, 70.0, 20.0, 100.0),
)


def _scaled_resnet(resnet):
    """Patch the release's ResNet / FPN level info to RESNET_OUT_DIVISOR-times fewer channels."""
    if getattr(resnet.add_stage, "_reduced", False):
        return
    add_stage = resnet.add_stage

    def reduced_add_stage(inplanes, outplanes, innerplanes, nblocks, dilation=1, stride_init=2):
        return add_stage(
            inplanes, outplanes // RESNET_OUT_DIVISOR, innerplanes, nblocks, dilation, stride_init
        )

    reduced_add_stage._reduced = True
    resnet.add_stage = reduced_add_stage
    fpn = importlib.import_module("modeling.FPN")
    level_info = fpn.fpn_level_info_ResNet50_conv5

    def reduced_level_info():
        info = level_info()
        return info._replace(dims=tuple(d // RESNET_OUT_DIVISOR for d in info.dims))

    fpn.fpn_level_info_ResNet50_conv5 = reduced_level_info


def release_random_weights(shapes, seed=SEED):
    """
    Seeded random weights for a release state dict of the given names and shapes, drawn with
    NumPy's legacy ``RandomState`` (its streams are frozen: the same numbers on every NumPy).
    Each tensor has its own stream (seed + CRC32 of its name), so the three variants share the
    values of the parts they share.

    * conv / fc weights: normal(0, sqrt(gain / fan_in)) (gain 2: ReLU follows; 1 for the
      predictors, the RPN's outputs and the last conv of each residual branch: 0.5);
    * norm scales (AffineChannel2d, GroupNorm): 1 + normal(0, 0.2); the residual branch's last
      scale 0.3 + normal(0, 0.05) (so that 16 blocks do not blow the activations up);
    * biases (norms and layers): normal(0, 0.3).

    Args:
        shapes (dict[str, list[int]]): release names -> shapes, e.g. ``keys_mask.json``.

    Returns:
        dict[str, Tensor]: float32 tensors.
    """
    import zlib

    out = {}
    for name, shape in shapes.items():
        rs = np.random.RandomState((seed * 1000003 + zlib.crc32(name.encode())) % 2**32)
        z = rs.standard_normal(size=tuple(shape))
        if len(shape) >= 2:
            fan_in = shape[0] if name.endswith("upconv.weight") else int(np.prod(shape[1:]))
            gain = 2.0
            if name.split(".")[-2] in ("cls_score", "bbox_pred", "classify", "conv3"):
                gain = 1.0 if name.split(".")[-2] != "conv3" else 0.5
            if name.startswith("RPN.FPN_RPN_") and "conv" not in name:
                gain = 1.0
            value = z * np.sqrt(gain / fan_in)
        elif name.endswith(".weight"):
            last_of_branch = name.endswith((".bn3.weight", ".downsample.1.weight"))
            value = 0.3 + 0.05 * z if last_of_branch else 1.0 + 0.2 * z
        else:
            value = 0.3 * z
        out[name] = torch.from_numpy(value.astype(np.float32))
    return out


def weights_digest(weights):
    """SHA-256 over the names and float32 bytes of a state dict, in its order."""
    import hashlib

    h = hashlib.sha256()
    for name, value in weights.items():
        h.update(name.encode())
        h.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def fixture_image(root):
    """The 96 x 128 BGR uint8 image of the fixture (cv2: the release's own image reader)."""
    import cv2

    im = cv2.imread(os.path.join(root, IMAGE))
    if im is None:
        raise SystemExit("cannot read {}".format(IMAGE))
    h, w = IMAGE_SIZE
    scale = max(h / im.shape[0], w / im.shape[1])
    im = cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    y0, x0 = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
    return np.ascontiguousarray(im[y0 : y0 + h, x0 : x0 + w])


def release_outputs(model, cfg, blob_utils, im, rois):
    """
    Run the release's modules as its test path does (``core/test.py``: ``_get_blobs``,
    ``convbody_net``, the RPN, ``Box_Head`` / ``Box_Outs`` on given RoIs, ``mask_net``).

    Returns:
        dict[str, Tensor]: "blob" (1, 3, H, W); "n2".."n6"; "rpn_logits_p{k}" (1, A, Hk, Wk) and
        "rpn_deltas_p{k}" (1, 4A, Hk, Wk); "cls_prob" (R, 81) and "bbox_pred" (R, 324) (softmax
        and deltas, background first); "mask_prob" (R, 81, S, S) with a mask head.
    """
    blob, _, im_info = blob_utils.get_image_blob(im, cfg.TEST.SCALE, cfg.TEST.MAX_SIZE)
    x = torch.from_numpy(blob)
    out = {"blob": x.clone()}
    with torch.no_grad():
        blob_conv = model.Conv_Body(x)  # [N6, N5, N4, N3, N2]
        k_max = cfg.FPN.RPN_MAX_LEVEL
        for i, t in enumerate(blob_conv):
            out["n{}".format(k_max - i)] = t.clone()
        rpn_ret = model.RPN(blob_conv, torch.from_numpy(im_info))
        for lvl in range(cfg.FPN.RPN_MIN_LEVEL, k_max + 1):
            out["rpn_logits_p{}".format(lvl)] = rpn_ret["rpn_cls_logits_fpn{}".format(lvl)].clone()
            out["rpn_deltas_p{}".format(lvl)] = rpn_ret["rpn_bbox_pred_fpn{}".format(lvl)].clone()
        roi_blobs = blob_conv[-model.num_roi_levels :]
        rois_np = rois.numpy().astype(np.float32)
        box_feat = model.Box_Head(list(roi_blobs), {"rois": rois_np})
        cls_prob, bbox_pred = model.Box_Outs(box_feat)
        out["cls_prob"], out["bbox_pred"] = cls_prob.clone(), bbox_pred.clone()
        if cfg.MODEL.MASK_ON:
            out["mask_prob"] = model.mask_net(list(roi_blobs), {"mask_rois": rois_np}).clone()
    return out


def write_fixture(config, model_builder, release, out, commit, root):
    _scaled_resnet(importlib.import_module("modeling.ResNet"))
    blob_utils = importlib.import_module("utils.blob")
    im = fixture_image(root)
    rois = torch.tensor([(0.0,) + r for r in ROIS], dtype=torch.float32)
    doc = {
        "release_commit": commit,
        "seed": SEED,
        "resnet_out_divisor": RESNET_OUT_DIVISOR,
        "release_overrides": [[k, v] for k, v in REDUCED],
        "image": torch.from_numpy(im),
        "rois": rois,
        "variants": {},
    }
    anchors_done = False
    for variant in VARIANTS:
        model = build_release_model(config, model_builder, release, variant, REDUCED)
        blob_utils.cfg = config.cfg
        if not anchors_done:  # the RPN's cell anchors per level (inclusive pixel boxes)
            doc["anchors"] = {
                "p{}".format(config.cfg.FPN.RPN_MIN_LEVEL + i): torch.from_numpy(op._anchors)
                for i, op in enumerate(model.RPN.GenerateProposals_modules)
            }
            anchors_done = True
        shapes = key_shapes(model)
        weights = release_random_weights(shapes)
        model.load_state_dict(weights, strict=True)
        outputs = release_outputs(model, config.cfg, blob_utils, im, rois)
        for name, value in outputs.items():  # the variants share the backbone and the RPN:
            for other in doc["variants"].values():  # store an equal output once
                same = other["outputs"].get(name)
                if same is not None and torch.equal(same, value):
                    outputs[name] = same
        doc["variants"][variant] = {
            "release_config": VARIANTS[variant],
            "shapes": shapes,
            "weights_sha256": weights_digest(weights),
            "outputs": outputs,
        }
        stats = ", ".join(
            "{} {} |max| {:.3g}".format(k, tuple(v.shape), v.abs().max().item())
            for k, v in outputs.items()
        )
        print(
            "{}: {} tensors, {} parameters; {}".format(
                variant, len(shapes), sum(int(np.prod(s)) for s in shapes.values()), stats
            )
        )
    path = os.path.join(out, "release_outputs.pt")
    torch.save(doc, path)
    print("wrote {} ({:.0f} kB)".format(path, os.path.getsize(path) / 1024))
    return doc


# -------------------------------------------------------------------------------------------------
# End to end: the release's whole test path and panet_d2's DefaultPredictor on the same weights
# -------------------------------------------------------------------------------------------------
class _DataParallelStandIn(torch.nn.Module):
    """What the release's test path expects of its model: ``mynn.DataParallel`` on one device."""

    def __init__(self, model):
        super().__init__()
        self.module = model

    def forward(self, data, im_info, roidb=None):
        out = self.module(data[0], im_info[0], roidb)
        # its gather (nn/parallel/scatter_gather.py) turns numpy outputs into tensors
        return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in out.items()}


def _iou(a, b):
    """IoU matrix of continuous (x0, y0, x1, y1) boxes, numpy."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _match(ref_boxes, ref_classes, boxes, classes):
    """Greedy one-to-one matching by IoU (>= 0.5) within a class; pairs (i_ref, j, IoU)."""
    iou = _iou(ref_boxes, boxes) * (ref_classes[:, None] == classes[None, :])
    pairs = []
    while iou.size and iou.max() >= 0.5:
        i, j = np.unravel_index(iou.argmax(), iou.shape)
        pairs.append((int(i), int(j), float(iou[i, j])))
        iou[i, :], iou[:, j] = -1, -1
    return pairs


def _compare(rel, ours, masks):
    """Statistics of two detection sets of one image (continuous boxes)."""
    pairs = _match(rel["boxes"], rel["classes"], ours["boxes"], ours["classes"])
    st = {"release": len(rel["scores"]), "panet_d2": len(ours["scores"]), "matched": len(pairs)}
    if pairs:
        ious = np.array([p[2] for p in pairs])
        ds = np.array([abs(rel["scores"][i] - ours["scores"][j]) for i, j, _ in pairs])
        st.update(
            box_iou_mean=float(ious.mean()),
            box_iou_min=float(ious.min()),
            score_diff_mean=float(ds.mean()),
            score_diff_max=float(ds.max()),
        )
        if masks:
            m_ious = []
            for i, j, _ in pairs:
                a, b = rel["masks"][i], ours["masks"][j]
                union = np.logical_or(a, b).sum()
                m_ious.append(np.logical_and(a, b).sum() / union if union else 1.0)
            st.update(mask_iou_mean=float(np.mean(m_ious)), mask_iou_min=float(np.min(m_ious)))
    return st


def _proposal_agreement(rel_props, our_props):
    """For each release proposal (continuous), its best IoU among panet_d2's proposals."""
    if len(rel_props) == 0 or len(our_props) == 0:
        return {}
    best = _iou(rel_props, our_props).max(1)
    return {
        "proposals_release": len(rel_props),
        "proposals_panet_d2": len(our_props),
        "best_iou_mean": float(best.mean()),
        "best_iou_ge_0.95": float((best >= 0.95).mean()),
        "top100_best_iou_mean": float(best[:100].mean()),
    }


def release_test_path(model, cfg, im):
    """
    The release's whole test path (``core/test.py`` ``im_detect_all``) on a BGR uint8 image:
    ({"boxes" (N, 4) continuous (x1, y1, x2 + 1, y2 + 1), "scores", "classes" (0-based, no
    background), "rles" (COCO RLEs of the masks, or empty)}, its proposals (R, 4) continuous).
    """
    test = importlib.import_module("core.test")
    test.cfg = importlib.import_module("utils.blob").cfg = cfg
    wrapped = _DataParallelStandIn(model).eval()
    captured = {}
    rpn_forward = model.RPN.forward

    def rpn_capture(*args, **kwargs):
        ret = rpn_forward(*args, **kwargs)
        captured["rois"] = ret["rois"]
        return ret

    model.RPN.forward = rpn_capture
    try:
        with torch.no_grad():
            cls_boxes, cls_segms, _ = test.im_detect_all(wrapped, im)
    finally:
        del model.RPN.forward
    # inclusive pixel boxes -> continuous (x2 + 1, y2 + 1); class j -> j - 1
    rel = {"boxes": [], "scores": [], "classes": [], "rles": []}
    for j in range(1, len(cls_boxes)):
        for k, det in enumerate(cls_boxes[j]):
            rel["boxes"].append(det[:4] + np.array([0, 0, 1, 1], np.float32))
            rel["scores"].append(float(det[4]))
            rel["classes"].append(j - 1)
            if cls_segms is not None:
                rel["rles"].append(cls_segms[j][k])
    rles = rel.pop("rles")
    rel = {k: np.array(v) for k, v in rel.items()}
    rel["boxes"] = rel["boxes"].reshape(-1, 4).astype(np.float32)
    rel["rles"] = rles
    props = np.asarray(captured["rois"])[:, 1:5] + np.array([0, 0, 1, 1], np.float32)
    return rel, props


def run_end_to_end(config, model_builder, release, root, variant, images, settings):
    """
    The release's ``im_detect_all`` and panet_d2's ``DefaultPredictor`` on the same converted
    seeded weights (full R-50 widths: the release's model of the variant), per image and per
    panet_d2 setting (a name -> config options).
    """
    import tempfile

    import pycocotools.mask as mask_util

    sys.path.insert(0, root)
    from detectron2.engine import DefaultPredictor

    from panet_d2.config import load_config_file

    spec = importlib.util.spec_from_file_location(
        "convert_panet_release", os.path.join(root, "tools", "convert_panet_release.py")
    )
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)

    model = build_release_model(config, model_builder, release, variant)
    cfg = config.cfg
    weights = release_random_weights(key_shapes(model))
    model.load_state_dict(weights, strict=True)
    blob_utils = importlib.import_module("utils.blob")
    with tempfile.TemporaryDirectory() as tmp:  # the converted checkpoint, removed after
        ckpt = os.path.join(tmp, "converted.pth")
        torch.save({"model": converter.convert_release_state_dict(weights, variant)}, ckpt)
        results = {}
        for path in images:
            im = cv2_imread(os.path.join(root, path))
            rel, rel_props = release_test_path(model, cfg, im)
            rel["masks"] = np.array([mask_util.decode(m).astype(bool) for m in rel.pop("rles")])
            results[path] = {}
            for name, opts in settings.items():
                d2cfg = load_config_file(
                    os.path.join(root, "configs", converter.RELEASE_CONFIGS[variant]),
                    ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ckpt] + list(opts.get("opts", [])),
                )
                predictor = DefaultPredictor(d2cfg)
                props = {}
                hook = predictor.model.proposal_generator.register_forward_hook(
                    lambda m, i, o: props.update(boxes=o[0][0].proposal_boxes.tensor.numpy().copy())
                )
                if opts.get("padded_clip"):
                    _clip_proposals_to_padded_size(predictor)
                with _InclusiveRois() if opts.get("inclusive_rois") else contextlib.nullcontext():
                    if opts.get("release_resize"):
                        resized, _ = blob_utils.prep_im_for_blob(
                            im, np.zeros((1, 1, 3)), [cfg.TEST.SCALE], cfg.TEST.MAX_SIZE
                        )
                        inputs = {
                            "image": torch.as_tensor(resized[0].transpose(2, 0, 1).copy()),
                            "height": im.shape[0],
                            "width": im.shape[1],
                        }
                        with torch.no_grad():
                            inst = predictor.model([inputs])[0]["instances"].to("cpu")
                    else:
                        image = im.astype(np.float32) if opts.get("float_image") else im
                        inst = predictor(image)["instances"].to("cpu")
                hook.remove()
                ours = {
                    "boxes": inst.pred_boxes.tensor.numpy(),
                    "scores": inst.scores.numpy(),
                    "classes": inst.pred_classes.numpy(),
                }
                if inst.has("pred_masks"):
                    ours["masks"] = inst.pred_masks.numpy()
                st = _compare(rel, ours, bool(cfg.MODEL.MASK_ON))
                st.update(_proposal_agreement(rel_props, props.get("boxes", np.zeros((0, 4)))))
                results[path][name] = st
                print(variant, path, name, json.dumps(st))
    return results


# The test-path fixture (release_test_path.pt): the reduced widths with the mask branch at its
# released resolutions (14 x 14 RoIs, 28 x 28 masks), tested at a short side of 320 pixels (long
# side at most 640): both in-repo images are scaled down (by 0.75 and 0.889), so the rescaling of
# the detections to the image is part of what is compared.
TEST_PATH_OVERRIDES = tuple(
    (k, v) for k, v in REDUCED if not k.startswith(("MRCNN.R", "TEST."))
) + (
    ("MRCNN.ROI_XFORM_RESOLUTION", 14),
    ("MRCNN.RESOLUTION", 28),
    ("TEST.SCALE", 320),
    ("TEST.MAX_SIZE", 640),
)


def sample_images(root):
    folder = os.path.dirname(IMAGE)
    names = sorted(f for f in os.listdir(os.path.join(root, folder)) if f.endswith(".jpg"))
    return [os.path.join(folder, f) for f in names]


def _text(counts):
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def write_test_path_fixture(config, model_builder, release, root, out, commit):
    """
    ``release_test_path.pt``: per variant, the release's final detections (``im_detect_all``)
    and proposals on the in-repo COCO images, with the reduced model's seeded weights.
    """
    images = sample_images(root)
    doc = {"release_commit": commit, "seed": SEED, "images": images, "variants": {}}
    doc["release_overrides"] = [list(kv) for kv in TEST_PATH_OVERRIDES]
    doc["resnet_out_divisor"] = RESNET_OUT_DIVISOR
    for variant in VARIANTS:
        model = build_release_model(config, model_builder, release, variant, TEST_PATH_OVERRIDES)
        weights = release_random_weights(key_shapes(model))
        model.load_state_dict(weights, strict=True)
        entry = {"shapes": key_shapes(model), "weights_sha256": weights_digest(weights)}
        entry["images"] = {}
        for path in images:
            rel, props = release_test_path(model, config.cfg, cv2_imread(os.path.join(root, path)))
            entry["images"][path] = {
                "boxes": torch.from_numpy(rel["boxes"]),  # (N, 4) continuous
                "scores": torch.tensor(rel["scores"], dtype=torch.float32),
                "classes": torch.tensor(rel["classes"], dtype=torch.int64),
                "masks": [  # COCO RLEs at the image size (mask variant)
                    {"size": [int(v) for v in m["size"]], "counts": _text(m["counts"])}
                    for m in rel["rles"]
                ],
                "proposals": torch.from_numpy(props.astype(np.float32)),  # (R, 4) continuous
            }
        doc["variants"][variant] = entry
    torch.save(doc, os.path.join(out, "release_test_path.pt"))


# panet_d2 settings of the end-to-end comparison, each from "config" on adding to the one before:
# * "d2_anchors_offset_0": the release config with Detectron2's anchors (DefaultAnchorGenerator,
#   OFFSET 0), as it was before the end-to-end comparison;
# * "d2_anchors": Detectron2's anchor shapes, centred as the release's (OFFSET 0.5);
# * "config": the release config as it is (Detectron's quantised anchors, OFFSET 0.5),
#   DefaultPredictor on the uint8 image;
# * "float_image": the image as float32: Detectron2 then resizes it with torch's bilinear
#   interpolation, as the release does with cv2 on its float image (PIL on uint8 otherwise);
# * "release_resize" (diagnostic): the image resized by the release's own prep_im_for_blob (cv2
#   with one scale factor for a rounded size), given to the model with the original size;
# * "inclusive_rois" (diagnostic, not a config): the RoIs' x1, y1 minus 1 before RoIAlign,
#   as the release passes its inclusive boxes;
# * "padded_clip" (diagnostic): proposals clipped to the padded input, as the release's.
_D2_ANCHORS = ["MODEL.ANCHOR_GENERATOR.NAME", "DefaultAnchorGenerator"]
E2E_SETTINGS = {
    "d2_anchors_offset_0": {"opts": _D2_ANCHORS + ["MODEL.ANCHOR_GENERATOR.OFFSET", 0.0]},
    "d2_anchors": {"opts": _D2_ANCHORS},
    "config": {},
    "float_image": {"float_image": True},
    "release_resize": {"release_resize": True},
    "inclusive_rois": {"release_resize": True, "inclusive_rois": True},
    "padded_clip": {"release_resize": True, "inclusive_rois": True, "padded_clip": True},
}


def _clip_proposals_to_padded_size(predictor):
    """Diagnostic: the RPN clips its proposals to the padded input (a multiple of 32), as the
    release clips them to its blob's size (``im_info``), instead of to the resized image."""
    rpn = predictor.model.proposal_generator
    predict = rpn.predict_proposals

    def padded(anchors, logits, deltas, image_sizes):
        sizes = [(-(-h // 32) * 32, -(-w // 32) * 32) for h, w in image_sizes]
        proposals = predict(anchors, logits, deltas, sizes)
        for p, size in zip(proposals, image_sizes):  # the heads' clipping and rescaling: as before
            p._image_size = tuple(size)
        return proposals

    rpn.predict_proposals = padded


class _InclusiveRois:
    """Diagnostic: AFP's poolers get boxes with x1, y1 lowered by 1 (the release's inclusive
    boxes of the same pixels)."""

    def __enter__(self):
        from panet_d2.modeling import poolers as afp

        self.afp, self.orig = afp, afp.convert_boxes_to_pooler_format

        def inclusive(box_lists):
            rois = self.orig(box_lists)
            return rois - rois.new_tensor([0, 0, 0, 1, 1])

        afp.convert_boxes_to_pooler_format = inclusive
        return self

    def __exit__(self, *exc):
        self.afp.convert_boxes_to_pooler_format = self.orig
        return False


def cv2_imread(path):
    import cv2

    im = cv2.imread(path)
    if im is None:
        raise SystemExit("cannot read {}".format(path))
    return im


PROVENANCE = """# The authors' PANet release as a reference: provenance of this folder

Written by `tools/make_release_fixture.py` (this repository) from a checkout of the authors'
release, github.com/ShuLiu1993/PANet (MIT License, see `LICENSE.PANet-release`, copied from
the release), commit `{commit}`. No code of the release is in this repository; the generator
imports the release's `lib/` from the checkout and runs it on the CPU of current PyTorch
({torch}, torchvision {torchvision}, NumPy {numpy}), with stand-ins for its compiled parts
(RoIAlign: `torchvision.ops.roi_align(..., aligned=False)`, sampling ratio 2; NMS and box
overlaps with Detectron's "+1" rule in NumPy; RoIPool / RoICrop / multi-GPU DataParallel never
used) and shims for the APIs it was written against (`Variable(...).cuda()` kept on the CPU,
`yaml.load` with SafeLoader, NumPy's removed `np.float` / `np.int` aliases), in its own process.

Command:

    git clone https://github.com/ShuLiu1993/PANet /path/to/PANet   # commit {commit_short}
    python3 tools/make_release_fixture.py --release /path/to/PANet

## keys_det.json, keys_det_2fc.json, keys_mask.json

`state_dict()` names and shapes of the release's `Generalized_RCNN` built from its configs
`{det}`, `{det_2fc}`, `{mask}` (ResNet-50, 81 COCO classes): {counts} tensors. A release
checkpoint's `model` has exactly these.

## release_outputs.pt

`torch.load(path, weights_only=True)`: a dict with

* `release_commit`, `seed` ({seed}), `resnet_out_divisor` ({divisor}), `release_overrides`: the
  reduced-width models. They are the release's modules and structure (ResNet-50 blocks 3, 4, 6,
  3 with frozen affine BN, stride in the 1x1 conv; FPN with GN; the bottom-up path; the RPN; the
  variant's heads; 81 classes), with the ResNet stage outputs divided by {divisor} (stem 64,
  stages {stages}) and these release config keys set: {overrides}.
* `image`: (96, 128, 3) uint8 BGR, a crop of `{image}` (this repository) downscaled with
  cv2.INTER_AREA; `rois`: (8, 5) float32 rows (0, x0, y0, x1, y1) given to the heads.
* `anchors`: the RPN's cell anchors of each level `p2`..`p6` (its `generate_anchors`, float64
  (3, 4), inclusive pixel boxes around (s - 1) / 2; the anchor of cell (i, j) adds j * s, i * s).
* `variants[v]` for v in det, det_2fc, mask: `release_config`; `shapes` (the reduced model's
  state_dict names and shapes); `weights_sha256` of the weights, which are not stored: they are
  regenerated from the seed by `release_random_weights` of the generator (NumPy's legacy
  `RandomState`, whose streams are frozen; one stream per tensor from the seed and the tensor's
  name, so the variants share what their models share); `outputs`, what the release computed:
  `blob` (its `_get_blobs`: the image minus its pixel mean, TEST.SCALE 96, MAX_SIZE 128: no
  resize), `n2`..`n6` (`Conv_Body`), `rpn_logits_p2`..`p6` and `rpn_deltas_p2`..`p6` (the RPN's
  `rpn_cls_logits_fpn*`, `rpn_bbox_pred_fpn*`), `cls_prob` (R, 81) and `bbox_pred` (R, 324)
  (`Box_Head` + `Box_Outs` on the fixed RoIs, eval mode: softmax; background first), and for the
  mask model `mask_prob` (R, 81, 14, 14) (`mask_net` on the same RoIs, sigmoid). Equal outputs
  of the variants (the backbone and RPN) are stored once.

`tests/release/test_parity.py` regenerates the weights, checks their digest, converts them with
`tools/convert_panet_release.py`, loads them strictly into panet_d2 built from the release
configs with the matching reduced widths, and compares every output.

## release_test_path.pt

`torch.load(path, weights_only=True)`: the release's whole test path (`core/test.py`
`im_detect_all`) on the in-repo COCO images `{test_images}`, per variant, with a reduced-width model
(the keys above, but the mask branch at its released 14 x 14 RoIs and 28 x 28 masks) and its seeded
weights (`shapes`, `weights_sha256`; regenerated as above), tested at `TEST.SCALE` 320,
`TEST.MAX_SIZE` 640 (`release_overrides`: {test_overrides}). Per image: the final detections
(`boxes` (N, 4) as continuous boxes of the same pixels, x2 + 1 and y2 + 1 of the release's
inclusive boxes; `scores`; `classes`, 0-based without background; `masks`, COCO RLEs at the
image size, mask model) and the release's 1000 proposals (`proposals`, continuous, in the resized
image). `tests/release/test_test_path.py` runs panet_d2's `DefaultPredictor` on the converted
weights and compares.
"""


def write_provenance(release, out, commit, doc, root):
    import shutil

    import torchvision

    with open(os.path.join(out, "PROVENANCE.md"), "w") as f:
        f.write(
            PROVENANCE.format(
                commit=commit,
                commit_short=commit[:7],
                torch=torch.__version__,
                torchvision=torchvision.__version__,
                numpy=np.__version__,
                counts=" / ".join(
                    str(
                        len(json.load(open(os.path.join(out, "keys_{}.json".format(v))))["tensors"])
                    )
                    for v in VARIANTS
                ),
                seed=doc["seed"],
                divisor=RESNET_OUT_DIVISOR,
                stages=" / ".join(str(c // RESNET_OUT_DIVISOR) for c in (256, 512, 1024, 2048)),
                overrides=", ".join("`{}` {}".format(k, v) for k, v in REDUCED),
                image=IMAGE,
                test_images="`, `".join(sample_images(root)),
                test_overrides=", ".join("`{}` {}".format(k, v) for k, v in TEST_PATH_OVERRIDES),
                **{v: path for v, path in VARIANTS.items()},
            )
        )
    shutil.copyfile(os.path.join(release, "LICENSE"), os.path.join(out, "LICENSE.PANet-release"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="a checkout of ShuLiu1993/PANet")
    parser.add_argument("--out", default=DEFAULT_OUT, help="fixture folder")
    parser.add_argument("--keys-only", action="store_true", help="write only keys_*.json")
    parser.add_argument(
        "--e2e",
        metavar="JSON",
        help="instead of the fixture: run the release's whole test path and panet_d2's "
        "DefaultPredictor on the in-repo COCO images with the same seeded weights (full R-50), "
        "write the comparison to JSON",
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--settings", nargs="+", default=list(E2E_SETTINGS), choices=list(E2E_SETTINGS)
    )
    args = parser.parse_args(argv)
    release = os.path.abspath(args.release)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    config, model_builder = install_release(release)
    commit = release_commit(release)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    if args.e2e:
        images = sample_images(root)
        settings = {k: E2E_SETTINGS[k] for k in args.settings}
        doc = {"release_commit": commit, "seed": SEED, "settings": settings, "variants": {}}
        for variant in args.variants:
            doc["variants"][variant] = run_end_to_end(
                config, model_builder, release, root, variant, images, settings
            )
        with open(args.e2e, "w") as f:
            json.dump(doc, f, indent=1)
        return 0
    write_key_lists(config, model_builder, release, args.out, commit)
    if args.keys_only:
        return 0
    doc = write_fixture(config, model_builder, release, args.out, commit, root)
    write_test_path_fixture(config, model_builder, release, root, args.out, commit)
    write_provenance(release, args.out, commit, doc, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
