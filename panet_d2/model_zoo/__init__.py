# -*- coding: utf-8 -*-
"""
PANet's model zoo, in the manner of :mod:`detectron2.model_zoo`: the configs of ``configs/``
(shipped inside the package as ``panet_d2/model_zoo/configs``) by their relative path.

    from panet_d2 import model_zoo
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml")  # CfgNode
    lazy = model_zoo.get_config("new_baselines/panet_R_50_FPN_100ep_LSJ.py")  # LazyConfig
    model = model_zoo.get("quick_schedules/panet_R_18_synth_instance.yaml", device="cpu")
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
