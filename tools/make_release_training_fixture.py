#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Record one training step of the authors' PANet release (github:ShuLiu1993/PANet, MIT) as the
reference of ``tests/release/test_training.py``; the sibling of ``make_release_fixture.py``, whose
stand-ins (RoIAlign, NMS, box overlaps, old APIs) it reuses, in its own process only.

It runs the release's own training code on the CPU: its dataset and roidb code
(``datasets/json_dataset.py``, ``datasets/roidb.py``), its data loader (``roi_data/loader.py``:
``get_minibatch``, RPN labels and targets, padding), its model in training mode (proposals, RoI
sampling, box and mask targets in ``roi_data/fast_rcnn.py`` and ``mask_rcnn.py``, losses), one
backward, the optimizer grouping and the learning-rate loop of ``tools/train_net_step.py``
(executed from the checkout), and its layers' initialisation. Randomness is injected, not
removed: what the release sampled is recorded, and the test gives it to panet_d2.

Usage::

    python3 tools/make_release_training_fixture.py --release /path/to/PANet

What it writes is described in ``PROVENANCE_TRAINING`` below (and in the fixture folder).
"""

import argparse
import contextlib
import importlib.util
import json
import os
import pickle
import sys
import textwrap
import types
import zlib
from unittest import mock

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _sibling(name):
    spec = importlib.util.spec_from_file_location("panet_tool_" + name, os.path.join(HERE, name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mrf = _sibling("make_release_fixture.py")

DEFAULT_OUT = os.path.join(ROOT, "tests", "fixtures", "panet_release", "training")
DATASET = "panet_d2_release_training"
# The two in-repo COCO images, resized to a short side of SHORT pixels (cv2.INTER_AREA) and saved
# as PNG: both sides read the same pixels at scale 1 (TRAIN.SCALES = (SHORT,)), so no resize.
SHORT = 160
MAX_SIZE = 288
SAMPLE = os.path.join("assets", "coco_panoptic_sample")
# The reduced widths of the inference fixture; the mask branch at the released resolutions
# (14 x 14 RoIs, 28 x 28 targets); the training input.
TRAIN_OVERRIDES = tuple(
    (k, v) for k, v in mrf.REDUCED if not k.startswith(("MRCNN.R", "TEST."))
) + (
    ("TRAIN.SCALES", (SHORT,)),
    ("TRAIN.MAX_SIZE", MAX_SIZE),
    ("TRAIN.IMS_PER_BATCH", 2),
    ("TRAIN.USE_FLIPPED", False),
)
RPN_SEED, ROI_SEED = 7, 11
# Gradients and initial values are stored at GRAD_SAMPLES entries of each tensor (all of a smaller
# one), chosen by sample_indices from the tensor's panet_d2 name.
GRAD_SAMPLES = 256
INIT_SEEDS = 6
# The reference step runs in float64 (weights, blobs, forward, backward, SGD update): in float32
# the rounding of either side moves some gradients by up to 4e-3 of their largest entry
# (docs/release_parity.md, Training), which would hide a real difference of that size.
DTYPE = torch.float64
# Iterations at which the learning rate is compared (the release's full schedules).
LR_ITERS = (0, 1, 2, 250, 498, 499, 500, 501)


def sample_indices(name, numel, k=GRAD_SAMPLES):
    """Flat indices of a tensor's stored entries: all, or k chosen by the name's CRC32."""
    if numel <= k:
        return np.arange(numel)
    rs = np.random.RandomState(zlib.crc32(name.encode()))
    return np.sort(rs.choice(numel, size=k, replace=False))


def sampled(name, t):
    flat = t.detach().reshape(-1)
    return flat[torch.from_numpy(sample_indices(name, flat.numel()))].clone()


# -------------------------------------------------------------------------------------------------
# The training images and their annotations (COCO instances JSON), from the panoptic ground truth
# -------------------------------------------------------------------------------------------------
def _polygons(mask, sx, sy):
    import cv2

    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    polys = []
    for c in contours:
        c = c.reshape(-1, 2).astype(np.float64)
        if len(c) >= 3:
            c = c * [sx, sy]
            polys.append([round(float(v), 2) for v in c.reshape(-1)])
    return polys


def write_training_images(root, out):
    """
    The two COCO images at a short side of SHORT pixels (PNG) and ``instances.json``: every thing
    segment of the panoptic ground truth, a polygon (its outer contours, scaled) or, for a crowd
    region, an RLE of its resized mask; COCO's 80 thing categories.
    """
    import cv2
    import pycocotools.mask as mask_util

    with open(os.path.join(root, SAMPLE, "panoptic_val2017_sample.json")) as f:
        pan = json.load(f)
    cats = [c for c in pan["categories"] if c.get("isthing")]
    thing = {c["id"] for c in cats}
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    doc = {"images": [], "annotations": [], "categories": cats}
    for image_id, (img, ann) in enumerate(zip(pan["images"], pan["annotations"]), start=1):
        im = cv2.imread(os.path.join(root, SAMPLE, "images", img["file_name"]))
        h, w = im.shape[:2]
        th, tw = SHORT, int(round(w * SHORT / h))
        sx, sy = tw / w, th / h
        name = img["file_name"].replace(".jpg", ".png")
        small = cv2.resize(im, (tw, th), interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.path.join(out, "images", name), small)
        doc["images"].append({"id": image_id, "file_name": name, "height": th, "width": tw})
        rgb = cv2.imread(os.path.join(root, SAMPLE, "panoptic", ann["file_name"]))[:, :, ::-1]
        rgb = rgb.astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        for seg in ann["segments_info"]:
            if seg["category_id"] not in thing:
                continue
            mask = ids == seg["id"]
            x, y, bw, bh = seg["bbox"]
            a = {
                "id": len(doc["annotations"]) + 1,
                "image_id": image_id,
                "category_id": seg["category_id"],
                "iscrowd": seg["iscrowd"],
                "bbox": [round(x * sx, 2), round(y * sy, 2), round(bw * sx, 2), round(bh * sy, 2)],
                "area": round(seg["area"] * sx * sy, 2),
            }
            if seg["iscrowd"]:
                m = cv2.resize(mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
                rle = mask_util.encode(np.asfortranarray(m))
                a["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            else:
                a["segmentation"] = _polygons(mask, sx, sy)
                if not a["segmentation"]:
                    continue
            doc["annotations"].append(a)
    with open(os.path.join(out, "instances.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    return doc


# -------------------------------------------------------------------------------------------------
# The release's training path, with injection points
# -------------------------------------------------------------------------------------------------
def install_training_stand_ins():
    """What the release's training code needs beyond make_release_fixture's stand-ins."""
    if "torch._six" not in sys.modules:  # PyTorch 0.4's module, imported by roi_data/loader.py
        mrf._module("torch._six", int_classes=int)
    blob = importlib.import_module("utils.blob")
    for name in ("modeling.fast_rcnn_heads", "modeling.mask_rcnn_heads", "modeling.FPN"):
        mod = importlib.import_module(name)  # their losses: Variable(...).cuda(device_id)
        if hasattr(mod, "Variable"):
            mod.Variable = mrf._variable
    # np.fromstring's binary mode is gone from NumPy 2: the same bytes through np.frombuffer
    blob.serialize = lambda obj: np.frombuffer(pickle.dumps(obj), np.uint8).astype(np.float32)


def point_cfg(config):
    """The release's modules hold ``cfg`` by import: point every one at the current config."""
    for name in list(sys.modules):
        mod = sys.modules[name]
        if name.split(".")[0] in ("modeling", "utils", "core", "roi_data", "nn", "datasets"):
            if getattr(mod, "cfg", None) is not None:
                mod.cfg = config.cfg


class _SampleAll:
    """RPN sampler that samples nothing away: the release's full anchor labels."""

    @staticmethod
    def choice(a, size=None, replace=True):
        return np.asarray(a)[:0]

    @staticmethod
    def randint(n, size=None):
        return np.arange(n)


class _WithoutReplacement:
    """The release's RPN sampler, drawing its negatives without replacement."""

    def __init__(self, seed):
        self.rs = np.random.RandomState(seed)

    def choice(self, a, size=None, replace=True):
        return self.rs.choice(a, size=size, replace=False)

    def randint(self, n, size=None):
        return self.rs.choice(n, size=size, replace=False)


@contextlib.contextmanager
def _crowd_not_a_label():
    """The release labels proposals against crowd boxes too (add_proposals with crowd_thresh 0);
    this hides the crowd boxes from that labelling only, as Detectron2 has no crowd boxes."""
    jd = importlib.import_module("datasets.json_dataset")
    merge = jd._merge_proposal_boxes_into_roidb

    def merge_without_crowd(roidb, box_list):
        saved = [e["gt_classes"].copy() for e in roidb]
        for e in roidb:
            e["gt_classes"] = np.where(e["is_crowd"] == 1, 0, e["gt_classes"])
        merge(roidb, box_list)
        for e, s in zip(roidb, saved):
            e["gt_classes"][: len(s)] = s

    with mock.patch.object(jd, "_merge_proposal_boxes_into_roidb", merge_without_crowd):
        yield


def release_roidb(config, out):
    catalog = importlib.import_module("datasets.dataset_catalog")
    catalog.DATASETS[DATASET] = {
        catalog.IM_DIR: os.path.join(out, "images"),
        catalog.ANN_FN: os.path.join(out, "instances.json"),
    }
    roidb_utils = importlib.import_module("datasets.roidb")
    point_cfg(config)
    roidb, ratios, _ = roidb_utils.combined_roidb_for_training((DATASET,), ())
    return roidb, ratios


def release_batch(roidb, ratios, rpn_sampler):
    """The release's loader: one ``__getitem__`` per image, then ``collate_minibatch``."""
    loader = importlib.import_module("roi_data.loader")
    rpn = importlib.import_module("roi_data.rpn")
    dataset = loader.RoiDataLoader(roidb, mrf.NUM_CLASSES, training=True)
    with mock.patch.object(rpn, "npr", rpn_sampler):
        items = [dataset[(i, ratios[i])] for i in range(len(roidb))]
    batch = {k: v[0] for k, v in loader.collate_minibatch(items).items()}
    return {k: _as_dtype(v) for k, v in batch.items()}


def _as_dtype(value):
    if torch.is_tensor(value) and value.is_floating_point():
        return value.to(DTYPE)
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(np.float64 if DTYPE == torch.float64 else np.float32)
    return value


@contextlib.contextmanager
def _numpy_blobs_in_dtype():
    """The release's heads turn their NumPy float32 blobs (RoIs, targets, weights) into tensors
    with ``torch.from_numpy``; in this process those tensors are DTYPE while the step runs.
    """
    from_numpy = torch.from_numpy

    def in_dtype(array):
        t = from_numpy(array)
        return t.to(DTYPE) if t.is_floating_point() else t

    torch.from_numpy = in_dtype
    try:
        yield
    finally:
        torch.from_numpy = from_numpy


def release_step(model, batch, crowd_labels):
    """Training forward, losses and backward; returns (rpn_ret, losses, grads)."""
    fast_rcnn = importlib.import_module("roi_data.fast_rcnn")
    captured = {}
    forward = model.RPN.forward

    def capture(*args, **kwargs):
        ret = forward(*args, **kwargs)
        captured.update(ret)
        return ret

    model.zero_grad()
    ctx = contextlib.nullcontext() if crowd_labels else _crowd_not_a_label()
    with mock.patch.object(model.RPN, "forward", capture), ctx, mock.patch.object(
        fast_rcnn, "npr", np.random.RandomState(ROI_SEED)
    ), _numpy_blobs_in_dtype():
        out = model(**batch)
    losses = {k: v.sum() for k, v in out["losses"].items()}
    sum(losses.values()).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return captured, losses, grads


def loss_terms(losses):
    """The release's per-level RPN losses summed (Detectron2 reports one of each)."""
    rpn_cls = sum(v for k, v in losses.items() if k.startswith("loss_rpn_cls"))
    rpn_box = sum(v for k, v in losses.items() if k.startswith("loss_rpn_bbox"))
    return {
        "loss_rpn_cls": float(rpn_cls),
        "loss_rpn_loc": float(rpn_box),
        "loss_cls": float(losses["loss_cls"]),
        "loss_box_reg": float(losses["loss_bbox"]),
        **({"loss_mask": float(losses["loss_mask"])} if "loss_mask" in losses else {}),
    }


def rpn_labels(batch, cfg):
    """{level: (N, A, H, W) int8} of the RPN label blobs, cut to the feature map sizes."""
    out = {}
    H, W = batch["data"].shape[-2:]
    for lvl in range(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL + 1):
        s = 2**lvl
        h, w = -(-H // s), -(-W // s)
        lab = batch["rpn_labels_int32_wide_fpn%d" % lvl][:, :, :h, :w]
        out["p%d" % lvl] = torch.as_tensor(np.asarray(lab)).to(torch.int8)
    return out


def rpn_targets(batch, cfg):
    """{level: (P, 4)} regression targets of the RPN blobs at the positive anchors, in the order
    of ``rpn_labels(batch) == 1``."""
    out = {}
    H, W = batch["data"].shape[-2:]
    for lvl in range(cfg.FPN.RPN_MIN_LEVEL, cfg.FPN.RPN_MAX_LEVEL + 1):
        s = 2**lvl
        h, w = -(-H // s), -(-W // s)
        t = torch.as_tensor(np.asarray(batch["rpn_bbox_targets_wide_fpn%d" % lvl]))[:, :, :h, :w]
        t = t.reshape(t.shape[0], -1, 4, h, w).permute(0, 1, 3, 4, 2)  # (N, A, H, W, 4)
        lab = torch.as_tensor(np.asarray(batch["rpn_labels_int32_wide_fpn%d" % lvl]))
        out["p%d" % lvl] = t[lab[:, :, :h, :w] == 1].to(DTYPE).clone()  # (P, 4)
    return out


def head_blobs(ret, mask_on):
    """The sampled RoIs and their targets as the release computed them."""
    labels = torch.as_tensor(np.asarray(ret["labels_int32"])).long()
    R = labels.numel()
    targets = torch.as_tensor(np.asarray(ret["bbox_targets"])).to(DTYPE).view(R, -1, 4)
    doc = {
        "rois": torch.as_tensor(np.asarray(ret["rois"])).to(DTYPE),  # (R, 5) inclusive boxes
        "labels": labels,  # 0 = background, k = COCO contiguous class k
        "box_targets": targets[torch.arange(R), labels],  # (R, 4) (zero for background)
    }
    if mask_on:
        M2 = ret["masks_int32"].shape[1] // mrf.NUM_CLASSES
        masks = torch.as_tensor(np.asarray(ret["masks_int32"])).view(-1, mrf.NUM_CLASSES, M2)
        fg = labels[labels > 0]
        side = int(round(M2**0.5))
        doc["mask_targets"] = masks[torch.arange(len(fg)), fg].view(-1, side, side).to(torch.int8)
        doc["mask_rois"] = torch.as_tensor(np.asarray(ret["mask_rois"])).to(DTYPE)
    return doc


# -------------------------------------------------------------------------------------------------
# The optimizer and the learning rate: tools/train_net_step.py's own lines, executed
# -------------------------------------------------------------------------------------------------
def _source_block(release, start, end, include_end):
    """The lines of tools/train_net_step.py from the one containing ``start`` to ``end``."""
    with open(os.path.join(release, "tools", "train_net_step.py")) as f:
        lines = f.read().split("\n")
    i = next(k for k, ln in enumerate(lines) if start in ln)
    j = next(k for k in range(i + 1, len(lines)) if end in lines[k])
    return textwrap.dedent("\n".join(lines[i : j + 1 if include_end else j]))


def release_optimizer(release, model, cfg):
    """train_net_step.py's parameter groups and SGD (its lines between '### Optimizer ###' and
    '### Load checkpoint'), on ``model``."""
    ns = {"maskRCNN": model, "cfg": cfg, "nn": torch.nn, "torch": torch}
    exec(_source_block(release, "### Optimizer ###", "### Load checkpoint", False), ns)
    return ns["optimizer"], ns["param_names"]


def release_lr_loop(release, cfg, optimizer, iters):
    """
    train_net_step.py's warm-up and decay lines, executed for every iteration up to the largest of
    ``iters``; returns {iteration: (lr of the weights, lr of the biases, momentum buffer scale)}.
    The momentum buffers start at 1: their value shows the release's rescaling at the steps.
    """
    net_utils = importlib.import_module("utils.net")
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.ones_like(p)
    init = _source_block(release, "decay_steps_ind = None", "decay_steps_ind = len(", True)
    body = compile(_source_block(release, "# Warm up", "decay_steps_ind += 1", True), "lr", "exec")
    ns = {"cfg": cfg, "args": types.SimpleNamespace(start_step=0), "optimizer": optimizer}
    ns.update(net_utils=net_utils, logger=types.SimpleNamespace(info=lambda *a: None), lr=0.0)
    exec(init, ns)
    out, wanted = {}, set(iters)
    p0 = optimizer.param_groups[0]["params"][0]
    for step in range(max(iters) + 1):
        ns["step"] = step
        exec(body, ns)
        if step in wanted:
            buf = float(optimizer.state[p0]["momentum_buffer"].reshape(-1)[0])
            out[step] = (optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"], buf)
    return out


def lr_iterations(cfg):
    its = set(LR_ITERS) | {cfg.SOLVER.MAX_ITER - 1}
    for s in cfg.SOLVER.STEPS[1:]:
        its |= {s - 1, s, s + 1}
    return sorted(its)


# -------------------------------------------------------------------------------------------------
# Names: the release's tensors as panet_d2's (tools/convert_panet_release.py)
# -------------------------------------------------------------------------------------------------
def to_panet(converter, variant, weights, values):
    """``values`` (some release names) converted to panet_d2 names with the converter; returns
    {panet_d2 name: tensor} for the converted tensors that come from ``values`` only."""
    full = {k: values.get(k, torch.zeros_like(v)) for k, v in weights.items()}
    marker = {k: torch.full_like(v, 1.0 if k in values else 0.0) for k, v in weights.items()}
    conv = converter.convert_release_state_dict(full, variant)
    mark = converter.convert_release_state_dict(marker, variant)
    return {k: v for k, v in conv.items() if k in mark and bool((mark[k] == 1).all())}


def init_statistics(model_builder, converter, variant):
    """Per panet_d2 tensor outside the ImageNet backbone: mean and std of its initial values in
    each of INIT_SEEDS release models (its modules' own initialisation)."""
    stats = {}
    for seed in range(INIT_SEEDS):
        torch.manual_seed(seed)
        np.random.seed(seed)
        model = model_builder.Generalized_RCNN()
        state = {k: v for k, v in model.state_dict().items()}
        params = {k: state[k] for k, _ in model.named_parameters()}
        for name, t in to_panet(converter, variant, state, params).items():
            if name.startswith("backbone.bottom_up."):
                continue
            t = t.double()
            stats.setdefault(name, []).append((t.mean().item(), t.std().item(), t.numel()))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()}


# -------------------------------------------------------------------------------------------------
# One variant
# -------------------------------------------------------------------------------------------------
def run_variant(release, config, model_builder, converter, variant, out):
    model = mrf.build_release_model(config, model_builder, release, variant, TRAIN_OVERRIDES)
    cfg = config.cfg
    point_cfg(config)
    weights = mrf.release_random_weights(mrf.key_shapes(model))
    model.load_state_dict(weights, strict=True)
    model.to(DTYPE).train()
    weights = {k: v.to(DTYPE) for k, v in weights.items()}  # as loaded (the digest is float32's)
    roidb, ratios = release_roidb(config, out)
    mask_on = bool(cfg.MODEL.MASK_ON)

    full = release_batch(roidb, ratios, _SampleAll())
    batch = release_batch(roidb, ratios, _WithoutReplacement(RPN_SEED))
    # Effects, on the release's side, of what the comparison takes out
    with_replacement = release_batch(roidb, ratios, np.random.RandomState(RPN_SEED))
    _, losses_repl, _ = release_step(model, with_replacement, crowd_labels=False)
    ret_crowd, losses_crowd, _ = release_step(model, batch, crowd_labels=True)
    ret, losses, grads = release_step(model, batch, crowd_labels=False)  # the reference

    trained = to_panet(converter, variant, weights, grads)
    doc = {
        "release_config": mrf.VARIANTS[variant],
        "shapes": mrf.key_shapes(model),
        "weights_sha256": mrf.weights_digest(weights),
        "dtype": str(DTYPE).replace("torch.", ""),
        "rpn_labels_all": rpn_labels(full, cfg),
        "rpn_labels": rpn_labels(batch, cfg),
        "rpn_targets": rpn_targets(batch, cfg),  # at the positive anchors
        "heads": head_blobs(ret, mask_on),
        "losses": loss_terms(losses),
        "grads": {k: sampled(k, v) for k, v in trained.items()},
        "grad_max": {k: float(v.abs().max()) for k, v in trained.items()},
        "grad_norm": {k: float(v.norm()) for k, v in trained.items()},
        "effects": {
            "rpn_with_replacement": {
                "losses": loss_terms(losses_repl),
                "sampled_anchors_per_image": [
                    int(sum(int((v[i] >= 0).sum()) for v in rpn_labels(b, cfg).values()))
                    for b in (with_replacement,)
                    for i in range(2)
                ],
            },
            "crowd_labels": {
                "losses": loss_terms(losses_crowd),
                "fg_rois": int((np.asarray(ret_crowd["labels_int32"]) > 0).sum()),
                "fg_rois_without": int((np.asarray(ret["labels_int32"]) > 0).sum()),
            },
        },
    }
    doc["optimizer"] = optimizer_doc(release, model, cfg, (converter, variant), weights)
    doc["sgd_update"] = release_sgd_update(
        release, model, cfg, (converter, variant), weights, batch
    )
    doc["init"] = init_statistics(model_builder, converter, variant)
    return doc


def optimizer_doc(release, model, cfg, naming, weights):
    """train_net_step.py's groups (per panet_d2 tensor: lr factor, weight decay), momentum, learning
    rate schedule and solver settings. ``naming``: (converter, variant)."""
    converter, variant = naming
    optimizer, _ = release_optimizer(release, model, cfg)
    net_utils = importlib.import_module("utils.net")
    net_utils.update_learning_rate(optimizer, 0.0, cfg.SOLVER.BASE_LR)  # the groups' factors
    groups = {}
    for g in optimizer.param_groups:
        ids = {id(p) for p in g["params"]}
        for k, p in model.named_parameters():
            if id(p) in ids:
                groups[k] = (g["lr"], g["weight_decay"])
    schedule = release_lr_loop(release, cfg, optimizer, lr_iterations(cfg))
    base = cfg.SOLVER.BASE_LR
    lr = {k: torch.full_like(weights[k], g[0] / base) for k, g in groups.items()}
    wd = {k: torch.full_like(weights[k], g[1]) for k, g in groups.items()}
    lr, wd = (to_panet(converter, variant, weights, d) for d in (lr, wd))
    return {  # per panet_d2 tensor: (lr factor, weight decay)
        "groups": {k: torch.tensor([lr[k].reshape(-1)[0], wd[k].reshape(-1)[0]]) for k in lr},
        "momentum": cfg.SOLVER.MOMENTUM,
        "schedule": {it: torch.tensor(v, dtype=torch.float64) for it, v in schedule.items()},
        "solver": {
            "BASE_LR": base,
            "STEPS": list(cfg.SOLVER.STEPS),
            "MAX_ITER": cfg.SOLVER.MAX_ITER,
            "WARM_UP_ITERS": cfg.SOLVER.WARM_UP_ITERS,
            "WARM_UP_FACTOR": cfg.SOLVER.WARM_UP_FACTOR,
            "SCALE_MOMENTUM": cfg.SOLVER.SCALE_MOMENTUM,
        },
    }


def release_sgd_update(release, model, cfg, naming, weights, batch):
    """One SGD step of the release's optimizer at iteration 0 (its warm-up learning rate), from
    the weights and the reference gradients of ``batch``; the change of every trained tensor
    (sampled). ``naming``: (converter, variant)."""
    converter, variant = naming
    model.load_state_dict(weights, strict=True)
    _, _, grads = release_step(model, batch, crowd_labels=False)
    optimizer, _ = release_optimizer(release, model, cfg)
    net_utils = importlib.import_module("utils.net")
    warm = cfg.SOLVER.WARM_UP_FACTOR if cfg.SOLVER.WARM_UP_ITERS > 0 else 1.0
    net_utils.update_learning_rate(optimizer, 0.0, cfg.SOLVER.BASE_LR * warm)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer.step()
    delta = {k: p.detach() - before[k] for k, p in model.named_parameters() if k in grads}
    model.load_state_dict(weights, strict=True)
    return {
        k: sampled(k, v)[:64].clone()
        for k, v in to_panet(converter, variant, weights, delta).items()
    }


def write_provenance(out, commit):
    import torchvision

    with open(os.path.join(out, "PROVENANCE.md"), "w") as f:
        f.write(
            PROVENANCE_TRAINING.format(
                commit=commit,
                torch=torch.__version__,
                torchvision=torchvision.__version__,
                numpy=np.__version__,
                overrides=", ".join("`{}` {}".format(k, v) for k, v in TRAIN_OVERRIDES),
                short=SHORT,
                rpn_seed=RPN_SEED,
                roi_seed=ROI_SEED,
                samples=GRAD_SAMPLES,
                seeds=INIT_SEEDS,
                seeds_minus=INIT_SEEDS - 1,
            )
        )


PROVENANCE_TRAINING = """# One training step of the authors' PANet release: provenance

Written by `tools/make_release_training_fixture.py` from a checkout of the authors' release,
github.com/ShuLiu1993/PANet (MIT License, see `../LICENSE.PANet-release`), commit `{commit}`, on
the CPU of PyTorch {torch} (torchvision {torchvision}, NumPy {numpy}), with the stand-ins of
`tools/make_release_fixture.py` and, for training, `torch._six` (PyTorch 0.4) and `np.frombuffer`
for the loader's `np.fromstring`. No code of the release is in this repository.

    python3 tools/make_release_training_fixture.py --release /path/to/PANet

* `images/*.png`, `instances.json`: the two in-repo COCO val2017 images
  (`assets/coco_panoptic_sample`) at a short side of {short} pixels (cv2.INTER_AREA), and every
  thing segment of their panoptic ground truth as a COCO instance: the outer contours as polygons
  (scaled), crowd regions as RLE; COCO's 80 thing categories. Both sides read these at scale 1.
* `release_training.pt` (`torch.load(weights_only=True)`), per variant (det, det_2fc, mask): the
  reduced-width release model of `../release_outputs.pt` with the mask branch at its released
  resolutions (release config keys: {overrides}), its seeded weights (regenerated, SHA-256
  checked), and what the release computed for one batch of the two images, in float64 (the
  weights, blobs, forward, backward and SGD update; `dtype`):
  - `rpn_labels_all`: its anchor labels before sampling (its sampler asked for everything);
    `rpn_labels`, `rpn_targets`: the sampled labels (seed {rpn_seed}, negatives drawn without
    replacement) per level (N, A, H, W), and the regression targets at the positive anchors (P, 4);
  - `heads`: its sampled RoIs (seed {roi_seed}; inclusive pixel boxes), their labels, box
    regression targets and 28 x 28 mask targets, with crowd boxes hidden from the RoI labelling;
  - `losses`; `grads`, `grad_max`, `grad_norm`: the gradient of every trained tensor under
    panet_d2's name (converted by `tools/convert_panet_release.py`), at {samples} entries each
    (all of a smaller tensor; indices from the name, `sample_indices`), its largest magnitude and
    norm;
  - `optimizer`: per tensor the learning-rate factor and weight decay of train_net_step.py's
    groups, its learning rate (weights, biases) and momentum buffer scale at the warm-up and step
    boundaries of the variant's full schedule; `sgd_update`: one SGD step from the weights;
  - `init`: mean, std and size of every tensor outside the ImageNet backbone in {seeds} freshly
    built release models (seeds 0..{seeds_minus});
  - `effects`: the release's losses with its own RPN sampler (with replacement) and with crowd
    boxes in the RoI labelling, each on the same batch.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="a checkout of ShuLiu1993/PANet")
    parser.add_argument("--out", default=DEFAULT_OUT, help="fixture folder")
    parser.add_argument("--variants", nargs="+", default=list(mrf.VARIANTS))
    args = parser.parse_args(argv)
    release = os.path.abspath(args.release)
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    config, model_builder = mrf.install_release(release)
    mrf._scaled_resnet(importlib.import_module("modeling.ResNet"))
    install_training_stand_ins()
    converter = _sibling("convert_panet_release.py")
    write_training_images(ROOT, args.out)
    commit = mrf.release_commit(release)
    doc = {"release_commit": commit, "overrides": [list(kv) for kv in TRAIN_OVERRIDES]}
    doc["variants"] = {}
    for variant in args.variants:
        doc["variants"][variant] = run_variant(
            release, config, model_builder, converter, variant, args.out
        )
        print(variant, json.dumps(doc["variants"][variant]["losses"]))
    path = os.path.join(args.out, "release_training.pt")
    torch.save(doc, path)
    print("wrote {} ({:.0f} kB)".format(path, os.path.getsize(path) / 1024))
    write_provenance(args.out, commit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
