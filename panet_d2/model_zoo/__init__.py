# -*- coding: utf-8 -*-
"""
PANet's model zoo, as :mod:`detectron2.model_zoo`: the configs of ``configs/`` by relative path,
e.g. ``model_zoo.get_config("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")``.
"""

from .model_zoo import (
    RELEASE_MODELS,
    get,
    get_checkpoint_url,
    get_config,
    get_config_file,
    list_configs,
)

__all__ = [
    "get",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "list_configs",
    "RELEASE_MODELS",
]
