# -*- coding: utf-8 -*-
"""Datasets and dataset mappers of panet_d2. Importing this registers the generated dataset."""
from . import synthetic as _synthetic  # registers the generated dataset
from . import coco_panoptic as _coco_panoptic  # registers coco_2017_*_panoptic_panet (lazy)
from .panoptic_mapper import PanopticDatasetMapper, PanopticLabelSpace  # noqa: F401
