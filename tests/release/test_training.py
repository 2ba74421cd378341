# -*- coding: utf-8 -*-
"""
One training step of the release configs against the authors' release's own training code
(``tests/fixtures/panet_release/training``, written by ``tools/make_release_training_fixture.py``).

The release sampled its anchors and RoIs; the harness gives panet_d2 the same samples (its RPN's
and ROI heads' samplers patched here, nothing in panet_d2) and emulates the "+1" pixel-box
convention where the release pools and rasterises an inclusive box (docs/release_parity.md,
Training). Then the targets, each loss, the gradient of every trained tensor, the optimizer's
groups and schedule, one SGD update and the initialisation are compared.
"""

import contextlib
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import roi_heads as d2_roi_heads
from detectron2.structures import Boxes, Instances, PolygonMasks, pairwise_iou
from detectron2.utils.events import EventStorage

from panet_d2.engine.trainer import MomentumRescale

from ..common import ROOT, load_script, panet_cfg

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "panet_release", "training")
VARIANTS = ("det", "det_2fc", "mask")
LOSS_RTOL = 1e-4  # each loss term, relative
GRAD_RTOL = 1e-4  # each gradient entry, relative to the tensor's largest release gradient
TARGET_ATOL = 1e-4  # regression targets up to about 10 (float32 arithmetic of one formula)
PLUS_ONE = torch.tensor([0.0, 0.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def tools():
    names = ("convert_panet_release", "make_release_fixture", "make_release_training_fixture")
    return {n: load_script(os.path.join("tools", n + ".py"), "panet_tool_" + n) for n in names}


@pytest.fixture(scope="module")
def doc():
    return torch.load(os.path.join(FIXTURE, "release_training.pt"), weights_only=True)


def training_cfg(tools, doc, variant):
    """The variant's release config with the fixture's widths and input (scale 1, no flip)."""
    rel = dict((k, v) for k, v in doc["overrides"])
    mrf = tools["make_release_fixture"]
    m = rel["MRCNN.DIM_REDUCED"]
    opts = [
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 256 // mrf.RESNET_OUT_DIVISOR,
        "MODEL.RESNETS.WIDTH_PER_GROUP", rel["RESNETS.WIDTH_PER_GROUP"],
        "MODEL.FPN.OUT_CHANNELS", rel["FPN.DIM"],
        "MODEL.ROI_BOX_HEAD.CONV_DIM", rel["FAST_RCNN.CONV_HEAD_DIM"],
        "MODEL.ROI_BOX_HEAD.FC_DIM", rel["FAST_RCNN.MLP_HEAD_DIM"],
        "MODEL.ROI_MASK_HEAD.CONV_DIM", m,
        "MODEL.FF.CONV_DIMS", [m, m // 2],
        "INPUT.MIN_SIZE_TRAIN", tuple(rel["TRAIN.SCALES"]),
        "INPUT.MAX_SIZE_TRAIN", rel["TRAIN.MAX_SIZE"],
        "INPUT.RANDOM_FLIP", "none",
        # the release's sampled RoIs are given, its gt boxes among them
        "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", False,
    ]  # fmt: skip
    converter = tools["convert_panet_release"]
    return panet_cfg(converter.RELEASE_CONFIGS[variant], small=False, opts=opts)


def build_loaded(tools, doc, variant):
    entry = doc["variants"][variant]
    mrf = tools["make_release_fixture"]
    weights = mrf.release_random_weights(entry["shapes"], mrf.SEED)
    assert mrf.weights_digest(weights) == entry["weights_sha256"], "weights not regenerated"
    cfg = training_cfg(tools, doc, variant)
    model = build_model(cfg)
    converted = tools["convert_panet_release"].convert_release_state_dict(weights, variant)
    incompatible = DetectionCheckpointer(model)._load_model({"model": converted})
    assert not (incompatible.missing_keys or incompatible.unexpected_keys)
    model.to(fixture_dtype(entry)).train()  # the release's step ran in this precision
    return cfg, model


def fixture_dtype(entry):
    return getattr(torch, entry["dtype"])


def batched_inputs(cfg):
    """Detectron2's own data path: load_coco_json and DatasetMapper on the fixture's files."""
    dicts = load_coco_json(
        os.path.join(FIXTURE, "instances.json"),
        os.path.join(FIXTURE, "images"),
        dataset_name="panet_release_training_fixture",
    )
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in dicts]


# -------------------------------------------------------------------------------------------------
# Injection: the release's samples (harness patches, panet_d2 unchanged)
# -------------------------------------------------------------------------------------------------
def per_image_labels(labels_by_level):
    """The release's (N, A, H, W) label blobs of each level in Detectron2's anchor order
    (per level H, W, A), concatenated: (N, sum HWA)."""
    return torch.cat([v.permute(0, 2, 3, 1).reshape(v.shape[0], -1) for v in labels_by_level], 1)


@contextlib.contextmanager
def rpn_samples(rpn, labels):
    """The RPN's sampler returns the release's sampled labels of each image in turn (``labels``:
    (N, anchors)); None: the labels before sampling are kept (nothing sampled away). Its proposal
    step is skipped: the heads get the release's sampled RoIs."""
    images = iter(range(10**6))

    def inject(label):
        return label if labels is None else labels[next(images)].to(label.dtype)

    rpn._subsample_labels = inject
    rpn.predict_proposals = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del rpn._subsample_labels, rpn.predict_proposals


@contextlib.contextmanager
def keep_given_rois():
    """The ROI heads keep every given proposal, foreground first (the release's order)."""

    def keep_all(labels, num_samples, positive_fraction, bg_label):
        fg = ((labels != -1) & (labels != bg_label)).nonzero().squeeze(1)
        return fg, (labels == bg_label).nonzero().squeeze(1)

    orig = d2_roi_heads.subsample_labels
    d2_roi_heads.subsample_labels = keep_all
    try:
        yield
    finally:
        d2_roi_heads.subsample_labels = orig


@contextlib.contextmanager
def release_pixel_boxes(tools):
    """The release pools and rasterises a RoI's inclusive box: (x1, y1, x2 - 1, y2 - 1) of
    Detectron2's box of the same pixels."""
    orig = PolygonMasks.crop_and_resize

    def inclusive(self, boxes, mask_size):
        return orig(self, boxes - PLUS_ONE.to(boxes), mask_size)

    PolygonMasks.crop_and_resize = inclusive
    try:
        with tools["make_release_fixture"]._InclusiveRois():
            yield
    finally:
        PolygonMasks.crop_and_resize = orig


def release_rois(entry, num_images, image_sizes):
    """The release's sampled RoIs as Detectron2 proposals (the boxes of the same pixels)."""
    rois = entry["heads"]["rois"]
    out = []
    for i in range(num_images):
        inst = Instances(image_sizes[i])
        boxes = rois[rois[:, 0] == i, 1:] + PLUS_ONE
        inst.proposal_boxes = Boxes(boxes)
        inst.objectness_logits = torch.zeros(len(boxes), dtype=boxes.dtype)
        out.append(inst)
    return out


# -------------------------------------------------------------------------------------------------
# panet_d2's training step on the release's samples
# -------------------------------------------------------------------------------------------------
def panet_step(tools, doc, variant, release_boxes=True):
    """
    One training step of panet_d2 with the release's samples injected; returns a dict: the RPN
    labels before sampling, the RoIs' labelled proposals, the losses and the model (with its
    gradients).
    """
    entry = doc["variants"][variant]
    cfg, model = build_loaded(tools, doc, variant)
    batched = batched_inputs(cfg)
    images = model.preprocess_image(batched)
    images.tensor = images.tensor.to(fixture_dtype(entry))
    gt = [b["instances"] for b in batched]
    rpn = model.proposal_generator
    sampled = per_image_labels(entry["rpn_labels"].values())
    out = {"sampled_labels": sampled, "cfg": cfg, "model": model, "gt": gt}
    with torch.no_grad():
        features = model.backbone(images.tensor)
        anchors = rpn.anchor_generator([features[f] for f in rpn.in_features])
        with rpn_samples(rpn, None):
            out["rpn_labels_all"], out["rpn_matched"] = rpn.label_and_sample_anchors(anchors, gt)
        out["anchors"] = Boxes.cat(anchors).tensor
    proposals = release_rois(entry, len(batched), images.image_sizes)
    boxes_ctx = release_pixel_boxes(tools) if release_boxes else contextlib.nullcontext()
    with rpn_samples(rpn, sampled), keep_given_rois(), boxes_ctx:
        features = model.backbone(images.tensor)
        _, rpn_losses = rpn(images, features, gt)
        heads = model.roi_heads
        out["labelled"] = heads.label_and_sample_proposals(proposals, gt)
        _, head_losses = heads(images, features, proposals, gt)
        if heads.mask_on:
            fg, _ = d2_roi_heads.select_foreground_proposals(out["labelled"], heads.num_classes)
            out["mask_targets"] = torch.cat(
                [p.gt_masks.crop_and_resize(p.proposal_boxes.tensor, 28) for p in fg]
            )
    out["losses"] = {**rpn_losses, **head_losses}
    # the backward with the release's RPN box-loss normaliser (the harness emulates it)
    release_loc = rpn_loc_per_image_normaliser(rpn, features, anchors, out)
    out["rpn_loc_release_normaliser"] = release_loc.item()
    sum(dict(out["losses"], loss_rpn_loc=release_loc).values()).backward()
    return out


def rpn_loc_per_image_normaliser(rpn, features, anchors, out):
    """
    The RPN box loss as the release normalises it: each image's sum over its positives divided by
    its number of sampled anchors (fewer than 256 when a drawn negative overwrote a positive),
    then averaged over the images; Detectron2 divides the batch's sum by 256 per image.
    """
    sampled = [lab.to(torch.int64) for lab in out["sampled_labels"]]
    logits, deltas = rpn.rpn_head([features[f] for f in rpn.in_features])
    logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
    deltas = [  # (N, A * 4, H, W) -> (N, H * W * A, 4), as Detectron2's RPN.forward
        x.view(x.shape[0], -1, 4, *x.shape[-2:]).permute(0, 3, 4, 1, 2).flatten(1, -2)
        for x in deltas
    ]
    total = 0.0
    for i, (labels, matched) in enumerate(zip(sampled, out["rpn_matched"])):
        one = rpn.losses(
            anchors, [x[i : i + 1] for x in logits], [labels], [x[i : i + 1] for x in deltas],
            [matched],
        )  # fmt: skip
        n = int((labels >= 0).sum())
        total = total + one["loss_rpn_loc"] * rpn.batch_size_per_image / n
    return total / len(sampled)


_STEPS = {}


def step(tools, doc, variant, release_boxes=True):
    key = (variant, release_boxes)
    if key not in _STEPS:
        with EventStorage():
            _STEPS[key] = panet_step(tools, doc, variant, release_boxes)
    return _STEPS[key]


# -------------------------------------------------------------------------------------------------
# Targets
# -------------------------------------------------------------------------------------------------
def release_to_d2_classes(labels, num_classes=80):
    """The release's labels (0 background, k = class k) as Detectron2's (k - 1, background K)."""
    return torch.where(labels == 0, torch.full_like(labels, num_classes), labels - 1)


def release_anchor_rule(anchors, gt_boxes, image_size):
    """
    The release's RPN labels before sampling (roi_data/rpn.py, ``_get_rpn_blobs`` with every
    negative drawn), on Detectron2's boxes of the same pixels; returns (labels, parts) with the
    parts where Detectron2's rule differs: anchors ending on the right or bottom edge (inside for
    the release, whose inclusive x2 = W - 1 < W), each ground truth's best anchor among the inside
    ones (Detectron2: among all anchors, then the outside ones ignored), and the negatives that
    overwrite such a best match below IoU 0.3.
    """
    h, w = image_size
    a = anchors
    inside = (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= w) & (a[:, 3] <= h)
    iou = pairwise_iou(Boxes(a[inside]), gt_boxes)  # (inside anchors, G)
    best_of_gt = (iou == iou.max(dim=0).values[None]).any(dim=1)
    best = iou.max(dim=1).values
    lab = torch.full((len(iou),), -1, dtype=torch.int8)
    lab[best_of_gt | (best >= 0.7)] = 1
    lab[best < 0.3] = 0  # drawn negatives overwrite positives
    labels = torch.full((len(a),), -1, dtype=torch.int8)
    labels[inside] = lab
    spread = torch.zeros(len(a), dtype=torch.bool)
    on_edge = inside & ((a[:, 2] == w) | (a[:, 3] == h))
    best_inside = spread.clone()
    best_inside[inside] = best_of_gt & (best < 0.7)
    overwritten = spread.clone()
    overwritten[inside] = best_of_gt & (best < 0.3)
    return labels, {"on_edge": on_edge, "best_inside": best_inside, "overwritten": overwritten}


@pytest.mark.parametrize("variant", VARIANTS)
def test_rpn_labels_before_sampling(tools, doc, variant):
    """
    The release's anchor labels before sampling are its rule (``release_anchor_rule``), and
    panet_d2's differ from them exactly where Detectron2's rule does: anchors on the right or
    bottom edge, best matches among the inside anchors (or below 0.3, overwritten by the
    release's negatives). The counts are in docs/release_parity.md.
    """
    out = step(tools, doc, variant)
    ours = torch.stack(out["rpn_labels_all"]).to(torch.int8)
    theirs = per_image_labels(doc["variants"][variant]["rpn_labels_all"].values()).to(ours)
    for i, g in enumerate(out["gt"]):
        rule, parts = release_anchor_rule(out["anchors"], g.gt_boxes, g.image_size)
        assert torch.equal(rule, theirs[i])
        explained = parts["on_edge"] | parts["best_inside"] | parts["overwritten"]
        differ = ours[i] != theirs[i]
        assert not (differ & ~explained).any(), (differ & ~explained).nonzero()[:10].tolist()
        assert differ.sum() > 0  # the batch exercises the differences


@pytest.mark.parametrize("variant", VARIANTS)
def test_rpn_regression_targets(tools, doc, variant):
    out, entry = step(tools, doc, variant), doc["variants"][variant]
    sampled = per_image_labels(entry["rpn_labels"].values())
    anchors = out["anchors"]
    transform = out["model"].proposal_generator.box2box_transform
    ours = []
    for i, matched in enumerate(out["rpn_matched"]):
        deltas = transform.get_deltas(anchors, matched)
        ours.append(deltas[sampled[i] == 1])
    ours = torch.cat(ours)
    # the release's targets, per level in (N, A, H, W) order, in Detectron2's (N, level, H, W, A)
    theirs = release_rpn_targets_in_d2_order(entry)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= TARGET_ATOL


def release_rpn_targets_in_d2_order(entry):
    per_image = []
    labels = list(entry["rpn_labels"].values())
    targets = list(entry["rpn_targets"].values())
    N = labels[0].shape[0]
    for i in range(N):
        rows = []
        for lab, t in zip(labels, targets):
            pos = lab == 1  # (N, A, H, W); t: the positives in this order
            full = torch.zeros(*lab.shape, 4, dtype=t.dtype)
            full[pos] = t
            rows.append(full[i].permute(1, 2, 0, 3)[pos[i].permute(1, 2, 0)])
        per_image.append(torch.cat(rows))
    return torch.cat(per_image)


@pytest.mark.parametrize("variant", VARIANTS)
def test_roi_labels_and_box_targets(tools, doc, variant):
    out, entry = step(tools, doc, variant), doc["variants"][variant]
    labelled = out["labelled"]
    ours = torch.cat([p.gt_classes for p in labelled])
    theirs = release_to_d2_classes(entry["heads"]["labels"])
    assert torch.equal(ours, theirs)
    fg = theirs < 80
    transform = out["model"].roi_heads.box_predictor.box2box_transform
    deltas = torch.cat(
        [transform.get_deltas(p.proposal_boxes.tensor, p.gt_boxes.tensor) for p in labelled]
    )
    diff = (deltas[fg] - entry["heads"]["box_targets"][fg]).abs().max().item()
    assert diff <= TARGET_ATOL


def test_mask_targets(tools, doc):
    out, entry = step(tools, doc, "mask"), doc["variants"]["mask"]
    ours = out["mask_targets"].to(torch.int8)
    theirs = entry["heads"]["mask_targets"]
    assert ours.shape == theirs.shape == (int((entry["heads"]["labels"] > 0).sum()), 28, 28)
    assert (ours != theirs).sum().item() == 0


# -------------------------------------------------------------------------------------------------
# Losses and gradients
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_losses(tools, doc, variant):
    """Each loss term; the RPN box loss under the release's per-image normaliser (the measured
    difference of Detectron2's is in docs/release_parity.md)."""
    out = step(tools, doc, variant)
    ours = {k: v.item() for k, v in out["losses"].items()}
    ours["loss_rpn_loc"] = out["rpn_loc_release_normaliser"]
    theirs = doc["variants"][variant]["losses"]
    assert sorted(ours) == sorted(theirs)
    rel = {k: abs(ours[k] - theirs[k]) / abs(theirs[k]) for k in theirs}
    assert all(r <= LOSS_RTOL for r in rel.values()), rel


def gradient_table(tools, doc, variant):
    """{panet_d2 tensor: max |ours - release| / max |release gradient|} over the stored entries."""
    out, entry = step(tools, doc, variant), doc["variants"][variant]
    sample = tools["make_release_training_fixture"].sampled
    params = dict(out["model"].named_parameters())
    trained = {k for k, p in params.items() if p.grad is not None}
    assert trained == set(entry["grads"]), (
        sorted(trained - set(entry["grads"])),
        sorted(set(entry["grads"]) - trained),
    )
    table = {}
    for name, ref in entry["grads"].items():
        ours = sample(name, params[name].grad)
        table[name] = (ours - ref).abs().max().item() / max(entry["grad_max"][name], 1e-30)
    return table


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients(tools, doc, variant):
    table = gradient_table(tools, doc, variant)
    bad = {k: v for k, v in table.items() if not v <= GRAD_RTOL}
    assert bad == {}


# -------------------------------------------------------------------------------------------------
# The optimizer: groups, schedule, one update
# -------------------------------------------------------------------------------------------------
def panet_groups(cfg, model):
    """{tensor: (lr / BASE_LR, weight decay)} of Detectron2's optimizer for the config."""
    optimizer = DefaultTrainer.build_optimizer(cfg, model)
    names = {id(p): k for k, p in model.named_parameters()}
    return {
        names[id(p)]: (g["lr"] / cfg.SOLVER.BASE_LR, g["weight_decay"])
        for g in optimizer.param_groups
        for p in g["params"]
    }, optimizer


@pytest.mark.parametrize("variant", VARIANTS)
def test_optimizer_groups(tools, doc, variant):
    """Per trained tensor, the learning-rate factor and weight decay of the release's groups
    (tools/train_net_step.py: biases at 2x without decay, GroupNorm weights without decay)."""
    cfg, model = build_loaded(tools, doc, variant)
    ours, _ = panet_groups(cfg, model)
    theirs = {
        k: tuple(v.tolist()) for k, v in doc["variants"][variant]["optimizer"]["groups"].items()
    }
    assert sorted(ours) == sorted(theirs)
    bad = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != pytest.approx(theirs[k], rel=1e-6)}
    assert bad == {}
    assert cfg.SOLVER.MOMENTUM == doc["variants"][variant]["optimizer"]["momentum"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_learning_rate_schedule(tools, doc, variant):
    """The learning rate of the weights and the biases at the warm-up and step boundaries of the
    variant's full schedule, and the momentum buffers' scale (SOLVER.SCALE_MOMENTUM: train_net.py's
    MomentumRescale hook, run at every iteration), are the release's (its train_net_step.py lines,
    run)."""
    cfg, model = build_loaded(tools, doc, variant)
    _, optimizer = panet_groups(cfg, model)
    scheduler = DefaultTrainer.build_lr_scheduler(cfg, optimizer)
    opt = doc["variants"][variant]["optimizer"]
    assert list(cfg.SOLVER.STEPS) == opt["solver"]["STEPS"][1:]
    assert cfg.SOLVER.MAX_ITER == opt["solver"]["MAX_ITER"]
    assert cfg.SOLVER.SCALE_MOMENTUM == opt["solver"]["SCALE_MOMENTUM"]
    p0 = optimizer.param_groups[0]["params"][0]
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p]["momentum_buffer"] = torch.ones(1)
    rescale = MomentumRescale(optimizer)
    ours = {}
    for it in range(max(opt["schedule"]) + 1):
        lr = cfg.SOLVER.BASE_LR * scheduler._multiplier(it / scheduler._max_iter)
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = lr * base / cfg.SOLVER.BASE_LR  # what the LRScheduler hook sets
        rescale.before_step()
        if it in opt["schedule"]:
            buf = optimizer.state[p0]["momentum_buffer"].item()
            ours[it] = (lr, lr * cfg.SOLVER.BIAS_LR_FACTOR, buf)
    for it, (lr_w, lr_b, momentum_scale) in opt["schedule"].items():
        assert ours[it][0] == pytest.approx(lr_w.item(), rel=1e-9), it
        assert ours[it][1] == pytest.approx(lr_b.item(), rel=1e-9), it
        assert ours[it][2] == pytest.approx(momentum_scale.item(), rel=1e-6), it


def test_one_sgd_update(tools, doc):
    """One SGD step at iteration 0 (warm-up learning rate) from the same weights and gradients:
    the change of every trained tensor is the release's."""
    out, entry = step(tools, doc, "mask"), doc["variants"]["mask"]
    cfg, model = out["cfg"], out["model"]
    _, optimizer = panet_groups(cfg, model)
    DefaultTrainer.build_lr_scheduler(cfg, optimizer)  # sets iteration 0's learning rate
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    optimizer.step()
    sample = tools["make_release_training_fixture"].sampled
    for name, ref in entry["sgd_update"].items():
        p = dict(model.named_parameters())[name]
        ours = sample(name, p.detach() - before[name])[: len(ref)]
        rounding = 2 * torch.finfo(p.dtype).eps * before[name].abs().max().item()
        assert (ours - ref).abs().max().item() <= 1e-4 * ref.abs().max().item() + rounding, name


# -------------------------------------------------------------------------------------------------
# Initialisation: every tensor outside the ImageNet backbone, as distributed as the release's
# -------------------------------------------------------------------------------------------------
INIT_SIGMAS = 6  # bound, in standard errors of the seed-averaged statistic


def init_statistics(cfg, seeds):
    """{tensor: (seeds, 3) of (mean, std, numel)} of freshly built panet_d2 models."""
    stats = {}
    for seed in range(seeds):
        torch.manual_seed(seed)
        for name, p in build_model(cfg).named_parameters():
            if not name.startswith("backbone.bottom_up."):
                t = p.detach().double()
                stats.setdefault(name, []).append((t.mean().item(), t.std().item(), t.numel()))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()}


def init_mismatches(ours, theirs):
    """Tensors whose seed-averaged mean or std is off the release's by more than INIT_SIGMAS
    standard errors (a Gaussian sample of n values: mean s / sqrt(n), std s / sqrt(2n)); constant
    tensors (std 0) must have the release's value."""
    bad = {}
    for name, ref in theirs.items():
        mine = ours[name]
        m_r, s_r, n = ref[:, 0].mean().item(), ref[:, 1].mean().item(), ref[0, 2].item()
        m_o, s_o = mine[:, 0].mean().item(), mine[:, 1].mean().item()
        if mine[0, 2].item() != n:
            bad[name] = ("numel", mine[0, 2].item(), n)
        elif s_r == 0:
            if not (mine[:, 1].max().item() == 0 and abs(m_o - m_r) <= 1e-7):
                bad[name] = ("constant", m_o, s_o, m_r)
        else:
            k = len(ref) * n
            se_mean, se_std = s_r / k**0.5, s_r / (2 * k) ** 0.5
            # two independent estimates: their difference has sqrt(2) times the error
            if abs(m_o - m_r) > INIT_SIGMAS * 2**0.5 * se_mean or (
                abs(s_o - s_r) > INIT_SIGMAS * 2**0.5 * se_std
            ):
                bad[name] = ("mean, std", m_o, s_o, m_r, s_r)
    return bad


@pytest.mark.parametrize("variant", VARIANTS)
def test_initialisation(tools, doc, variant):
    """The layers panet_d2 initialises (not the ImageNet backbone) are drawn from the release's
    distribution: per tensor, mean and std over the fixture's seeds."""
    theirs = doc["variants"][variant]["init"]
    cfg = training_cfg(tools, doc, variant)
    ours = init_statistics(cfg, len(next(iter(theirs.values()))))
    assert sorted(ours) == sorted(theirs)
    assert init_mismatches(ours, theirs) == {}
