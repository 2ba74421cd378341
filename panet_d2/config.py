# -*- coding: utf-8 -*-
"""PANet's config keys (:func:`add_panet_config`; table numbers: Liu et al., "Path Aggregation
Network for Instance Segmentation", CVPR 2018) and :func:`load_config_file`, the one loader of
yacs and LazyConfig files, which reads YAML as data."""

import contextlib
import os
import re

import yaml
from omegaconf import OmegaConf

from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig, get_cfg
from detectron2.utils.file_io import PathManager

from .errors import ConfigError, InputError

# Values accepted by the keys below (`check_choice` names them). Norm keys take any norm of
# Detectron2's `get_norm`: "" (none), "GN", "BN", "SyncBN", ..., or a callable (LazyConfig).
PAFPN_ACTIVATIONS = ("relu", "none", "relu_if_norm")
AFP_FUSE_TYPES = ("max", "sum")
AFP_FUSE_POSITIONS = ("after_first_layer", "before_first_layer")
FF_START_LAYERS = (2, 3, 4)
FF_FUSE_TYPES = ("sum", "max", "product")
FF_FC_INITS = ("xavier", "normal")
MASK_PREDICTOR_INITS = ("normal", "msra")
# Options that switch every PANet component off: Detectron2's Mask R-CNN (test_panet_model.py).
MASK_RCNN_OPTS = (
    "MODEL.BACKBONE.NAME",
    "build_resnet_fpn_backbone",
    "MODEL.AFP.ENABLED",
    False,
    "MODEL.FF.ENABLED",
    False,
)


def add_panet_config(cfg):
    """Add the config keys of PANet (bottom-up path augmentation, adaptive feature pooling,
    fully-connected fusion) to a Detectron2 config. The panoptic model uses Detectron2's
    MODEL.PANOPTIC_FPN.* keys."""
    # Bottom-up path augmentation (Sec. 3.1), on with MODEL.BACKBONE.NAME
    # "build_resnet_pafpn_backbone". Norm after each new 3x3 conv ("", "GN", "SyncBN": the
    # paper's MBN, Table 3).
    cfg.MODEL.PAFPN = CN()
    cfg.MODEL.PAFPN.NORM = ""
    # Activation after each new conv: "relu" (paper), "none" (mmdetection), "relu_if_norm"
    # (the authors' release).
    cfg.MODEL.PAFPN.ACTIVATION = "relu"
    # A bias on each new conv even before a norm: False (Detectron2's rule), True (the authors'
    # release, needed to load its converted models).
    cfg.MODEL.PAFPN.CONV_BIAS = False

    # Adaptive feature pooling (Sec. 3.2): every RoI pooled from every level, a first layer per
    # level, then fused; needs ROI_BOX_HEAD.NAME "PANetConvFCHead", ROI_MASK_HEAD.NAME
    # "PANetMaskHead".
    cfg.MODEL.AFP = CN()
    cfg.MODEL.AFP.ENABLED = True
    cfg.MODEL.AFP.FUSE_TYPE = "max"  # element-wise fusion: "max" (paper) or "sum" (Table 4)
    # Where the box branch fuses: "after_first_layer" (after the per-level fc1 / conv1, "fc1fu.fc2"
    # in Table 4, paper) or "before_first_layer" (fuse the RoIAlign grids, "fu.fc1fc2").
    cfg.MODEL.AFP.BOX_FUSE_POSITION = "after_first_layer"
    cfg.MODEL.AFP.MASK_FUSE_POSITION = "after_first_layer"  # same for the mask branch (conv1)
    # RoIAlign samples per bin side of the all-level poolers; 0 = adaptive; 2 = the authors'
    # release, Detectron and mmdetection.
    cfg.MODEL.AFP.POOLER_SAMPLING_RATIO = 2
    # Norm after every fc of the box head ("" = Detectron2's, "SyncBN" = MBN, "GN" = release).
    cfg.MODEL.ROI_BOX_HEAD.FC_NORM = ""

    # Fully-connected fusion in the mask branch (Sec. 3.3).
    cfg.MODEL.FF = CN()
    cfg.MODEL.FF.ENABLED = True
    cfg.MODEL.FF.START_LAYER = 3  # the fc path starts after conv<START_LAYER>: 2, 3 (paper), 4
    # Fusion of the class-agnostic fc mask with each class's FCN mask logits: "sum" (paper),
    # "max" or "product" (Table 5).
    cfg.MODEL.FF.FUSE_TYPE = "sum"
    cfg.MODEL.FF.CONV_DIMS = [256, 128]  # channels of the two 3x3 convs of the fc path
    cfg.MODEL.FF.FC_ACTIVATION = False  # ReLU on the fc output: False (paper), True (release)
    # Initialisation of the fc: "xavier" (Detectron2's c2_xavier_fill) or "normal" (normal(0,
    # 0.01), the release).
    cfg.MODEL.FF.FC_INIT = "xavier"

    # How the authors' release trains where Detectron2 differs (docs/release_parity.md): the mask
    # predictor's init, "normal" (Detectron2's) or "msra" (the release's MSRAFill) ...
    cfg.MODEL.ROI_MASK_HEAD.PREDICTOR_INIT = "normal"
    # ... and SGD's momentum buffers rescaled when the rate steps (Detectron's SCALE_MOMENTUM;
    # read by PANetTrainer, refused by Detectron2's own training scripts).
    cfg.SOLVER.SCALE_MOMENTUM = False
    return cfg


def read_config_data(filename, where=None):
    """
    The YAML config file ``filename`` as plain data: ``yaml.safe_load`` (a Python tag is refused,
    nothing runs), a YAML alias refused before anything is expanded.

    Args:
        where (str or None): how messages name the file (default "Config file '<filename>'").

    Returns:
        the parsed data (None for an empty file).

    Raises:
        ConfigError: one line naming the file.
    """
    where = where or "Config file {!r}".format(filename)
    try:
        with PathManager.open(filename) as f:
            alias = next((e for e in yaml.parse(f) if isinstance(e, yaml.AliasEvent)), None)
            if alias is not None:
                raise ConfigError(
                    "{} uses a YAML alias (*{}, line {}): config files are plain data, "
                    "write the value out.".format(where, alias.anchor, alias.start_mark.line + 1)
                )
            f.seek(0)
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        what = "holds a Python tag (config files are read as data, with yaml.safe_load)"
        what = what if isinstance(e, yaml.constructor.ConstructorError) else "is not valid YAML"
        raise ConfigError("{} {}: {}".format(where, what, " ".join(str(e).split()))) from None
    except (OSError, UnicodeError) as e:
        raise ConfigError("{} cannot be read: {}".format(where, e)) from None


class _CheckedConfigFile(CN):
    """fvcore's ``load_yaml_with_base`` (for the file and each ``_BASE_``) with each file first
    checked as data (:func:`read_config_data`), and ``allow_unsafe=False`` whatever the caller
    passes (Detectron2's tools pass True)."""

    _chain = []  # (path, real path) of the files being read, outermost first

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe=False):
        if not isinstance(filename, str) or "://" in filename:  # a URL: fvcore reads it
            return super().load_yaml_with_base(filename, allow_unsafe=False)
        base_of = cls._chain[-1][0] if cls._chain else None
        where = "Config file {!r}".format(filename)
        if base_of is not None:
            where = "The _BASE_ {!r} of config file {!r}".format(filename, base_of)
        if os.path.realpath(filename) in (real for _, real in cls._chain):
            raise ConfigError("{} inherits from itself through _BASE_.".format(where))
        if not os.path.isfile(filename):
            raise ConfigError(
                "{} does not exist{}.".format(
                    where, " (a _BASE_ is relative to the file that names it)" if base_of else ""
                )
            )
        data = read_config_data(filename, where)
        if data is None:
            raise ConfigError("{} is empty: give it _BASE_ or config keys.".format(where))
        if not isinstance(data, dict):
            raise ConfigError(
                "{} holds a YAML {} instead of config keys.".format(where, type(data).__name__)
            )
        cls._chain.append((filename, os.path.realpath(filename)))
        try:
            return super().load_yaml_with_base(filename, allow_unsafe=False)
        finally:
            cls._chain.pop()


# Detectron2's own LazyConfig.load, while lazyconfig_files_as_data() stands in for it
_D2_LAZY_LOAD = LazyConfig.__dict__["load"]


def load_lazy_config(filename, keys=None):
    """
    Detectron2's ``LazyConfig.load(filename, keys)``, with ``.yaml`` / ``.yml`` files read as data
    (:func:`read_config_data`, where Detectron2 uses ``yaml.unsafe_load``). A ``.py`` file is
    Python code, run as it loads, as in Detectron2.

    Raises:
        ConfigError: one line naming the file (a syntax error as "file:line").
    """
    if os.path.splitext(filename)[1] not in (".yaml", ".yml"):
        try:
            return _D2_LAZY_LOAD.__func__(filename, keys)
        except InputError:
            raise
        except Exception as e:  # the file's syntax error or its own exception, omegaconf
            raise config_error(filename, e) from None
    data = read_config_data(filename)
    if not isinstance(data, dict):
        raise ConfigError(
            "Config file {!r} holds {} instead of LazyConfig keys (model, train, ...).".format(
                filename, "nothing" if data is None else "a YAML " + type(data).__name__
            )
        )
    cfg = OmegaConf.create(data, flags={"allow_objects": True})
    if keys is None:
        return cfg
    missing = [k for k in ([keys] if isinstance(keys, str) else keys) if k not in cfg]
    if missing:
        raise ConfigError("Config file {!r} has no key {}.".format(filename, missing[0]))
    return cfg[keys] if isinstance(keys, str) else tuple(cfg[k] for k in keys)


# UPSTREAM-WORKAROUND lazyconfig-yaml-unsafe-load: Detectron2 0.6 LazyConfig.load reads a .yaml
# with yaml.unsafe_load (a Python tag runs).
@contextlib.contextmanager
def lazyconfig_files_as_data():
    """While the block runs, Detectron2's ``LazyConfig.load`` (and ``load_rel``, and the calls
    of Detectron2's scripts and of config files) is :func:`load_lazy_config`."""
    saved = LazyConfig.__dict__["load"]
    LazyConfig.load = staticmethod(load_lazy_config)
    try:
        yield
    finally:
        LazyConfig.load = saved


def config_error(path, e, what="Config file"):
    """A :class:`ConfigError` for exception ``e`` raised while loading config file ``path``: a
    syntax error as "file:line: message", others with their type and message."""
    if isinstance(e, SyntaxError) and e.lineno is None and isinstance(e.__cause__, SyntaxError):
        # LazyConfig's "Config file <file> has syntax error!" (of the file or of a file it
        # imports) drops the line: its cause has it, the file only in that message
        named = re.fullmatch(r"Config file (.+) has syntax error!", str(e.msg))
        path = named.group(1) if named else path
        e = e.__cause__
    if isinstance(e, SyntaxError):
        file = e.filename if e.filename and not e.filename.startswith("<") else path
        where = "{}:{}".format(file, e.lineno) if e.lineno else path
        code = " ({})".format(e.text.strip()) if e.text and e.text.strip() else ""
        return ConfigError("{} {}: {}: {}{}".format(what, where, type(e).__name__, e.msg, code))
    return ConfigError(
        "{} {!r}: {}: {}".format(what, path, type(e).__name__, " ".join(str(e).split()))
    )


def load_config_file(path, opts=(), lazy=True, key="--config-file"):
    """
    The config of file ``path`` with the command-line options ``opts`` (not frozen): a ``.py``
    file (when ``lazy``) is a LazyConfig (options "key=value"; Python code, run as it loads, its
    YAML files read as data); any other a yacs file (options KEY VALUE) on Detectron2's defaults
    with PANet's keys, its ``_BASE_`` files checked as they are read.

    Raises:
        ConfigError: naming the file (and line; a base as the base of which file) or the options.
    """
    opts = list(opts or [])
    if not os.path.isfile(path):
        raise ConfigError("Config file {!r} ({}) does not exist.".format(path, key))
    if lazy and path.endswith(".py"):
        try:
            with lazyconfig_files_as_data():
                return LazyConfig.apply_overrides(LazyConfig.load(path), opts)
        except InputError:
            raise
        except Exception as e:  # omegaconf, hydra, the file's syntax error
            raise config_error(path, e) from None
    _CheckedConfigFile.load_yaml_with_base(path)
    cfg = add_panet_config(get_cfg())
    options = "The command-line options {} (on {!r})".format(opts, path)
    for where, merge in [
        ("Config file {!r}".format(path), lambda: cfg.merge_from_file(path, allow_unsafe=False)),
        (options, lambda: cfg.merge_from_list(opts)),
    ]:
        try:
            merge()
        except InputError:
            raise
        except Exception as e:  # yacs: unknown key, wrong type, odd number of options
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ConfigError("{}: {}".format(where, msg)) from e
    return cfg
