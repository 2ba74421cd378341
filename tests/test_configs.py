# -*- coding: utf-8 -*-
"""
Every config under configs/ builds a model that trains one step and runs inference.

The configs' structure is kept (meta-architecture, backbone depth and groups, BPA/AFP/FF/HHD
switches and options, norms, heads' layer counts, class counts); only channel widths are narrowed
so that ~45 models run in a few seconds each on 2 CPU cores.
"""

import glob
import os

import pytest
import torch

from detectron2.modeling import build_model

from .common import CONFIG_DIR, NARROW_HEADS, panet_cfg, train_step_and_infer

CONFIGS = sorted(
    os.path.relpath(p, CONFIG_DIR)
    for p in glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True)
)


def test_configs_found():
    assert "Base-PANet.yaml" in CONFIGS and len(CONFIGS) > 40


NARROW = (
    ["MODEL.RESNETS.STEM_OUT_CHANNELS", 32, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    + NARROW_HEADS
    + ["MODEL.ROI_BOX_HEAD.CONV_DIM", 64, "MODEL.SEM_SEG_HEAD.CONVS_DIM", 32]
)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_one_step_and_infers(config):
    cfg = panet_cfg(config)
    groups = cfg.MODEL.RESNETS.NUM_GROUPS
    cfg.merge_from_list(
        NARROW + ["MODEL.RESNETS.WIDTH_PER_GROUP", 16 // groups if groups < 16 else 1]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    h, w = 64, 96
    panoptic = cfg.MODEL.META_ARCHITECTURE in ("PanopticPANet", "PanopticFPN")
    sem_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if panoptic else None
    out = train_step_and_infer(model, cfg.MODEL.ROI_HEADS.NUM_CLASSES, sem_classes, h, w)
    assert "instances" in out
    if cfg.MODEL.META_ARCHITECTURE == "PanopticPANet":
        seg, info = out["panoptic_seg"]
        assert seg.shape == (h, w) and isinstance(info, list)
        assert out["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, h, w)
