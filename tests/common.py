# -*- coding: utf-8 -*-
"""Shared helpers of the tests: small configs, images and annotations."""

import os

import torch

from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances

from panet_d2 import add_panet_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def panet_cfg(config="Base-PANet.yaml", small=True, opts=()):
    """A PANet config on the CPU; ``small`` shrinks sampling sizes (not the architecture)."""
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if small:
        cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
        cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.merge_from_list(list(opts))
    return cfg


def random_image(h=128, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 255


def toy_instances(h=128, w=160, num_classes=80):
    """Two boxes with box-shaped masks."""
    boxes = torch.tensor([[10.0, 20.0, 90.0, 110.0], [50.0, 40.0, 150.0, 120.0]])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([1 % num_classes, 5 % num_classes])
    inst.gt_masks = BitMasks(masks)
    return inst
