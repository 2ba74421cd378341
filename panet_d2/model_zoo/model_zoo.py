"""PANet's model zoo, as :mod:`detectron2.model_zoo`: configs by their path in ``configs/``."""

import os
from typing import List, Optional, Union

import torch
from omegaconf import DictConfig

from detectron2.config import CfgNode
from detectron2.modeling import build_model

from ..checkpoint import PANetCheckpointer
from ..config import instantiate_model, load_config_file
from ..errors import ConfigError, check_device

_HERE = os.path.dirname(os.path.abspath(__file__))
_PACKAGE_CONFIG_DIR = os.path.join(_HERE, "configs")  # made by setup.py
_SOURCE_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "configs")
_MARKER = "Base-PANet.yaml"  # only PANet's config tree has it
_CONFIG_EXTENSIONS = (".yaml", ".py")

# The authors' trained models (COCO 2017 val) by the config that computes them once converted
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
    dirs = dict.fromkeys((_PACKAGE_CONFIG_DIR, _SOURCE_CONFIG_DIR))
    return [d for d in dirs if os.path.isfile(os.path.join(d, _MARKER))]


def list_configs() -> List[str]:
    """The sorted relative paths (list[str]) of all model-zoo configs, yacs and LazyConfig."""
    found = set()
    for d in _config_dirs():
        for dirpath, _, names in os.walk(d, followlinks=True):
            for name in names:
                if name.endswith(_CONFIG_EXTENSIONS) and name != "__init__.py":
                    rel = os.path.relpath(os.path.join(dirpath, name), d)
                    found.add(rel.replace(os.sep, "/"))
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """The path of ``config_path`` (relative to PANet's ``configs/``, e.g.
    "COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml"; a path out of it: ConfigError)."""
    rel = os.path.normpath(config_path) if isinstance(config_path, str) and config_path else ""
    outside = not rel or os.path.isabs(rel) or rel.split(os.sep)[0] == os.pardir
    if outside or not rel.endswith(_CONFIG_EXTENSIONS):
        raise ConfigError(
            "model_zoo takes a config's path relative to PANet's configs/ directory, ending in "
            ".yaml or .py (e.g. 'COCO-InstanceSegmentation/panet_R_50_FPN_1x.yaml'; "
            f"list_configs() lists them), not {config_path!r}; load another file with "
            "panet_d2.config.load_config_file(path)."
        )
    dirs = _config_dirs()
    for d in dirs:
        cfg_file = os.path.join(d, rel)
        if os.path.isfile(cfg_file):
            real_dir, real = os.path.realpath(d), os.path.realpath(cfg_file)
            if os.path.commonpath([real_dir, real]) != real_dir:  # a link out of configs/
                raise ConfigError(
                    "model_zoo resolves only files inside PANet's configs/ directory: "
                    f"{config_path!r} leads to {real} (outside {real_dir})."
                )
            return cfg_file
    if not dirs:
        raise RuntimeError(
            f"PANet's model-zoo configs are not available: neither {_PACKAGE_CONFIG_DIR} "
            f"(installed package) nor {_SOURCE_CONFIG_DIR} (source checkout) holds them. Reinstall "
            "panet_d2 (pip install .) or run from the repository."
        )
    raise RuntimeError(
        f"{config_path} not available in PANet's model zoo (looked in {', '.join(dirs)}). "
        f"Available configs: {', '.join(list_configs())}"
    )


def _no_trained_weights(config_path: str) -> RuntimeError:
    """What a request for ``config_path``'s trained weights gets: where the authors' model is, or
    that there is none."""
    key = os.path.normpath(config_path).replace(os.sep, "/")  # "./COCO-Detection/x.yaml" too
    if key in RELEASE_MODELS:
        what, url = RELEASE_MODELS[key]
        return RuntimeError(
            f"panet_d2 does not host trained weights for {key!r}. The authors' model it computes "
            f"({what}) is linked from their release's README (github.com/ShuLiu1993/PANet): {url} "
            ". Download it (model_step*.pth), convert it with python3 "
            "tools/convert_panet_release.py model_step*.pth converted.pth and load it with "
            f"get_config({key!r}) and MODEL.WEIGHTS=converted.pth (or train_net.py / demo.py ... "
            "MODEL.WEIGHTS converted.pth)."
        )
    return RuntimeError(
        f"No trained PANet model is published for {config_path!r}: panet_d2 ships configs "
        "only. Train one with train_net.py and load it with MODEL.WEIGHTS=/path/to/"
        "model_final.pth (or PANetCheckpointer(model).load(path)), or convert the authors' "
        "release model with tools/convert_panet_release.py; use trained=False for the "
        "config's own MODEL.WEIGHTS (ImageNet-pretrained backbone or from scratch)."
    )


def get_checkpoint_url(config_path: str) -> str:
    """Detectron2's ``model_zoo.get_checkpoint_url``: panet_d2 hosts no trained weights, so a
    RuntimeError that says where the authors' are (or that there are none)."""
    get_config_file(config_path)  # a path that is no config: its own error
    raise _no_trained_weights(config_path)


def get_config(config_path: str, trained: bool = False) -> Union[CfgNode, DictConfig]:
    """The CfgNode (``.yaml``) or LazyConfig (``.py``) of a model-zoo config. ``trained=True``
    asks for trained weights, which panet_d2 does not publish: a RuntimeError says how."""
    cfg_file = get_config_file(config_path)
    if trained:
        raise _no_trained_weights(config_path)
    return load_config_file(cfg_file)


def get(config_path: str, trained: bool = False, device: Optional[str] = None):
    """The model of a model-zoo config in training mode, MODEL.WEIGHTS (``train.init_checkpoint``)
    loaded as a warm start, on ``device`` (None: the config's, "cpu" without CUDA)."""
    cfg = get_config(config_path, trained)
    if device is not None:
        check_device("device", device)
        device = str(device)  # (a torch.device too)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: CUDA is not available here; give 'cpu' or None.")
    device = "cpu" if device is None and not torch.cuda.is_available() else device
    if isinstance(cfg, CfgNode):
        if device is not None:
            cfg.MODEL.DEVICE = device
        model, weights = build_model(cfg), cfg.MODEL.WEIGHTS
    else:  # a LazyConfig, as Detectron2's model_zoo.get
        model = instantiate_model(cfg)
        model = model if device is None else model.to(device)
        weights = cfg.train.init_checkpoint if "init_checkpoint" in cfg.get("train", {}) else None
    if weights is not None:
        PANetCheckpointer(model, warm_start=True).load(weights)
    return model
