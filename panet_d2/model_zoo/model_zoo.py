# -*- coding: utf-8 -*-
"""PANet's model zoo: configs by their path relative to ``configs/``, with the functions and
arguments of :mod:`detectron2.model_zoo` (where the configs are found: docs/design.md)."""

import os
from typing import List, Optional, Union

import torch
from omegaconf import DictConfig

from detectron2.config import CfgNode, instantiate
from detectron2.modeling import build_model

from ..checkpoint import PANetCheckpointer
from ..config import load_config_file
from ..errors import ConfigError

__all__ = ["get_config_file", "get_config", "get", "list_configs", "RELEASE_MODELS"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_CONFIG_DIR = os.path.join(_HERE, "configs")  # made by setup.py
_SOURCE_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "configs")
_MARKER = "Base-PANet.yaml"  # only PANet's config tree has it
_CONFIG_EXTENSIONS = (".yaml", ".py")

# The authors' trained models (their README's "Main Results", COCO 2017 val) and the configs that
# compute them once converted by tools/convert_panet_release.py.
RELEASE_MODELS = {
    "COCO-Detection/panet_R_50_FPN_release_1x.yaml": (
        "R-50-PANet, Faster, 1x (box AP 39.8)",
        "https://drive.google.com/file/d/1_ahNQHY3D4mbsMWHR2FwmItBkLwYOrS4/view?usp=sharing",
    ),
    "COCO-Detection/panet_R_50_FPN_release_2fc_1x.yaml": (
        "R-50-PANet-2fc, Faster, 1x (box AP 39.6)",
        "https://drive.google.com/file/d/1s-xm8GxHbmnt5M3gOMacXIRMvCGaDeRR/view?usp=sharing",
    ),
    "COCO-InstanceSegmentation/panet_R_50_FPN_release_2x.yaml": (
        "R-50-PANet, Mask, 2x (box AP 43.1, mask AP 38.3)",
        "https://drive.google.com/file/d/1-pVZQ3GR6Aj7KJzH9nWoRQ-Lts8IcdMS/view?usp=sharing",
    ),
}


def _config_dirs() -> List[str]:
    dirs = (_PACKAGE_CONFIG_DIR, _SOURCE_CONFIG_DIR)
    found = [d for d in dirs if os.path.isfile(os.path.join(d, _MARKER))]
    return list(dict.fromkeys(found))


def list_configs() -> List[str]:
    """
    Returns:
        list[str]: the sorted relative paths of all model-zoo configs, yacs and LazyConfig files.
    """
    found = set()
    for d in _config_dirs():
        for dirpath, _, names in os.walk(d, followlinks=True):
            for name in names:
                if name.endswith(_CONFIG_EXTENSIONS) and name != "__init__.py":
                    rel = os.path.relpath(os.path.join(dirpath, name), d)
                    found.add(rel.replace(os.sep, "/"))
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """
    Returns path to a builtin config file.

    Args:
        config_path (str): config file name relative to PANet's "configs/" directory, e.g.,
            "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml"; a path out of it is refused.

    Raises:
        ConfigError: (a ValueError) ``config_path`` is not a path inside ``configs/``.
        RuntimeError: no such config.
    """
    rel = os.path.normpath(config_path) if isinstance(config_path, str) and config_path else ""
    if (
        not rel
        or os.path.isabs(rel)
        or rel.split(os.sep)[0] == os.pardir
        or not rel.endswith(_CONFIG_EXTENSIONS)
    ):
        raise ConfigError(
            "model_zoo takes a config's path relative to PANet's configs/ directory, ending in "
            ".yaml or .py (e.g. 'COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml'; "
            "list_configs() lists them), not {!r}; load another file with "
            "panet_d2.config.load_config_file(path).".format(config_path)
        )
    dirs = _config_dirs()
    for d in dirs:
        cfg_file = os.path.join(d, rel)
        if os.path.isfile(cfg_file):
            real_dir, real = os.path.realpath(d), os.path.realpath(cfg_file)
            if os.path.commonpath([real_dir, real]) != real_dir:  # a link out of configs/
                raise ConfigError(
                    "model_zoo resolves only files inside PANet's configs/ directory: {!r} "
                    "leads to {} (outside {}).".format(config_path, real, real_dir)
                )
            return cfg_file
    if not dirs:
        raise RuntimeError(
            "PANet's model-zoo configs are not available: neither {} (installed package) nor {} "
            "(source checkout) holds them. Reinstall panet_d2 (pip install .) or run from the "
            "repository.".format(_PACKAGE_CONFIG_DIR, _SOURCE_CONFIG_DIR)
        )
    raise RuntimeError(
        "{} not available in PANet's model zoo (looked in {}). Available configs: {}".format(
            config_path, ", ".join(dirs), ", ".join(list_configs())
        )
    )


def _no_trained_weights(config_path: str) -> RuntimeError:
    """The one-line refusal of ``trained=True``: panet_d2 publishes no trained weights."""
    if config_path in RELEASE_MODELS:
        what, url = RELEASE_MODELS[config_path]
        return RuntimeError(
            "panet_d2 does not host trained weights for {!r}. The authors' model it computes "
            "({}) is linked from their release's README (github.com/ShuLiu1993/PANet): {} . "
            "Download it (model_step*.pth), convert it with "
            "python3 tools/convert_panet_release.py model_step*.pth converted.pth "
            "and load it with get_config({!r}) and MODEL.WEIGHTS=converted.pth (or "
            "train_net.py / demo.py ... MODEL.WEIGHTS converted.pth).".format(
                config_path, what, url, config_path
            )
        )
    return RuntimeError(
        "No trained PANet model is published for {!r}: panet_d2 ships configs only. Train one "
        "with train_net.py and load it with MODEL.WEIGHTS=/path/to/model_final.pth (or "
        "PANetCheckpointer(model).load(path)), or convert the authors' release model with "
        "tools/convert_panet_release.py; use trained=False for the config's own "
        "MODEL.WEIGHTS (ImageNet-pretrained backbone or from scratch).".format(config_path)
    )


def get_config(config_path: str, trained: bool = False) -> Union[CfgNode, DictConfig]:
    """
    Returns a config object for a model in model zoo.

    Args:
        config_path (str): config file name relative to PANet's "configs/" directory.
        trained (bool): True asks for trained weights, which panet_d2 does not publish: a
            RuntimeError says how to get them (the release configs: the authors' model).

    Returns:
        CfgNode (a ``.yaml``: Detectron2's defaults + PANet's keys + the file) or
        omegaconf.DictConfig (a ``.py`` LazyConfig, Python code run as it loads).
    """
    cfg_file = get_config_file(config_path)
    if trained:
        raise _no_trained_weights(config_path)
    return load_config_file(cfg_file)


def get(config_path: str, trained: bool = False, device: Optional[str] = None):
    """
    Get a model specified by relative path under PANet's ``configs/`` directory.

    Args:
        config_path (str): config file name relative to PANet's "configs/" directory.
        trained (bool): see :func:`get_config`.
        device (str or None): overwrite the device in config, if given ("cpu" when None and
            CUDA is not available).

    Returns:
        nn.Module: in training mode, with the config's MODEL.WEIGHTS (a LazyConfig's
        ``train.init_checkpoint``) loaded as a warm start ("" builds it from scratch).
    """
    cfg = get_config(config_path, trained)
    if device is None and not torch.cuda.is_available():
        device = "cpu"
    if not isinstance(cfg, CfgNode):  # a LazyConfig, as Detectron2's model_zoo.get
        model = instantiate(cfg.model)
        if device is not None:
            model = model.to(device)
        if "train" in cfg and "init_checkpoint" in cfg.train:
            PANetCheckpointer(model, warm_start=True).load(cfg.train.init_checkpoint)
        return model
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    PANetCheckpointer(model, warm_start=True).load(cfg.MODEL.WEIGHTS)
    return model
