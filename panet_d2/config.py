"""PANet's config keys and :func:`load_config_file`, the loader of config files (YAML as data)."""

import math
import os
import re
from unittest import mock

import yaml
from omegaconf import OmegaConf

from detectron2.config import CfgNode as CN
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.utils.file_io import PathManager
from detectron2.utils.registry import locate

from .errors import (
    INPUT_CHANNELS,
    MAX_POOLER_RESOLUTION,
    ConfigError,
    InputError,
    check_fractions,
    raised_in_libraries,
)

# Values accepted by the keys below (`check_choice`); norm keys take any of Detectron2's `get_norm`
PAFPN_ACTIVATIONS = ("relu", "none", "relu_if_norm")
AFP_FUSE_TYPES = ("max", "sum")
AFP_FUSE_POSITIONS = ("after_first_layer", "before_first_layer")
FF_START_LAYERS = (2, 3, 4)
FF_FUSE_TYPES = ("sum", "max", "product")
FF_FC_INITS = ("xavier", "normal")
MASK_PREDICTOR_INITS = ("normal", "msra")
AFP_POOLER_TYPES = ("ROIAlignV2", "ROIAlign", "ROIPool")  # Detectron2's, less the rotated one
AFP_MAX_SAMPLING_RATIO = 16  # MODEL.AFP.POOLER_SAMPLING_RATIO: 0 (adaptive) to this
# Options that switch every PANet component off: Detectron2's Mask R-CNN
MASK_RCNN_OPTS = ("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone")
MASK_RCNN_OPTS += ("MODEL.AFP.ENABLED", False, "MODEL.FF.ENABLED", False)
# An AFP layer's per-level tensor name -> its single-level one ("norm.levels.2.bias" -> "norm.bias")
PER_LEVEL_NAME = re.compile(r"(^|\.)(per_level|levels\.\d+)\.")


def add_panet_config(cfg):
    """Add PANet's config keys (Liu et al., CVPR 2018) to a Detectron2 config (docs/design.md)."""
    # Bottom-up path augmentation (Sec. 3.1), with MODEL.BACKBONE.NAME "build_resnet_pafpn_backbone"
    cfg.MODEL.PAFPN = CN()
    cfg.MODEL.PAFPN.NORM = ""  # after each new 3x3 conv: "", "GN", "SyncBN" (MBN, Table 3)
    # after each new conv: "relu" (paper), "none" (mmdetection), "relu_if_norm" (release)
    cfg.MODEL.PAFPN.ACTIVATION = "relu"
    cfg.MODEL.PAFPN.CONV_BIAS = False  # a bias even before a norm: True (release), False (D2)

    # Adaptive feature pooling (Sec. 3.2): read by the heads PANetConvFCHead and PANetMaskHead
    cfg.MODEL.AFP = CN()
    cfg.MODEL.AFP.ENABLED = True
    cfg.MODEL.AFP.FUSE_TYPE = "max"  # element-wise fusion: "max" (paper) or "sum" (Table 4)
    # "after_first_layer" (after the per-level fc1 / conv1, paper) or "before_first_layer"
    cfg.MODEL.AFP.BOX_FUSE_POSITION = "after_first_layer"
    cfg.MODEL.AFP.MASK_FUSE_POSITION = "after_first_layer"
    cfg.MODEL.AFP.POOLER_SAMPLING_RATIO = 2  # RoIAlign samples per bin side; 0 = adaptive
    cfg.MODEL.ROI_BOX_HEAD.FC_NORM = ""  # after every fc of the box head: "", "SyncBN", "GN"

    # Fully-connected fusion in the mask branch (Sec. 3.3)
    cfg.MODEL.FF = CN()
    cfg.MODEL.FF.ENABLED = True
    cfg.MODEL.FF.START_LAYER = 3  # the fc path starts after conv<START_LAYER>: 2, 3 (paper), 4
    cfg.MODEL.FF.FUSE_TYPE = "sum"  # "sum" (paper), "max" or "product" (Table 5)
    cfg.MODEL.FF.CONV_DIMS = [256, 128]  # channels of the two 3x3 convs of the fc path
    cfg.MODEL.FF.FC_ACTIVATION = False  # ReLU on the fc output: False (paper), True (release)
    cfg.MODEL.FF.FC_INIT = "xavier"  # "xavier" (c2_xavier_fill) or "normal" (0.01, release)

    # The authors' release where Detectron2 differs (docs/release_parity.md)
    cfg.MODEL.ROI_MASK_HEAD.PREDICTOR_INIT = "normal"  # "normal" (Detectron2) or "msra"
    cfg.SOLVER.SCALE_MOMENTUM = False  # rescale SGD momentum when the rate steps (PANetTrainer)
    return cfg


# The YAML nodes a file's aliases may stand for, expanded: Detectron2's config.yaml dumps alias
# the default BBOX_REG_WEIGHTS, about 600 nodes in all; nested aliases can stand for billions.
MAX_ALIASED_VALUES = 10000
# Nesting levels a config file may have (Detectron2's configs have 4, a LazyConfig's about 8):
# PyYAML composes nodes recursively, and a file of thousands of "[" exhausts Python's stack.
MAX_NESTING = 100
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, faster: the check


def _expanded_size(root):
    """(the YAML nodes of the composed document ``root``, each alias's counted once per reference,
    None); (None, the node) if an alias is inside the node it refers to."""
    sizes, open_nodes, stack = {}, set(), [(root, False)]
    while stack:
        node, closing = stack.pop()
        children = node.value if isinstance(node, yaml.SequenceNode) else ()
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if closing:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            open_nodes.discard(id(node))
        elif id(node) in open_nodes:
            return None, node
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)
    return sizes[id(root)], None


def _check_structure(f, where):
    """A :class:`ConfigError` if the YAML stream ``f`` nests over :data:`MAX_NESTING` levels, has an
    alias inside its value or aliases for over :data:`MAX_ALIASED_VALUES` values (unexpanded)."""
    alias, depth = None, 0
    for event in yaml.parse(f, Loader=_SAFE_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                raise ConfigError(
                    f"{where} nests values more than {MAX_NESTING} levels deep (line "
                    f"{event.start_mark.line + 1}): config files are plain data."
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent) and alias is None:
            alias = event
    if alias is None:
        return
    f.seek(0)
    size, cycle = _expanded_size(yaml.compose(f, Loader=_SAFE_LOADER))
    if cycle is not None:
        raise ConfigError(
            f"{where} uses a YAML alias inside the value it refers to (the value at line "
            f"{cycle.start_mark.line + 1}): config files are plain data, write the value out."
        )
    first = f"(*{alias.anchor}, line {alias.start_mark.line + 1})"
    if size > MAX_ALIASED_VALUES:
        raise ConfigError(
            f"{where} uses YAML aliases {first} that stand for {size} values (at most "
            f"{MAX_ALIASED_VALUES}): config files are plain data, write the values out."
        )


def read_config_data(filename, where=None):
    """The YAML file ``filename`` as plain data (None if empty): ``yaml.safe_load``, after
    :func:`_check_structure`; else a :class:`ConfigError` naming it as ``where``."""
    where = where or "Config file {!r}".format(filename)
    try:
        with PathManager.open(filename) as f:
            _check_structure(f, where)
            f.seek(0)
            return yaml.safe_load(f)  # PyYAML's parser, as fvcore's: it judges what is valid
    except yaml.YAMLError as e:
        what = "holds a Python tag (config files are read as data, with yaml.safe_load)"
        what = what if isinstance(e, yaml.constructor.ConstructorError) else "is not valid YAML"
        raise ConfigError("{} {}: {}".format(where, what, " ".join(str(e).split()))) from None
    except (OSError, UnicodeError) as e:
        raise ConfigError("{} cannot be read: {}".format(where, e)) from None


class CheckedConfigFile(CN):
    """fvcore's ``load_yaml_with_base`` with each file (and ``_BASE_``) first checked as data
    (:func:`read_config_data`), and ``allow_unsafe=False`` whatever the caller passes."""

    _chain = []  # (path, real path) of the files being read, outermost first

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe=False):
        if not isinstance(filename, str) or "://" in filename:  # a URL: fvcore reads it
            return super().load_yaml_with_base(filename, allow_unsafe=False)
        base_of = cls._chain[-1][0] if cls._chain else None
        where = f"The _BASE_ {filename!r} of config file {base_of!r}" if base_of else None
        where = where or f"Config file {filename!r}"
        if os.path.realpath(filename) in (real for _, real in cls._chain):
            raise ConfigError(f"{where} inherits from itself through _BASE_.")
        if not os.path.isfile(filename):  # missing, a folder, a pipe
            hint = " (a _BASE_ is relative to the file that names it)" if base_of else ""
            what = "is not a regular file" if os.path.exists(filename) else f"does not exist{hint}"
            raise ConfigError(f"{where} {what}.")
        data = read_config_data(filename, where)
        if data is None:
            raise ConfigError(f"{where} is empty: give it _BASE_ or config keys.")
        if not isinstance(data, dict):
            raise ConfigError(f"{where} holds a YAML {type(data).__name__} instead of config keys.")
        if not isinstance(data.get("_BASE_", ""), str):  # (fvcore calls its startswith)
            raise ConfigError(f"{where}: _BASE_ {data['_BASE_']!r} is not a file name (a string).")
        chain = cls._chain + [(filename, os.path.realpath(filename))]
        with mock.patch.object(cls, "_chain", chain):  # while its _BASE_ files are read
            return super().load_yaml_with_base(filename, allow_unsafe=False)


_D2_LAZY_LOAD = LazyConfig.__dict__["load"]


def load_lazy_config(filename, keys=None):
    """Detectron2's ``LazyConfig.load(filename, keys)``, with ``.yaml`` / ``.yml`` files read as
    data (:func:`read_config_data`); errors as a :class:`ConfigError` naming the file."""
    if os.path.splitext(filename)[1] not in (".yaml", ".yml"):
        try:
            return _D2_LAZY_LOAD.__func__(filename, keys)
        except InputError:
            raise
        except Exception as e:  # the file's syntax error or its own exception, omegaconf
            raise config_error(filename, e) from None
    data = read_config_data(filename)
    if not isinstance(data, dict):
        what = "nothing" if data is None else "a YAML " + type(data).__name__
        raise ConfigError(
            f"Config file {filename!r} holds {what} instead of LazyConfig keys (model, train, ...)."
        )
    cfg = OmegaConf.create(data, flags={"allow_objects": True})
    if keys is None:
        return cfg
    missing = [k for k in ([keys] if isinstance(keys, str) else keys) if k not in cfg]
    if missing:
        raise ConfigError("Config file {!r} has no key {}.".format(filename, missing[0]))
    return cfg[keys] if isinstance(keys, str) else tuple(cfg[k] for k in keys)


# UPSTREAM-WORKAROUND lazyconfig-yaml-unsafe-load: Detectron2 0.6 LazyConfig.load reads a .yaml
# with PyYAML's unsafe loader (a Python tag runs).
def lazyconfig_files_as_data():
    """While the block runs, Detectron2's ``LazyConfig.load`` is :func:`load_lazy_config`."""
    return mock.patch.object(LazyConfig, "load", staticmethod(load_lazy_config))


_PREDICTOR = "model.roi_heads.box_predictor."  # a LazyConfig's keys of the box predictor


def instantiate_model(cfg):
    """``instantiate(cfg.model)`` of a LazyConfig ``cfg``; an argument that its class does not take
    is a :class:`ConfigError` naming the key (in Detectron2 a TypeError traceback)."""
    try:
        model = instantiate(cfg.model)
    except TypeError as e:
        bad = re.search(r"(\w+)[\w.]*\(\) got an unexpected keyword argument '(\w+)'", str(e))
        tree = OmegaConf.to_container(cfg.model, resolve=False)
        found = _key_paths(tree, bad.group(2), "model") if bad else []
        # the keys of a node whose class (or a base of it) is the one that refused the argument
        keys = [k for k, t in found if bad.group(1) in _class_names(t)] or [k for k, _ in found]
        if keys:
            raise ConfigError(
                f"{' or '.join(keys)}: {bad.group(1)} takes no argument {bad.group(2)!r}; remove "
                "the key or correct its name."
            ) from None
        raise ConfigError(f"cfg.model cannot be built: TypeError: {e}") from None
    except (AssertionError, KeyError, ValueError) as e:  # Detectron2's checks of its arguments
        if raised_in_libraries(e) is None:  # a fault of a user's own module: its traceback
            raise
        raise ConfigError(f"cfg.model cannot be built: {type(e).__name__}: {e}") from None
    _check_model_inputs(model)
    # the test values that check_config checks in a yacs config (Detectron2's box predictor)
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    for name in ("test_score_thresh", "test_nms_thresh"):
        if isinstance(getattr(predictor, name, None), (int, float)):
            check_fractions(_PREDICTOR + name, getattr(predictor, name))
    topk = getattr(predictor, "test_topk_per_image", 1)
    if not isinstance(topk, int) or topk < 1:  # as TEST.DETECTIONS_PER_IMAGE (no -1, all)
        raise ConfigError(f"{_PREDICTOR}test_topk_per_image={topk!r}: must be an integer >= 1.")
    return model


def _check_model_inputs(model):
    """The input values a yacs config's INPUT.FORMAT, MODEL.PIXEL_* and RPN top-k keys are checked
    for, read from an instantiated LazyConfig ``model``."""
    fmt, mean, std = (getattr(model, k, None) for k in ("input_format", "pixel_mean", "pixel_std"))
    if fmt is not None and fmt not in INPUT_CHANNELS:
        raise ConfigError(f"model.input_format={fmt!r}: one of {', '.join(INPUT_CHANNELS)}.")
    if mean is not None and std is not None:
        channels = INPUT_CHANNELS.get(fmt, mean.numel())
        if not (
            mean.numel() == std.numel() == channels and mean.isfinite().all() and std.min() > 0
        ):
            raise ConfigError(
                f"model.pixel_mean={mean.flatten().tolist()}, model.pixel_std="
                f"{std.flatten().tolist()}: a finite mean and a positive deviation per channel of "
                f"model.input_format ({channels})."
            )
    for name in ("box_pooler", "mask_pooler"):
        size = getattr(getattr(getattr(model, "roi_heads", None), name, None), "output_size", ())
        if any(not 1 <= s <= MAX_POOLER_RESOLUTION for s in size):  # (memory: 1000 RoIs each)
            raise ConfigError(
                f"model.roi_heads.{name}.output_size={tuple(size)}: at most "
                f"{MAX_POOLER_RESOLUTION} (larger ones exhaust a machine's memory)."
            )
    rpn = getattr(model, "proposal_generator", None)
    for name in ("pre_nms_topk", "post_nms_topk"):
        for training, value in getattr(rpn, name, {}).items():
            if not isinstance(value, int) or value < 1:
                which = "[0] (training)" if training else "[1] (test)"
                raise ConfigError(
                    f"model.proposal_generator.{name}{which}={value!r}: must be an integer >= 1."
                )


def check_lazy_training_values(cfg):
    """Raises :class:`ConfigError` for a training value of a LazyConfig ``cfg`` that Detectron2's
    ``lazyconfig_train_net.py`` takes unchecked (a traceback, or a run that does nothing)."""
    keys = ("train.max_iter", "dataloader.train.total_batch_size", "train.checkpointer.period")
    for key in keys + ("train.log_period",):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and (type(value) is bool or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key}={value!r}: must be an integer >= 1.")
    workers = OmegaConf.select(cfg, "dataloader.train.num_workers", default=None)
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"dataloader.train.num_workers={workers!r}: must be an integer >= 0.")
    keep = OmegaConf.select(cfg, "train.checkpointer.max_to_keep", default=None)
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ConfigError(
            f"train.checkpointer.max_to_keep={keep!r}: None (all) or an integer >= 1."
        )
    warmup = OmegaConf.select(cfg, "lr_multiplier.warmup_length", default=None)
    if isinstance(warmup, (int, float)) and not 0 <= warmup <= 1:
        raise ConfigError(
            f"lr_multiplier.warmup_length={warmup!r}: a fraction of the training, in [0, 1]."
        )
    lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    if isinstance(lr, (int, float)) and not 0 <= lr < math.inf:
        raise ConfigError(f"optimizer.lr={lr!r}: must be 0 or positive, and finite.")
    for name in ("test_score_thresh", "test_nms_thresh"):
        value = OmegaConf.select(cfg, _PREDICTOR + name, default=None)
        if isinstance(value, (int, float)):
            check_fractions(_PREDICTOR + name, value)


def _key_paths(node, name, path):
    """(dotted path, its dict's ``_target_``) of the keys ``name`` in ``node`` at ``path``."""
    if not isinstance(node, (dict, list)):
        return []
    found = []
    if isinstance(node, dict) and name in node:
        found.append((f"{path}.{name}", node.get("_target_")))
    for key, value in node.items() if isinstance(node, dict) else enumerate(node):
        found += _key_paths(value, name, f"{path}.{key}")
    return found


def _class_names(target):
    """The names of a LazyConfig ``_target_`` (class, function or import path) and its bases."""
    try:
        target = locate(target) if isinstance(target, str) else target
    except ImportError:  # not found: no name
        return []
    return [getattr(c, "__name__", None) for c in getattr(target, "__mro__", [target])]


def config_error(path, e):
    """A :class:`ConfigError` for ``e`` raised while loading ``path`` (syntax errors: file:line)."""
    if isinstance(e, SyntaxError) and e.lineno is None and isinstance(e.__cause__, SyntaxError):
        # LazyConfig's "Config file <file> has syntax error!": the line is in its cause
        named = re.fullmatch(r"Config file (.+) has syntax error!", str(e.msg))
        path, e = named.group(1) if named else path, e.__cause__
    if isinstance(e, SyntaxError):
        file = e.filename if e.filename and not e.filename.startswith("<") else path
        where = "{}:{}".format(file, e.lineno) if e.lineno else path
        code = " ({})".format(e.text.strip()) if e.text and e.text.strip() else ""
        return ConfigError(f"Config file {where}: {type(e).__name__}: {e.msg}{code}")
    return ConfigError(f"Config file {path!r}: {type(e).__name__}: {' '.join(str(e).split())}")


def check_no_command_flags(opts, path):
    """Raises :class:`ConfigError` for a command flag (``--output``) among the config options
    ``opts`` (on config file ``path``): argparse gives them the flags that follow them."""
    flags = [o for o in opts if str(o).startswith("--")]
    if flags:
        raise ConfigError(
            f"The command-line options {list(opts)} (on {path!r}): {flags[0]!r} is an option of "
            "the command: give it before the config options."
        )


def load_config_file(path, opts=(), lazy=True, key="--config-file"):
    """The config of file ``path`` with command-line options ``opts`` (not frozen): a LazyConfig
    for a ``.py`` file when ``lazy`` (options "key=value"), else a yacs file (options KEY VALUE) on
    Detectron2's defaults with PANet's keys. A :class:`ConfigError` names the file or options."""
    opts = list(opts or [])
    if not os.path.isfile(path):
        what = "is not a regular file" if os.path.exists(path) else "does not exist"  # a pipe
        raise ConfigError("Config file {!r} ({}) {}.".format(path, key, what))
    if lazy and path.endswith(".py"):
        check_no_command_flags(opts, path)
        try:
            with lazyconfig_files_as_data():
                return LazyConfig.apply_overrides(LazyConfig.load(path), opts)
        except InputError:
            raise
        except Exception as e:  # omegaconf, hydra, the file's syntax error
            raise config_error(path, e) from None
    if path.endswith(".py"):  # lazy=False: a command of yacs configs only
        raise ConfigError(
            f"Config file {path!r} ({key}) is a LazyConfig (.py): this command reads yacs .yaml "
            "configs (tools/lazyconfig_train_net.py trains LazyConfig files)."
        )
    CheckedConfigFile.load_yaml_with_base(path)
    cfg, where = add_panet_config(get_cfg()), "Config file {!r}".format(path)
    try:
        cfg.merge_from_file(path, allow_unsafe=False)
        where = f"The command-line options {opts} (on {path!r})"
        cfg.merge_from_list(opts)
    except InputError:
        raise
    except Exception as e:  # yacs: unknown key, wrong type, odd number of options
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        flags = [o for o in opts[::2] if str(o).startswith("--")]
        if flags:  # argparse took it as a KEY of the trailing options
            msg = f"{flags[0]!r} is an option of the command: give it before the KEY VALUE pairs"
        raise ConfigError("{}: {}".format(where, msg)) from e
    return cfg
