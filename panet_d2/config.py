# -*- coding: utf-8 -*-
"""
Config keys of PANet (defaults: the paper's choices; table numbers refer to Liu et al., "Path
Aggregation Network for Instance Segmentation", CVPR 2018) and :func:`load_config_file`, the one
loader of yacs and LazyConfig files.
"""

import contextlib
import os
import re

import yaml
from omegaconf import OmegaConf

from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig, get_cfg
from detectron2.utils.file_io import PathManager

from .errors import ConfigError, InputError

# Values accepted by the keys below; `check_choice` names them in its errors. Norm keys take any
# norm of Detectron2's `get_norm`: "" (none), "GN", "BN", "SyncBN", ..., or a callable (LazyConfig).
PAFPN_ACTIVATIONS = ("relu", "none", "relu_if_norm")
AFP_FUSE_TYPES = ("max", "sum")
AFP_FUSE_POSITIONS = ("after_first_layer", "before_first_layer")
FF_START_LAYERS = (2, 3, 4)
FF_FUSE_TYPES = ("sum", "max", "product")
FF_FC_INITS = ("xavier", "normal")
MASK_PREDICTOR_INITS = ("normal", "msra")
# Options that switch every PANet component off (bottom-up path, adaptive feature pooling,
# fully-connected fusion): with a config's defaults otherwise, Detectron2's Mask R-CNN (same
# parameter names, shapes and outputs; tests/test_panet_model.py).
MASK_RCNN_OPTS = (
    "MODEL.BACKBONE.NAME",
    "build_resnet_fpn_backbone",
    "MODEL.AFP.ENABLED",
    False,
    "MODEL.FF.ENABLED",
    False,
)


def add_panet_config(cfg):
    """
    Add the config keys of PANet (bottom-up path augmentation, adaptive feature pooling,
    fully-connected fusion) and of the panoptic model to a Detectron2 config.
    """
    # ---------------------------------------------------------------------------------------------
    # Bottom-up path augmentation (BPA), Sec. 3.1. Switched on by
    # MODEL.BACKBONE.NAME = "build_resnet_pafpn_backbone"; the keys below configure its new layers.
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.PAFPN = CN()
    # Norm after each new 3x3 conv of the bottom-up path: "" (none), "GN", "BN", "SyncBN" ...
    # The paper's MBN setting (Table 3) puts SyncBN after every new layer (with MODEL.FPN.NORM,
    # ROI_BOX_HEAD.NORM / FC_NORM and ROI_MASK_HEAD.NORM: see configs/ablations/README.md).
    cfg.MODEL.PAFPN.NORM = ""
    # Activation after each new conv. "relu": the paper ("all convolutional layers are followed by
    # a ReLU"); "none": mmdetection's PAFPN; "relu_if_norm": the authors' release (ReLU only
    # together with a norm).
    cfg.MODEL.PAFPN.ACTIVATION = "relu"
    # A bias on each new conv even when a norm follows it. False: Detectron2's rule (a bias only
    # without a norm; the default, and the layout of every checkpoint saved before this key);
    # True: the authors' release (`panet_buttomup_conv{1,2}_modules`: conv with bias, then GN),
    # needed to load its trained models (tools/convert_panet_release.py): a bias before GN
    # shifts the GN statistics of each channel and cannot be folded into other weights.
    cfg.MODEL.PAFPN.CONV_BIAS = False

    # ---------------------------------------------------------------------------------------------
    # Adaptive feature pooling (AFP), Sec. 3.2: every RoI is pooled from every level of
    # MODEL.ROI_HEADS.IN_FEATURES; each level's grid passes its own first layer; then the grids are
    # fused element-wise. Needs ROI_BOX_HEAD.NAME "PANetConvFCHead" and ROI_MASK_HEAD.NAME
    # "PANetMaskHead".
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.AFP = CN()
    cfg.MODEL.AFP.ENABLED = True
    # Element-wise fusion of the per-level grids: "max" (paper) or "sum" (Table 4).
    cfg.MODEL.AFP.FUSE_TYPE = "max"
    # Where the box branch fuses: "after_first_layer" = "fc1fu.fc2" in Table 4 (paper), i.e.
    # after the per-level fc1 (after the per-level conv1 for a conv head such as the heavier head);
    # "before_first_layer" = "fu.fc1fc2": fuse the RoIAlign grids, then a shared head.
    cfg.MODEL.AFP.BOX_FUSE_POSITION = "after_first_layer"
    # Same for the mask branch: "after_first_layer" fuses between conv1 and conv2 (paper).
    cfg.MODEL.AFP.MASK_FUSE_POSITION = "after_first_layer"
    # RoIAlign samples per bin side of the all-level poolers of both branches (Detectron2's
    # POOLER_SAMPLING_RATIO, which these poolers replace). 0 = adaptive, ceil(RoI size / bin size):
    # a large RoI pooled from N2 then takes hundreds of samples per bin on every level. 2 = the
    # authors' release (ROI_XFORM_SAMPLING_RATIO: 2), Detectron (v1) and mmdetection (default).
    cfg.MODEL.AFP.POOLER_SAMPLING_RATIO = 2
    # Norm after every fc of the box head: the per-level fc1 and fc2 of the 2fc head, the fc of
    # the heavier head ("" = none, Detectron2's head; "SyncBN" = the paper's MBN; "GN" = the
    # authors' release). The convs of the heads use ROI_BOX_HEAD.NORM / ROI_MASK_HEAD.NORM, the
    # per-level conv1 and FF's convs included.
    cfg.MODEL.ROI_BOX_HEAD.FC_NORM = ""

    # ---------------------------------------------------------------------------------------------
    # Fully-connected fusion (FF) in the mask branch, Sec. 3.3.
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.FF = CN()
    cfg.MODEL.FF.ENABLED = True
    # The short fc path starts from the output of conv<START_LAYER> of the mask FCN: 2, 3 (paper),
    # or 4 (Table 5).
    cfg.MODEL.FF.START_LAYER = 3
    # How the class-agnostic fc mask is fused with every class's FCN mask logits:
    # "sum" (paper), "max" or "product" (Table 5).
    cfg.MODEL.FF.FUSE_TYPE = "sum"
    # Channels of the two 3x3 convs of the short path; the second halves the channels (paper).
    cfg.MODEL.FF.CONV_DIMS = [256, 128]
    # ReLU on the fc output: False in the paper, True in the authors' release.
    cfg.MODEL.FF.FC_ACTIVATION = False
    # Initialisation of the fc: "xavier" (Detectron2's c2_xavier_fill, as its other fcs; the
    # paper does not say) or "normal" (normal(0, 0.01), the authors' release).
    cfg.MODEL.FF.FC_INIT = "xavier"
    _add_release_training_keys(cfg)

    # The panoptic model (PanopticPANet) reuses Detectron2's MODEL.PANOPTIC_FPN.* keys: instance
    # and semantic loss weights and the merge thresholds (COMBINE.*).
    return cfg


def _add_release_training_keys(cfg):
    """How the authors' release trains where Detectron2 differs (docs/release_parity.md)."""
    # Initialisation of the mask predictor (PANetMaskHead): "normal" (normal(0, 0.001),
    # Detectron2's) or "msra" (Detectron's MSRAFill, the authors' release: normal(0,
    # sqrt(2 / fan_out)), fan_out counting the release's background output when masks are
    # class-specific).
    cfg.MODEL.ROI_MASK_HEAD.PREDICTOR_INIT = "normal"
    # Rescale SGD's momentum buffers by the ratio of the learning rates when the rate steps
    # (Detectron's SOLVER.SCALE_MOMENTUM, the authors' release): read by train_net.py
    # (PANetTrainer); Detectron2's own training scripts refuse a config that sets it.
    cfg.SOLVER.SCALE_MOMENTUM = False


def read_config_data(filename, where=None):
    """
    The contents of the YAML config file ``filename`` (a local path, or anything Detectron2's
    ``PathManager`` opens) as plain data: ``yaml.safe_load``, so a Python tag (``!!python/...``) is
    refused and nothing in the file runs; a YAML alias (``*name``) is refused before anything is
    expanded (nested aliases can stand for billions of values). Used for yacs files
    (:class:`_CheckedConfigFile`) and for LazyConfig ``.yaml`` files (:func:`load_lazy_config`).

    Args:
        where (str or None): how messages name the file (default "Config file '<filename>'").

    Returns:
        the parsed data (None for an empty file).

    Raises:
        ConfigError: one line naming the file (a tag, an alias and its line, invalid YAML, a
            file that cannot be read).
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
    """
    fvcore's ``load_yaml_with_base`` (called for the file, then by fvcore for each ``_BASE_`` it
    resolves: relative to the file that names it) with each file checked before fvcore reads it,
    as data only (:func:`read_config_data`: a Python tag or a YAML alias is refused, nothing in a
    config file runs). Whatever ``allow_unsafe`` a caller passes (Detectron2's tools pass True),
    fvcore reads the file with ``allow_unsafe=False``.
    """

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


# Detectron2's own LazyConfig.load, kept while lazyconfig_files_as_data() stands in for it
_D2_LAZY_LOAD = LazyConfig.__dict__["load"]


def load_lazy_config(filename, keys=None):
    """
    Detectron2's ``LazyConfig.load(filename, keys)``, with its ``.yaml`` / ``.yml`` files read as
    data (:func:`read_config_data`, where Detectron2 uses ``yaml.unsafe_load``) and turned into
    the config as Detectron2 does (``OmegaConf.create``).

    A LazyConfig ``.py`` file is Python code, run as it loads (as in Detectron2; its relative
    imports too): load one only from a path the user named (``--config-file``) or from
    ``configs/`` (:mod:`panet_d2.model_zoo`).

    Raises:
        ConfigError: one line naming the file (and for a syntax error "file:line",
            :func:`config_error`).
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
    """
    While the block runs, Detectron2's ``LazyConfig.load`` (so also ``LazyConfig.load_rel`` and
    the calls of Detectron2's scripts and of config files) is :func:`load_lazy_config`.
    """
    saved = LazyConfig.__dict__["load"]
    LazyConfig.load = staticmethod(load_lazy_config)
    try:
        yield
    finally:
        LazyConfig.load = saved


def config_error(path, e, what="Config file"):
    """
    A :class:`ConfigError` for exception ``e`` raised while loading config file ``path``: a
    Python syntax error (LazyConfig) as "file:line: message", others with their type and message.
    """
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
    The config of file ``path`` with the command-line options ``opts`` (not frozen).

    A ``.py`` file (when ``lazy``) is a LazyConfig (options "key=value"): Python code, run as it
    loads (as in Detectron2), so only from the path the caller names; the YAML files it loads are
    read as data (:func:`lazyconfig_files_as_data`). Any other is a yacs file (options KEY VALUE)
    on Detectron2's defaults with panet_d2's keys (:func:`add_panet_config`), its ``_BASE_`` files
    checked as they are read (:class:`_CheckedConfigFile`).

    Raises:
        ConfigError: naming the file (and line, for a LazyConfig's Python; a base as the base of
            which file) or the options.
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
    for merge, source, where in [
        (
            lambda p: cfg.merge_from_file(p, allow_unsafe=False),
            path,
            "Config file {!r}".format(path),
        ),
        (cfg.merge_from_list, opts, "The command-line options {} (on {!r})".format(opts, path)),
    ]:
        try:
            merge(source)
        except InputError:
            raise
        except Exception as e:  # yacs: unknown key, wrong type, odd number of options
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ConfigError("{}: {}".format(where, msg)) from e
    return cfg
