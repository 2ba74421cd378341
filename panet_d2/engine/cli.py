# -*- coding: utf-8 -*-
"""
What every entry point (train_net.py, demo.py, tools/*.py) shares: loading a yacs or LazyConfig
file with command-line options, the CPU fallback of a CUDA config (noted, for the log), and an
:class:`~panet_d2.errors.InputError` as one "ERROR:" line and exit code 2.
"""

import contextlib
import sys

import torch
from omegaconf import OmegaConf

from ..config import load_config_file
from ..errors import InputError
from .checks import clean_error_message

__all__ = ["adapt_config_to_machine", "load_config", "one_line_errors", "InputErrorExit"]


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
    :func:`panet_d2.config.load_config_file` (a yacs or LazyConfig file with options), made
    runnable here (:func:`adapt_config_to_machine`); not frozen.

    Returns:
        (cfg, notes): the CfgNode or LazyConfig, and what :func:`adapt_config_to_machine`
        changed (to be logged).
    """
    cfg = load_config_file(path, opts, lazy=lazy, key=key)
    return cfg, adapt_config_to_machine(cfg)


class InputErrorExit(SystemExit):
    """The exit of an entry point refused by its input: exit code 2 (as argparse's usage errors),
    after its one line "ERROR: <message>" on stderr; ``str()`` is that line."""

    def __init__(self, line, code=2):
        super().__init__(code)
        self.line = line

    def __str__(self):
        return self.line


@contextlib.contextmanager
def one_line_errors(*types):
    """
    An :class:`~panet_d2.errors.InputError` (exit code 2) or one of ``types`` (exit code 1, e.g.
    a divergence) raised in the block ends the program with one line "ERROR: <message>" on stderr,
    without a traceback (:class:`InputErrorExit`).
    """
    try:
        yield
    except (InputError,) + types as e:
        line = "ERROR: " + " ".join(clean_error_message(e).split())
        print(line, file=sys.stderr, flush=True)
        raise InputErrorExit(line, 2 if isinstance(e, InputError) else 1) from None
