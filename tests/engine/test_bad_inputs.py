# -*- coding: utf-8 -*-
"""
Bad inputs of a run, each stopped with one line naming it before training starts (config values
and files, also from the command line with several processes; the output folder) and invalid
annotations, dropped with a count alike by training and evaluation (panet_d2/engine/checks.py).
"""

import errno
import io
import json
import os
import re

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from pycocotools.coco import COCO  # noqa: E402

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import load_coco_json  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

from panet_d2.engine.checks import (  # noqa: E402
    check_config,
    check_files,
    check_mask_format,
    check_parameter_memory,
    drop_invalid_annotations,
    drop_invalid_coco_annotations,
)
from panet_d2.errors import ConfigError, DatasetError  # noqa: E402

from ..common import (  # noqa: E402
    ROOT,
    generated_val_set,
    logged_messages,
    panet_cfg,
    register_coco,
    run_script,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SMOKE = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance_smoke.yaml")
PANOPTIC = os.path.join(ROOT, "configs", "quick_schedules", "panoptic_panet_R_18_synth.yaml")
PREFIX = "t_bad_inputs"  # the generated dataset (4 validation images), registered under this prefix


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    with generated_val_set(tmp_path_factory, PREFIX) as root:
        yield root


def _main(train_net, out_dir, *opts, config=SMOKE, eval_only=False):
    argv = ["--config-file", str(config)] + ["--eval-only"] * eval_only
    argv += ["OUTPUT_DIR", str(out_dir), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
    return train_net.main(default_argument_parser().parse_args(argv + [str(o) for o in opts]))


# -------------------------------------------------------------------------------------------------
# Config values and files: one line naming the key or file, before training starts
# -------------------------------------------------------------------------------------------------
BAD_VALUES = [
    (["MODEL.ROI_HEADS.NUM_CLASSES", 0], "MODEL.ROI_HEADS.NUM_CLASSES=0: must be a positive int"),
    (["MODEL.ROI_HEADS.NUM_CLASSES", -3], "MODEL.ROI_HEADS.NUM_CLASSES=-3: must be a positive"),
    (["SOLVER.BASE_LR", -0.01], r"^SOLVER.BASE_LR=-0.01: must be 0 or positive, and finite.$"),
    (["SOLVER.BASE_LR", "1e400"], r"^SOLVER.BASE_LR=inf: must be 0 or positive, and finite.$"),
    (["SOLVER.GAMMA", -1.0], r"^SOLVER.GAMMA=-1.0: must be 0 or positive, and finite.$"),
    (["MODEL.RPN.PRE_NMS_TOPK_TEST", -1], r"PRE_NMS_TOPK_TEST=-1: must be an integer >= 1 \(prop"),
    (["MODEL.RPN.POST_NMS_TOPK_TEST", 0], r"POST_NMS_TOPK_TEST=0: must be an integer >= 1 \(prop"),
    (["MODEL.RPN.NMS_THRESH", 5.0], r"^MODEL.RPN.NMS_THRESH=5.0: must be a number in \[0, 1\].$"),
    (["TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", "()"], r"^TEST.AUG.MIN_SIZES=\(\): must be "),
    (["TEST.AUG.ENABLED", True, "TEST.AUG.MAX_SIZE", 0], r"^TEST.AUG.MAX_SIZE=0: must be an int"),
    (["OUTPUT_DIR", ""], r"^OUTPUT_DIR is empty: give a folder \(created if missing\).$"),
    (
        ["MODEL.DEVICE", "gpu"],
        r"^MODEL.DEVICE='gpu': panet_d2 runs on 'cpu' \(or 'cpu:0'\), 'cuda' or 'cuda:N' \(",
    ),
    (
        ["MODEL.BACKBONE.NAME", "build_resnet_pafpn_backbon"],
        r"^MODEL.BACKBONE.NAME='build_resnet_pafpn_backbon' is not in Detectron2's BACKBONE "
        r"registry: did you mean 'build_resnet_pafpn_backbone'\? registered: build_resnet_backb",
    ),
    (
        ["MODEL.META_ARCHITECTURE", "PanopticPANt"],
        r"^MODEL.META_ARCHITECTURE='PanopticPANt' is not in .* did you mean 'PanopticPANet'\?",
    ),
    (
        ["MODEL.RPN.HEAD_NAME", "Foo"],
        r"^MODEL.RPN.HEAD_NAME='Foo' is not in Detectron2's RPN_HEAD registry: registered: PANe",
    ),
    (
        ["MODEL.DEVICE", "cudaa"],
        r"^MODEL.DEVICE='cudaa': panet_d2 runs on 'cpu' \(or 'cpu:0'\), 'cuda' or 'cuda:N'",
    ),
    (["SOLVER.STEPS", "(6,)"], r"SOLVER.STEPS=\(6,\): .* less than SOLVER.MAX_ITER=6."),
    (["SOLVER.MAX_ITER", 0], r"SOLVER.MAX_ITER=0: must be an integer >= 1 \(training iterat"),
    # the sizes of the model, thresholds and fractions, the warmup, gradient clipping (stop 45)
    (
        ["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 0],
        r"RESOLUTION=0: must be an integer >= 1 \(the si",
    ),
    (
        ["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 400],
        r"^MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION=400: must be an integer <= 64 \(the side of the "
        r"box head's RoI features\): larger values exhaust a machine's memory.$",
    ),
    (["MODEL.ROI_BOX_HEAD.FC_DIM", 0], r"^MODEL.ROI_BOX_HEAD.FC_DIM=0: must be an integer >= 1 \("),
    (["MODEL.ROI_BOX_HEAD.NUM_FC", -1], r"^MODEL.ROI_BOX_HEAD.NUM_FC=-1: must be an integer >= 0"),
    (
        ["MODEL.ROI_BOX_HEAD.FC_DIM", 10**8],
        r"^The model GeneralizedRCNN has [0-9,]+ parameters \([0-9.]+ GiB in float32\), more than "
        r"half this machine's memory \([0-9.]+ GiB\); the largest: roi_heads.box_head.fc2.weight "
        r"\(100000000, 100000000\): check the channel, width and resolution keys of its part.$",
    ),
    (["MODEL.FPN.OUT_CHANNELS", 0], r"^MODEL.FPN.OUT_CHANNELS=0: must be an integer >= 1 \(the"),
    (["MODEL.BACKBONE.FREEZE_AT", 10], r"^MODEL.BACKBONE.FREEZE_AT=10: must be an integer <= 5 \("),
    (
        ["MODEL.ROI_HEADS.IOU_THRESHOLDS", "[1.5]"],
        r"^MODEL.ROI_HEADS.IOU_THRESHOLDS=\[1.5\]: must be numbers in \[0, 1\], increasing.$",
    ),
    (["MODEL.RPN.IOU_THRESHOLDS", "[0.7, 0.3]"], r"^MODEL.RPN.IOU_THRESHOLDS=\[0.7, 0.3\]: must"),
    (["MODEL.ROI_HEADS.POSITIVE_FRACTION", 2.0], r"POSITIVE_FRACTION=2.0: must be a number in \["),
    (["SOLVER.WARMUP_FACTOR", -1.0], r"^SOLVER.WARMUP_FACTOR=-1.0: must be a number in \[0, 1\].$"),
    (["SOLVER.WARMUP_ITERS", -5], r"^SOLVER.WARMUP_ITERS=-5: must be an integer >= 0 \(iteratio"),
    (
        ["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", -1.0],
        r"^SOLVER.CLIP_GRADIENTS.CLIP_VALUE=-1.0, NORM_TYPE=2.0: must be positive",
    ),
    (["SOLVER.REFERENCE_WORLD_SIZE", 3], r"^SOLVER.REFERENCE_WORLD_SIZE=3: must be 0 \(off\) or"),
    (["MODEL.RESNETS.DEPTH", 19], r"^Invalid config value MODEL.RESNETS.DEPTH=19; allowed values"),
    (["MODEL.RESNETS.NORM", "foo"], r"^Invalid config value MODEL.RESNETS.NORM='foo'; allowed: "),
    (
        ["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[-1.0]]"],
        r"^MODEL.ANCHOR_GENERATOR.SIZES=.*, ASPECT_RATIOS=\[\[-1.0\]\]: must be positive finite",
    ),
    (
        ["INPUT.CROP.ENABLED", True, "INPUT.CROP.SIZE", "[2.0, 2.0]"],
        r"^INPUT.CROP.SIZE=\[2.0, 2.0\]: with INPUT.CROP.TYPE 'relative_range', a height and a "
        r"width of the image, in \(0, 1\].$",
    ),
    (
        ["INPUT.CROP.ENABLED", True, "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "[0, 0]"],
        r"^INPUT.CROP.SIZE=\[0, 0\]: with INPUT.CROP.TYPE 'absolute', a height and a width in pix",
    ),
    (["MODEL.RPN.SMOOTH_L1_BETA", -1.0], r"^MODEL.RPN.SMOOTH_L1_BETA=-1.0: must be 0 \(L1 loss\)"),
    (
        ["MODEL.RESNETS.RES5_DILATION", 2],
        r"^MODEL.RESNETS.DEPTH=18 \(BasicBlocks\) takes RES5_DILATION 1, no DEFORM_ON_PER_STAGE "
        r"and RES2_OUT_CHANNELS 64; got 2, \[False, False, False, False\] and 64.$",
    ),
    (  # the smoke config's FF branch has 16 channels
        ["MODEL.ROI_MASK_HEAD.NORM", "GN"],
        r"^The model cannot be built: num_channels \(16\) must be divisible by num_groups \(32\): "
        r"a 'GN' norm on a layer of other channels; set that part's NORM key to another norm",
    ),
    (["SOLVER.CHECKPOINT_PERIOD", 0], r"SOLVER.CHECKPOINT_PERIOD=0: must be an integer >= 1"),
    (["INPUT.MIN_SIZE_TRAIN", "(0, 192)"], r"MIN_SIZE_TRAIN=\(0, 192\): must be integers >= 1"),
    (["INPUT.MIN_SIZE_TEST", -1], r"INPUT.MIN_SIZE_TEST=-1: must be an integer >= 0 \(test"),
    (
        ["INPUT.MAX_SIZE_TEST", 50000],
        r"^INPUT.MAX_SIZE_TEST=50000: must be an integer <= 8192 \(test images' long side\): "
        r"larger values exhaust a machine's memory.$",
    ),
    (
        ["INPUT.MIN_SIZE_TRAIN", "(192, 9000)"],
        r"SIZE_TRAIN=\(192, 9000\): must be integers <= 8192",
    ),
    (["DATALOADER.NUM_WORKERS", -1], r"DATALOADER.NUM_WORKERS=-1: must be an integer >= 0"),
    (["SOLVER.LR_SCHEDULER_NAME", "Foo"], r"LR_SCHEDULER_NAME='Foo'; allowed values are: 'Warm"),
    (["MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", -1.0], r"SEM_SEG_HEAD.LOSS_WEIGHT=-1.0: a loss weight"),
    (
        ["MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT", "1e999"],
        r"^MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT=inf: a loss weight must be 0 or positive, fin",
    ),
    (
        ["SOLVER.NESTEROV", True, "SOLVER.MOMENTUM", 0.0],
        r"^SOLVER.MOMENTUM=0.0: must be positive with SOLVER.NESTEROV True \(torch's SGD",
    ),
    (
        ["MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "(0.0, 0.0, 0.0, 0.0)"],
        r"^MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS=\(0.0, 0.0, 0.0, 0.0\): must be 4 positive finite",
    ),
    (
        ["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "foo"],
        r"BBOX_REG_LOSS_TYPE='foo'; allowed values are: 'smooth_l1', 'giou', 'diou', 'ciou'",
    ),
    (
        ["SOLVER.CLIP_GRADIENTS.ENABLED", True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "foo"],
        r"CLIP_GRADIENTS.CLIP_TYPE='foo'; allowed values are: 'value', 'norm'.",
    ),
    (["INPUT.RANDOM_FLIP", "diagonal"], r"RANDOM_FLIP='diagonal'; allowed values are: 'horiz"),
    (["INPUT.CROP.TYPE", "foo"], r"INPUT.CROP.TYPE='foo'; allowed values are: 'relative_range'"),
    (
        ["SOLVER.WARMUP_METHOD", "Linear"],
        r"METHOD='Linear'; allowed values are: 'linear', 'constant",
    ),
    (["INPUT.MASK_FORMAT", "rle"], r"MASK_FORMAT='rle'; allowed values are: 'polygon', 'bitmask'."),
    (["DATALOADER.SAMPLER_TRAIN", "Foo"], r"SAMPLER_TRAIN='Foo'; allowed values are: 'Training"),
    (["MODEL.RPN.BATCH_SIZE_PER_IMAGE", 0], r"BATCH_SIZE_PER_IMAGE=0: must be an integer >= 1"),
    (["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 0], r"HEADS.BATCH_SIZE_PER_IMAGE=0: must be an int"),
    (["TEST.DETECTIONS_PER_IMAGE", 0], r"TEST.DETECTIONS_PER_IMAGE=0: must be an integer >= 1"),
    (
        ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.5],
        r"SCORE_THRESH_TEST=1.5: must be a number in \[0, 1",
    ),
    (
        ["MODEL.ROI_HEADS.NMS_THRESH_TEST", -0.1],
        r"NMS_THRESH_TEST=-0.1: must be a number in \[0, 1",
    ),
    (["INPUT.FORMAT", "XYZ"], r"INPUT.FORMAT='XYZ', MODEL.PIXEL_MEAN=\[.*\]: the format must be"),
    (["MODEL.PIXEL_MEAN", "[1.0]"], r"MODEL.PIXEL_MEAN=\[1.0\], .* a mean and a \(positive\) dev"),
    (["MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]"], r"MODEL.PIXEL_STD=\[1.0, 0.0, 1.0\]: the format must"),
    (
        ["MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p4']"],
        r"MODEL.ROI_HEADS.IN_FEATURES=\['p2', 'p4'\]: RoI pooling \(and adaptive feature pooling\)"
        r" takes consecutive pyramid levels, finest first; these have strides \[4, 16\]. Allowed: "
        r"consecutive features of p2, p3, p4, p5, p6",
    ),
    (
        ["MODEL.RPN.IN_FEATURES", "['p2', 'p7']"],
        r"MODEL.RPN.IN_FEATURES=\['p2', 'p7'\]: 'p7' is not a feature of the backbone "
        r"build_resnet_pafpn_backbone; its features are: p2, p3, p4, p5, p6.",
    ),
    (["MODEL.FPN.FUSE_TYPE", "max"], r"FPN.FUSE_TYPE='max'; allowed values are: 'sum', 'avg'.$"),
    (
        ["MODEL.ROI_BOX_HEAD.POOLER_TYPE", "Foo"],
        r"POOLER_TYPE='Foo'; allowed values are: 'ROIAlign', 'ROIAlignV2', 'ROIPool', 'ROIAlignRot",
    ),
    (
        ["MODEL.FPN.IN_FEATURES", "['res5', 'res4', 'res3', 'res2']"],
        r"^MODEL.FPN.IN_FEATURES=\['res5', 'res4', 'res3', 'res2'\]: the feature pyramid takes "
        r"consecutive pyramid levels, finest first; these have strides \[32, 16, 8, 4\].",
    ),
    (
        ["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES5_DILATION", 2],
        r"^MODEL.RESNETS.RES5_DILATION=2 keeps res5 at res4's stride \(16\): a feature pyramid ",
    ),
    (
        ["MODEL.META_ARCHITECTURE", "RetinaNet"],
        r"^MODEL.RETINANET.IN_FEATURES=\['p3', 'p4', 'p5', 'p6', 'p7'\]: 'p7' is not a feature of",
    ),
    (  # Detectron2's refusal while building, in one line naming where
        ["MODEL.RPN.IN_FEATURES", "['p2', 'p3']"],
        r"^The model cannot be built from this config \(GeneralizedRCNN\): AssertionError: Got "
        r"sizes of length 5 in anchor generator, but the number of input features is 2! \(raised "
        r"at detectron2/modeling/anchor_generator.py:\d+\); check the keys of that part.$",
    ),
    # a PANet key on while the part that reads it is not in the model
    (
        ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"],
        r"^MODEL.AFP.ENABLED=True is read by PANetROIHeads only, got MODEL.ROI_HEADS.NAME="
        r"'StandardROIHeads': set the name to 'PANetROIHeads' or MODEL.AFP.ENABLED to False.$",
    ),
    (
        ["MODEL.ROI_MASK_HEAD.NAME", "MaskRCNNConvUpsampleHead", "MODEL.AFP.ENABLED", False],
        r"^MODEL.FF.ENABLED=True is read by PANetMaskHead only, got MODEL.ROI_MASK_HEAD.NAME=",
    ),
    (
        ["MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.AFP.ENABLED", False]
        + ["MODEL.ROI_BOX_HEAD.FC_NORM", "GN"],
        r"^MODEL.ROI_BOX_HEAD.FC_NORM='GN' is read by PANetConvFCHead only, got MODEL.ROI_BOX_"
        r"HEAD.NAME='FastRCNNConvFCHead': set the name to 'PANetConvFCHead' or MODEL.ROI_BOX_HEAD."
        r"FC_NORM to ''.$",
    ),
]


@pytest.mark.parametrize("opts, message", BAD_VALUES)
def test_bad_config_values(train_net, datasets, tmp_path, opts, message):
    data = ["DATASETS.TRAIN", "('{}_val',)".format(PREFIX), "DATASETS.TEST", "()"]
    with pytest.raises(ConfigError, match=message):
        _main(train_net, tmp_path, *data, *opts)
    log = tmp_path / "log.txt"  # none where the command line's config is refused
    assert not log.exists() or "Starting training" not in log.read_text()
    train_only = ("SOLVER.", "INPUT.MIN_SIZE_TRAIN", "MODEL.RPN.BATCH", "MODEL.ROI_HEADS.BATCH")
    train_only += ("INPUT.MASK_FORMAT", "MODEL.ROI_HEADS.POSITIVE", "MODEL.RPN.SMOOTH")
    train_only += ("MODEL.PANOPTIC_FPN.INSTANCE_LOSS", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS")
    train_only += (
        "INPUT.RANDOM_FLIP",
        "INPUT.CROP",
        "DATALOADER.SAMPLER",
        "MODEL.SEM_SEG_HEAD.LOSS",
    )
    if not opts[0].startswith(train_only):  # also with --eval-only
        with pytest.raises(ConfigError, match=message):
            _main(train_net, tmp_path, *opts, eval_only=True, config=SMOKE)


def test_panoptic_values_that_fail_after_training_or_by_image_size(train_net, tmp_path):
    """A panoptic model without masks (Detectron2: trained to the end, then an AttributeError in
    evaluation), and a semantic head reading p6 (stride 64, images padded to multiples of 32):
    refused before training. The latter fails on some image sizes only, as built here."""
    for eval_only in (False, True):
        with pytest.raises(ConfigError, match=r"^MODEL.MASK_ON=False: PanopticPANet's panoptic "):
            _main(train_net, tmp_path, "MODEL.MASK_ON", False, config=PANOPTIC, eval_only=eval_only)
        p6 = ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p6']"]
        with pytest.raises(ConfigError) as e:
            _main(train_net, tmp_path, *p6, config=PANOPTIC, eval_only=eval_only)
        assert str(e.value).startswith(
            "MODEL.SEM_SEG_HEAD.IN_FEATURES=['p2', 'p3', 'p4', 'p5', 'p6']: 'p6' has stride 64, "
            "coarser than the 32 px multiples the backbone pads images to"
        )
    cfg = panet_cfg(PANOPTIC)
    cfg.merge_from_list(p6)
    model = build_model(cfg).eval()  # (Detectron2's builder, unchecked)
    with torch.no_grad():
        model([{"image": torch.zeros(3, 128, 128)}])  # 4 x 32: p6 upsampled is p5's size
        with pytest.raises(RuntimeError, match="must match the size of tensor"):
            model([{"image": torch.zeros(3, 96, 128)}])  # 3 x 32: it is not


def test_training_records_without_the_models_targets(train_net, datasets, tmp_path):
    """An instance model on semantic or Detectron2-style panoptic records (no 'annotations'), a
    panoptic model on instance records (no semantic PNG): one line before training (Detectron2:
    "RPN requires gt_instances in training!", a KeyError or a ValueError at the first step)."""
    panoptic = DatasetCatalog.get(f"{PREFIX}_val_panoptic")
    bare = [{k: v for k, v in d.items() if k != "annotations"} for d in panoptic]
    name = f"{PREFIX}_panoptic_records_only"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in bare])
    meta = MetadataCatalog.get(f"{PREFIX}_val_panoptic").as_dict()
    MetadataCatalog.get(name).set(**{k: v for k, v in meta.items() if k != "name"})
    cases = [
        (
            SMOKE,
            f"{PREFIX}_val_sem_seg",
            "instance annotations ('annotations'), which " "GeneralizedRCNN trains on",
            "Train on a dataset registered with them.",
        ),
        (SMOKE, name, "instance annotations ('annotations')", "Its records are panoptic"),
        (
            PANOPTIC,
            f"{PREFIX}_val",
            "semantic label PNG ('sem_seg_file_name'), which " "PanopticPANet trains on",
            "Train on a dataset registered with them.",
        ),
    ]
    for config, dataset, what, hint in cases:
        data = ["DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", 1]
        with pytest.raises(DatasetError) as e:
            _main(train_net, tmp_path, *data, config=config)
        message = str(e.value)
        assert message.startswith(
            f"4 of the 4 training records ({dataset}, DATASETS.TRAIN) have " f"no {what}"
        ), message
        assert hint in message, message
        assert "Starting training" not in (tmp_path / "log.txt").read_text()
    # the panoptic model trains on those panoptic records (panet_d2's mapper reads the PNGs)
    data = ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", 1]
    _main(train_net, tmp_path / "ok", *data, config=PANOPTIC)


def test_flag_after_the_config_options(train_net, tmp_path):
    """argparse gives a flag after the KEY VALUE pairs to them ("Non-existent key: --num-gpus")."""
    with pytest.raises(ConfigError) as e:
        _main(train_net, tmp_path, "SOLVER.MAX_ITER", 2, "--num-gpus", 2)
    assert str(e.value).endswith(
        ": '--num-gpus' is an option of the command: give it before the KEY VALUE pairs"
    )


def test_largest_image_sides_accepted():
    """8192 px (twice Detectron2's largest config value) is the largest side any size key takes."""
    cfg = panet_cfg()
    cfg.merge_from_list(["TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (8192,)])
    for key in ("MIN_SIZE_TEST", "MAX_SIZE_TEST", "MAX_SIZE_TRAIN"):
        cfg.INPUT[key] = 8192
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.TEST.AUG.MAX_SIZE = (8192,), 8192
    check_config(cfg, train=True, world_size=1)


def test_machine_memory(monkeypatch):
    """A cgroup (container) limit below the physical memory is the machine's memory."""
    import builtins

    from panet_d2.engine.checks import machine_memory

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert machine_memory() <= physical
    opened = builtins.open

    def limited(path, *args, **kwargs):
        if str(path) == "/sys/fs/cgroup/memory.max":
            return io.StringIO("1073741824\n")
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", limited)
    assert machine_memory() == min(physical, 1073741824)


def test_parameter_memory():
    """Refused above half the memory: a float32 Linear(1000, 1000) is 1,001,000 x 4 bytes."""
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(1000, 1000))
    check_parameter_memory(model, "M", memory=8_008_000)
    with pytest.raises(ConfigError, match=r"^The model M has 1,001,000 parameters \(0.0 GiB in"):
        check_parameter_memory(model, "M", memory=8_007_999)


def test_training_choices_are_detectron2s(train_net):
    """train_net.py's allowed values of Detectron2's training keys: each one Detectron2 takes."""
    import inspect

    import detectron2.data.build
    from detectron2.data import DatasetMapper
    from detectron2.data.detection_utils import annotations_to_instances
    from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
    from detectron2.solver import build_lr_scheduler
    from detectron2.solver.build import maybe_add_gradient_clipping

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    choices = train_net.TRAINING_CHOICES
    for key, allowed in choices.items():
        for value in allowed:
            cfg = panet_cfg("quick_schedules/panoptic_panet_R_18_synth.yaml")
            cfg.merge_from_list([key, value, "INPUT.CROP.ENABLED", True])
            cfg.INPUT.MIN_SIZE_TRAIN = (160, 192)  # "range" takes two
            if key in ("SOLVER.LR_SCHEDULER_NAME", "SOLVER.WARMUP_METHOD"):
                assert build_lr_scheduler(cfg, optimizer) is not None
            elif key == "INPUT.MASK_FORMAT":  # a polygon annotation as masks of that format
                anno = dict(bbox=[0, 0, 4, 4], bbox_mode=0, category_id=0)
                anno["segmentation"] = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0]]
                assert annotations_to_instances([anno], (8, 8), mask_format=value).gt_masks
            elif key == "SOLVER.CLIP_GRADIENTS.CLIP_TYPE":
                cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
                assert maybe_add_gradient_clipping(cfg, torch.optim.SGD) is not torch.optim.SGD
            elif key.startswith("INPUT."):
                assert DatasetMapper.from_config(cfg, True)["augmentations"]
            elif key.endswith("BBOX_REG_LOSS_TYPE"):  # the RPN's and box head's box loss
                boxes, fg = torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.ones(1, 1, dtype=torch.bool)
                transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
                deltas = [torch.full((1, 1, 4), 0.1)]
                loss = _dense_box_regression_loss([boxes], transform, deltas, [boxes], fg, value)
                assert torch.isfinite(loss) and loss > 0
            else:  # the names Detectron2's train loader compares SAMPLER_TRAIN with
                assert 'sampler_name == "{}"'.format(value) in inspect.getsource(
                    detectron2.data.build
                )


def test_instance_model_on_a_panoptic_test_set(train_net, datasets, tmp_path):
    """COCOPanopticEvaluator reads a "panoptic_seg" that an instance model does not give (a
    KeyError at the first image): refused before the model is built."""
    data = ["DATASETS.TEST", "('{}_val_panoptic',)".format(PREFIX)]
    message = "Dataset '{}_val_panoptic' (DATASETS.TEST) is evaluated as 'coco_panoptic_seg': the "
    message += "model GeneralizedRCNN gives instances only (test an instance dataset)."
    with pytest.raises(DatasetError) as e:
        _main(train_net, tmp_path, *data, eval_only=True)
    assert str(e.value) == message.format(PREFIX)


def test_image_size_differing_from_its_record(train_net, datasets, tmp_path):
    """An image whose size is not its record's: refused before training (a training set) or
    before the model is built (a test set); Detectron2's mapper refuses it when it first reads it,
    hours into training or in the evaluation after it."""
    meta = MetadataCatalog.get(PREFIX + "_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    image = data["images"][2]
    w, h = image["width"], image["height"]
    image["width"] = w + 1
    json_file = tmp_path / "sizes.json"
    json_file.write_text(json.dumps(data))
    name = register_coco("t_bad_sizes", json_file, meta.image_root)
    message = (
        f"Image {os.path.join(meta.image_root, image['file_name'])!r} (image_id {image['id']}) is "
        f"{w}x{h} (width x height) as read, its dataset record says {w + 1}x{h}. Fix the width / "
        "height of the record, or the image file."
    )
    for key, eval_only in (("DATASETS.TRAIN", False), ("DATASETS.TEST", True)):
        out = tmp_path / key
        with pytest.raises(DatasetError) as e:
            _main(train_net, out, key, f"('{name}',)", eval_only=eval_only)
        assert str(e.value) == message
        assert (
            not (out / "log.txt").exists()
            or "Starting training" not in (out / "log.txt").read_text()
        )


def test_rle_masks_with_the_polygon_format(train_net, datasets, tmp_path):
    """The generated masks are RLE: INPUT.MASK_FORMAT 'polygon' is refused before training (it was
    Detectron2's ValueError at the first iteration); a crowd RLE (the mapper drops crowds) is not.
    """
    name = PREFIX + "_val"
    with pytest.raises(DatasetError) as e:
        _main(train_net, tmp_path, "DATASETS.TRAIN", f"('{name}',)", "INPUT.MASK_FORMAT", "polygon")
    first = DatasetCatalog.get(name)[0]
    assert str(e.value) == (
        f"Dataset {name!r} (DATASETS.TRAIN): image {first['image_id']!r} ({first['file_name']!r}) "
        "has an RLE mask, which INPUT.MASK_FORMAT='polygon' cannot read: set INPUT.MASK_FORMAT "
        "'bitmask'."
    )
    assert "Starting training" not in (tmp_path / "log.txt").read_text()
    crowds = [dict(d, annotations=[dict(a, iscrowd=1) for a in d["annotations"]]) for d in [first]]
    check_mask_format(crowds, [name], "polygon")
    check_mask_format([first], [name], "bitmask")


def test_image_size_that_is_not_a_number(datasets, tmp_path):
    """A record's width as the string "192": named as such (it said "is 192x192 as read, its
    dataset record says 192x192")."""
    record = dict(DatasetCatalog.get(PREFIX + "_val")[0])
    w, h = record["width"], record["height"]
    record["width"] = str(w)
    with pytest.raises(DatasetError) as e:
        check_files([record], "x", "DATASETS.TRAIN")
    assert str(e.value) == (
        f"Image {record['file_name']!r} (image_id {record['image_id']!r}): the width and height "
        f"of its dataset record, '{w}' and {h}, must be integers (pixels; the file: {w}x{h})."
    )


def test_panoptic_png_not_rgb_or_of_another_size(datasets, tmp_path):
    """Refused before the run (a single-channel PNG: panopticapi's TypeError after training; one
    of another size: the mapper's error at the first iteration that reads it)."""
    from PIL import Image

    record = dict(DatasetCatalog.get(PREFIX + "_val_panoptic")[0])
    png = Image.open(record["pan_seg_file_name"])
    w, h = record["width"], record["height"]
    assert png.mode == "RGB" and png.size == (w, h)
    check_files([record], "x", "DATASETS.TEST")
    png.convert("L").save(tmp_path / "gray.png")
    png.resize((w + 2, h)).save(tmp_path / "wide.png")
    png.convert("P").save(tmp_path / "palette.png")  # the mapper reads it as RGB; panopticapi not
    palette = dict(record, pan_seg_file_name=str(tmp_path / "palette.png"))
    check_files([palette], "x", "DATASETS.TRAIN")
    with pytest.raises(DatasetError, match=r"is of mode 'P': .* \(a palette PNG: not in evaluat"):
        check_files([palette], "x", "DATASETS.TEST")
    for name, message in [
        ("gray.png", "is of mode 'L': COCO panoptic PNGs are RGB, a segment id R + 256 G + 256^2"),
        ("wide.png", f"is {w + 2}x{h} (width x height), its image {record['file_name']!r} {w}x{h}"),
    ]:
        path = str(tmp_path / name)
        with pytest.raises(DatasetError) as e:
            check_files([dict(record, pan_seg_file_name=path)], "x", "DATASETS.TEST")
        assert str(e.value).startswith(f"Panoptic PNG {path!r} {message}")


def test_bad_panoptic_config_values():
    """The semantic head checks its own arguments when built (any entry point, not only
    train_net.py's pre-flight checks)."""
    cfg = panet_cfg("quick_schedules/panoptic_panet_R_18_synth.yaml")
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 0
    with pytest.raises(ConfigError, match=r"MODEL.SEM_SEG_HEAD.NUM_CLASSES=0: must count the "):
        build_model(cfg)
    cfg = panet_cfg("quick_schedules/panoptic_panet_R_18_synth.yaml")
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "res4"]
    with pytest.raises(ConfigError, match="SEM_SEG_HEAD.IN_FEATURES=.*'res4' is not a feature"):
        build_model(cfg)
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = []
    with pytest.raises(ConfigError, match=r"^MODEL.SEM_SEG_HEAD.IN_FEATURES=\[\]: list one feat"):
        build_model(cfg)
    cfg = panet_cfg("quick_schedules/panoptic_panet_R_18_synth.yaml")
    cfg.MODEL.PANOPTIC_FPN.COMBINE.ENABLED = False  # Detectron2 only warns that it is not read
    with pytest.raises(
        ConfigError, match=r"^MODEL.PANOPTIC_FPN.COMBINE.ENABLED=False: Detectron2 "
    ):
        check_config(cfg, train=False)
    cfg = panet_cfg("quick_schedules/panet_R_18_synth_instance.yaml")  # IMS_PER_BATCH 4
    check_config(cfg, world_size=2)
    with pytest.raises(
        ConfigError,
        match=r"SOLVER.IMS_PER_BATCH=4: .* multiple of the number of " r"processes \(3\)",
    ):
        check_config(cfg, world_size=3)
    cfg.SOLVER.REFERENCE_WORLD_SIZE, cfg.SOLVER.IMS_PER_BATCH = 8, 16  # trains 6 on 3 processes
    check_config(cfg, world_size=3)  # (Detectron2's auto_scale_workers, before the batch's check)
    deformable = panet_cfg("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")
    deformable.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]
    for c in (cfg, deformable):  # built on the meta device; the random state kept
        state = torch.get_rng_state()
        check_config(c, world_size=1)
        assert torch.equal(state, torch.get_rng_state())


def _config_error(train_net, tmp_path, config):
    with pytest.raises(ConfigError) as e:
        _main(train_net, tmp_path / "out", config=config)
    return str(e.value)


def test_base_that_is_not_a_file_name(train_net, tmp_path):
    """fvcore takes one file name as _BASE_ (a number or a list: its AttributeError traceback)."""
    for value, shown in (("5", "5"), ("[{!r}]".format(SMOKE), repr([SMOKE]))):
        config = tmp_path / "numbered.yaml"
        config.write_text("_BASE_: {}\n".format(value))
        expected = "Config file {!r}: _BASE_ {} is not a file name (a string)."
        assert _config_error(train_net, tmp_path, config) == expected.format(str(config), shown)


def test_config_file_that_is_a_pipe(train_net, tmp_path):
    """A named pipe as the config or its _BASE_: refused as not a regular file, not read (a read
    would wait for a writer); it had been said not to exist."""
    pipe = tmp_path / "config.yaml"
    os.mkfifo(pipe)
    assert _config_error(train_net, tmp_path, pipe) == (
        "Config file {!r} (--config-file) is not a regular file.".format(str(pipe))
    )
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text('_BASE_: "../config.yaml"\n')
    assert _config_error(train_net, tmp_path, child) == (
        "The _BASE_ {!r} of config file {!r} is not a regular file.".format(
            str(tmp_path / "sub" / "../config.yaml"), str(child)
        )
    )


def test_bad_config_files(train_net, tmp_path):
    def error(config):
        return _config_error(train_net, tmp_path, config)

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing but a comment\n")
    assert error(empty) == "Config file {!r} is empty: give it _BASE_ or config keys.".format(
        str(empty)
    )
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text('_BASE_: "../Base-Missing.yaml"\nSOLVER:\n  MAX_ITER: 1\n')
    assert error(child) == (
        "The _BASE_ {!r} of config file {!r} does not exist (a _BASE_ is relative to the file "
        "that names it).".format(str(tmp_path / "sub" / "../Base-Missing.yaml"), str(child))
    )
    folder = tmp_path / "configs"  # a folder given for a file, as the config or its _BASE_
    folder.mkdir()
    assert error(folder) == "Config file {!r} (--config-file) is not a regular file.".format(
        str(folder)
    )
    child2 = tmp_path / "sub" / "child2.yaml"
    child2.write_text('_BASE_: "../configs"\n')
    assert error(child2) == "The _BASE_ {!r} of config file {!r} is not a regular file.".format(
        str(tmp_path / "sub" / "../configs"), str(child2)
    )
    # a base that exists but is empty: named as the base of which file
    (tmp_path / "Base-Missing.yaml").write_text("")
    base = str(tmp_path / "sub" / "../Base-Missing.yaml")
    expected = "The _BASE_ {!r} of config file {!r} is empty: give it _BASE_ or config keys."
    assert error(child) == expected.format(base, str(child))
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [unclosed\n")
    assert error(broken).startswith("Config file {!r} is not valid YAML: ".format(str(broken)))
    tabbed = tmp_path / "tabbed.yaml"  # libyaml takes a tab after "KEY:", fvcore's PyYAML refuses
    tabbed.write_text("MODEL:\n  MASK_ON:\tTrue\n")
    assert error(tabbed).startswith("Config file {!r} is not valid YAML: ".format(str(tabbed)))
    listing = tmp_path / "list.yaml"
    listing.write_text("- MODEL\n")
    assert "holds a YAML list instead of config keys" in error(listing)
    tagged = tmp_path / "tagged.yaml"  # nothing in a config file runs
    tagged.write_text("MODEL:\n  DEVICE: !!python/object/apply:os.getcwd []\n")
    assert error(tagged).startswith("Config file {!r} holds a Python tag".format(str(tagged)))
    bomb = tmp_path / "bomb.yaml"  # nested aliases: 10^9 values in 11 lines, refused at once
    levels = ["L0: &L0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]"]
    for i in range(1, 9):
        levels.append("L{}: &L{} [{}]".format(i, i, ", ".join(["*L{}".format(i - 1)] * 10)))
    bomb.write_text("\n".join(levels) + "\nMODEL:\n  PIXEL_MEAN: *L8\n")
    sizes = [11]  # YAML nodes of L0..L8 expanded: a list node and its items
    for _ in range(8):
        sizes.append(1 + 10 * sizes[-1])
    nodes = 1 + sum(1 + n for n in sizes) + 1 + (1 + 1 + sizes[8])  # the mapping, L0..L8, MODEL
    assert error(bomb) == (
        "Config file {!r} uses YAML aliases (*L0, line 2) that stand for {} values (at most "
        "10000): config files are plain data, write the values out.".format(str(bomb), nodes)
    )
    deep = tmp_path / "deep.yaml"  # PyYAML composes recursively: 5000 "[" would exhaust the stack
    deep.write_text("MODEL:\n  PIXEL_MEAN: " + "[" * 5000 + "]" * 5000 + "\n")
    assert error(deep) == (
        "Config file {!r} nests values more than 100 levels deep (line 2): config files are "
        "plain data.".format(str(deep))
    )
    loop = tmp_path / "loop.yaml"
    loop.write_text('_BASE_: "loop.yaml"\n')
    assert "inherits from itself" in error(loop)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text('_BASE_: "{}"\nMODEL:\n  NO_SUCH_KEY: 1\n'.format(SMOKE))
    assert error(unknown) == "Config file {!r}: Non-existent config key: MODEL.NO_SUCH_KEY".format(
        str(unknown)
    )
    with pytest.raises(ConfigError, match=r"command-line options .*SOLVER.NO_KEY.*Non-existent"):
        _main(train_net, tmp_path / "out", "SOLVER.NO_KEY", 1)


def test_bad_output_dir(train_net, datasets, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as e:
        _main(train_net, a_file)
    assert str(e.value) == "OUTPUT_DIR={!r} is a file: give a folder (created if missing).".format(
        str(a_file)
    )
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "OUTPUT_DIR={!r} cannot be created: Not a directory".format(str(a_file / "out"))
        ),
    ):
        _main(train_net, a_file / "out")
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(str(read_only), os.W_OK):  # root writes anyway: the file system refuses instead

        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

        monkeypatch.setattr("panet_d2.engine.checks.tempfile.mkstemp", refuse)
    with pytest.raises(ConfigError) as e:
        _main(train_net, read_only)
    expected = "OUTPUT_DIR={!r} is not writable: Permission denied. Give a writable folder."
    assert str(e.value) == expected.format(str(read_only))
    read_only.chmod(0o755)
    assert os.listdir(read_only) == []


def test_command_line_error_with_two_processes(tmp_path):
    """Checked before the processes start: one line, no traceback."""
    argv = ["--num-gpus", "2", "--config-file", SMOKE, "OUTPUT_DIR", str(tmp_path / "o")]
    proc = run_script("train_net.py", *argv, "SOLVER.BASE_LR", "-0.5", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "ERROR: SOLVER.BASE_LR=-0.5: must be 0 or positive, and finite."
    )
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "o" / "log.txt")  # no process started


def test_machine_rank_out_of_range(tmp_path):
    """--machine-rank 5 of 2 machines waited forever in Detectron2's launch: one line."""
    argv = ["--num-machines", "2", "--machine-rank", "5", "--config-file", SMOKE]
    proc = run_script("train_net.py", *argv, "OUTPUT_DIR", str(tmp_path / "o"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("ERROR: --num-gpus 1 --num-machines 2 --machine-rank 5: give --num-gpus >= 0")
    )


# -------------------------------------------------------------------------------------------------
# Annotations: the same ones dropped, with a count, in training and evaluation
# -------------------------------------------------------------------------------------------------
def _box_polygon(bbox):
    x, y, w, h = bbox
    return [x, y, x + w, y, x + w, y + h, x, y + h]


@pytest.fixture(scope="module")
def bad_annotations(datasets, tmp_path_factory):
    """A COCO copy of the generated validation split with invalid annotations; returns
    (dataset name, json file, {annotation id: what is wrong})."""
    meta = MetadataCatalog.get(PREFIX + "_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    annos = data["annotations"]
    assert len(annos) >= 8
    bad = {}
    for a, (what, change) in zip(
        annos,
        [
            ("4 coordinates", lambda a: dict(segmentation=[_box_polygon(a["bbox"])[:4]])),
            ("odd only", lambda a: dict(segmentation=[_box_polygon(a["bbox"])[:7]])),
            ("empty", lambda a: dict(segmentation=[])),
            ("zero width", lambda a: dict(bbox=[a["bbox"][0], a["bbox"][1], 0, a["bbox"][3]])),
            ("one odd polygon", lambda a: dict(segmentation=[_box_polygon(a["bbox"]), [1, 2, 3]])),
        ],
    ):
        a.update(change(a))
        bad[a["id"]] = what
    json_file = tmp_path_factory.mktemp("bad_annotations") / "instances.json"
    json_file.write_text(json.dumps(data))
    return (
        register_coco("t_bad_annotations", json_file, meta.image_root),
        str(json_file),
        bad,
        annos,
    )


def _kept_ids(name, json_file, masks):
    """The annotation ids that training keeps and those that evaluation keeps."""
    meta = MetadataCatalog.get(name)
    dicts = load_coco_json(json_file, meta.image_root, name, extra_annotation_keys=["id"])
    dicts = drop_invalid_annotations(dicts, [name], "DATASETS.TRAIN", masks)
    train = sorted(a["id"] for d in dicts for a in d["annotations"])
    coco = COCO(json_file)
    drop_invalid_coco_annotations(coco, name, masks)
    return train, sorted(coco.anns), coco


def test_invalid_annotations_dropped_alike(bad_annotations):
    name, json_file, bad, annos = bad_annotations
    ids = {a["id"]: what for a in annos for what in [bad.get(a["id"])]}
    with logged_messages("panet_d2.engine.checks") as logged:
        train, evaluation, coco = _kept_ids(name, json_file, masks=True)
    dropped = {"4 coordinates", "odd only", "empty", "zero width"}
    assert train == evaluation == sorted(i for i, what in ids.items() if what not in dropped)
    # the valid polygon of the annotation with an odd one is kept
    kept = [i for i, what in ids.items() if what == "one odd polygon"][0]
    assert len(coco.anns[kept]["segmentation"]) == 1
    coco.annToRLE(coco.anns[kept])  # pycocotools reads every annotation left
    for i in coco.anns:
        coco.annToRLE(coco.anns[i])
    # load_coco_json dropped the 2 without a valid polygon itself (with its own warning)
    assert logged == [
        "Dataset 't_bad_annotations' (DATASETS.TRAIN) from {!r}: dropped 2 of {} annotations (1 "
        "with an empty or no segmentation (MODEL.MASK_ON), 1 with a box of non-positive size); "
        "the first: image {!r} ({!r}). Evaluation drops the same ones.".format(
            json_file,
            len(annos) - 2,
            annos[2]["image_id"],
            [
                d["file_name"]
                for d in DatasetCatalog.get(name)
                if d["image_id"] == annos[2]["image_id"]
            ][0],
        ),
        "Dataset 't_bad_annotations' (evaluation ground truth from {!r}): dropped 4 of {} "
        "annotations (2 without a valid polygon, 1 with an empty or no segmentation "
        "(MODEL.MASK_ON), 1 with a box of non-positive size) and 1 polygon(s) with fewer than 6 "
        "coordinates or of odd length; the first: annotation {} of image {}. Training drops the "
        "same ones.".format(json_file, len(annos), annos[0]["id"], annos[0]["image_id"]),
    ]
    # a box model keeps an empty segmentation in both
    train, evaluation, _ = _kept_ids(name, json_file, masks=False)
    assert train == evaluation and len(train) == len(annos) - 3


def test_training_and_evaluation_on_invalid_annotations(train_net, bad_annotations, tmp_path):
    name = bad_annotations[0]
    data = ["DATASETS.TRAIN", "('{}',)".format(name), "DATASETS.TEST", "('{}',)".format(name)]
    results = _main(train_net, tmp_path, *data, "SOLVER.MAX_ITER", 1, "SOLVER.STEPS", "()")
    assert set(results) == {"bbox", "segm"}  # pycocotools evaluated the cleaned ground truth
    log = (tmp_path / "log.txt").read_text()
    assert "(DATASETS.TRAIN) from" in log and "Evaluation drops the same ones." in log
    assert "(evaluation ground truth from" in log and "Training drops the same ones." in log


def test_annotations_of_wrong_types_dropped_alike(datasets, tmp_path):
    """A bbox that is not 4 numbers, an iscrowd that is not 0 or 1: dropped by training and
    evaluation alike (tracebacks before: BoxMode.convert's, pycocotools' after training)."""
    meta = MetadataCatalog.get(PREFIX + "_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    annos = data["annotations"]
    changes = [dict(bbox="1,2,3,4"), dict(bbox=[1, 2, 3]), dict(iscrowd="no")]
    changes += [dict(bbox=[1, 2, "3", 4])]
    for a, change in zip(annos, changes):
        a.update(change)
    json_file = tmp_path / "types.json"
    json_file.write_text(json.dumps(data))
    name = register_coco("t_bad_types", json_file, meta.image_root)
    with logged_messages("panet_d2.engine.checks") as logged:
        train, evaluation, _ = _kept_ids(name, str(json_file), masks=True)
    assert train == evaluation == sorted(a["id"] for a in annos[len(changes) :])
    assert (
        "(3 with no bbox or one that is not 4 numbers (5: XYWHA_ABS), 1 with an iscrowd other "
        "than 0 or 1)" in logged[0]
    )
    # what Detectron2 reads is kept: an array, a tensor or a tuple; a rotated box; a bool iscrowd
    polygon = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0]]
    xyxy = dict(bbox_mode=BoxMode.XYXY_ABS, segmentation=polygon, category_id=0)
    annos = [
        dict(xyxy, bbox=np.array([10.0, 10, 30, 30])),
        dict(xyxy, bbox=torch.tensor([10, 10, 30, 30])),
    ]
    annos += [
        dict(xyxy, bbox=(10, 10, 30, 30), iscrowd=True),
        dict(xyxy, bbox=[10, 10, 30, 30], iscrowd=np.int64(0)),
    ]
    annos += [dict(xyxy, bbox=[20, 20, 20, 20, 30], bbox_mode=BoxMode.XYWHA_ABS)]
    record = dict(file_name="x.png", image_id=0, height=100, width=100, annotations=annos)
    assert drop_invalid_annotations([record], [name], "DATASETS.TRAIN", masks=True) == [record]


def test_all_annotations_invalid(datasets, tmp_path):
    meta = MetadataCatalog.get(PREFIX + "_val")
    with open(meta.json_file) as f:
        data = json.load(f)
    for a in data["annotations"]:
        a.pop("segmentation")
    json_file = tmp_path / "boxes_only.json"
    json_file.write_text(json.dumps(data))
    name = register_coco("t_boxes_only", json_file, meta.image_root)
    dicts = DatasetCatalog.get(name)
    with pytest.raises(DatasetError) as e:
        drop_invalid_annotations(dicts, [name], "DATASETS.TRAIN", masks=True)
    assert str(e.value) == (
        "Dataset 't_boxes_only' (DATASETS.TRAIN) from {!r}: all {} annotations are invalid: {} "
        "with an empty or no segmentation (MODEL.MASK_ON). A model with MODEL.MASK_ON needs a "
        "segmentation in every annotation.".format(str(json_file), *[len(data["annotations"])] * 2)
    )
    assert drop_invalid_annotations(dicts, [name], "DATASETS.TRAIN", masks=False) == dicts
