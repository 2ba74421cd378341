# -*- coding: utf-8 -*-
"""
What every entry point (train_net.py, demo.py, tools/*.py) shares: loading a yacs or LazyConfig
file with command-line options, the CPU fallback of a CUDA config (noted, for the log), and an
:class:`~panet_d2.errors.InputError` as one "ERROR:" line.
"""

import contextlib
import os
import sys

import torch
from omegaconf import OmegaConf

from detectron2.config import LazyConfig, get_cfg

from ..config import add_panet_config
from ..errors import ConfigError, InputError
from .checks import check_config_file, clean_error_message, config_error

__all__ = ["adapt_config_to_machine", "load_config", "one_line_errors"]


def adapt_config_to_machine(cfg):
    """
    Makes a (not frozen) config runnable here: of a yacs config, MODEL.DEVICE "cuda" becomes "cpu"
    without CUDA and SOLVER.AMP.ENABLED (Detectron2's AMPTrainer, CUDA only) is switched off on
    the CPU; of a LazyConfig, ``train.device`` (default "cuda") becomes "cpu" without CUDA.

    Returns:
        list[str]: what was changed, to be logged once the logger is set up.
    """
    notes = []
    if not hasattr(cfg, "MODEL"):  # a LazyConfig
        device = OmegaConf.select(cfg, "train.device", default=None) or "cuda"
        if device.startswith("cuda") and not torch.cuda.is_available():
            notes.append(
                "train.device={!r}: CUDA is not available, running on the CPU.".format(device)
            )
            OmegaConf.update(cfg, "train.device", "cpu", force_add=True)
        return notes
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        notes.append(
            "MODEL.DEVICE={!r}: CUDA is not available, running on the CPU.".format(cfg.MODEL.DEVICE)
        )
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        notes.append("SOLVER.AMP.ENABLED needs CUDA: training in float32 on " + cfg.MODEL.DEVICE)
        cfg.SOLVER.AMP.ENABLED = False
    return notes


def load_config(path, opts=(), lazy=True, key="--config-file"):
    """
    The config of file ``path`` with the command-line options ``opts``, made runnable here
    (:func:`adapt_config_to_machine`); not frozen.

    A ``.py`` file (when ``lazy``) is a LazyConfig (options "key=value"); any other a yacs file
    with panet_d2's keys (options KEY VALUE), whose ``_BASE_`` files are checked first.

    Returns:
        (cfg, notes): the CfgNode or LazyConfig, and what :func:`adapt_config_to_machine`
        changed (to be logged).

    Raises:
        ConfigError: naming the file (and line, for a LazyConfig's Python) or the options.
    """
    opts = list(opts or [])
    if lazy and path.endswith(".py"):
        if not os.path.isfile(path):
            raise ConfigError("Config file {!r} ({}) does not exist.".format(path, key))
        try:
            cfg = LazyConfig.apply_overrides(LazyConfig.load(path), opts)
        except InputError:
            raise
        except Exception as e:  # omegaconf, hydra, the file's syntax error
            raise config_error(path, e) from None
        return cfg, adapt_config_to_machine(cfg)
    check_config_file(path, key)
    cfg = get_cfg()
    add_panet_config(cfg)
    for merge, source, where in [
        (cfg.merge_from_file, path, "Config file {!r}".format(path)),
        (cfg.merge_from_list, opts, "The command-line options {} (on {!r})".format(opts, path)),
    ]:
        try:
            merge(source)
        except InputError:
            raise
        except Exception as e:  # yacs: unknown key, wrong type, odd number of options
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise ConfigError("{}: {}".format(where, msg)) from e
    return cfg, adapt_config_to_machine(cfg)


@contextlib.contextmanager
def one_line_errors(*types):
    """
    An :class:`~panet_d2.errors.InputError` (or one of ``types``) raised in the block ends the
    program with one line "ERROR: <message>" on stderr (exit code 1), without a traceback.
    """
    try:
        yield
    except (InputError,) + types as e:
        sys.exit("ERROR: " + " ".join(clean_error_message(e).split()))
