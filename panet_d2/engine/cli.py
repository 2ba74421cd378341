"""What the entry points share: the config made runnable here, one-line errors."""

import contextlib
import errno
import os
import sys

import torch
from omegaconf import OmegaConf

from ..errors import InputError, check_device, os_error_cause


def adapt_config_to_machine(cfg):
    """Makes ``cfg`` (not frozen) runnable here: the CPU without CUDA, no AMP on a CPU. Returns
    what it changed (list[str]), to be logged once the logger is set up."""
    notes, lazy = [], not hasattr(cfg, "MODEL")
    key = "train.device" if lazy else "MODEL.DEVICE"
    device = (OmegaConf.select(cfg, key, default=None) or "cuda") if lazy else cfg.MODEL.DEVICE
    check_device(key, device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        notes.append(f"{key}={device!r}: CUDA is not available, running on the CPU.")
        if lazy:
            OmegaConf.update(cfg, key, "cpu", force_add=True)
        else:
            cfg.MODEL.DEVICE = "cpu"
    if not lazy and cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        notes.append("SOLVER.AMP.ENABLED needs CUDA: training in float32 on " + cfg.MODEL.DEVICE)
        cfg.SOLVER.AMP.ENABLED = False
    return notes


class InputErrorExit(SystemExit):
    """The exit with ``code`` after the line "ERROR: ..." on stderr, which ``str()`` is."""

    def __init__(self, line, code=2):
        super().__init__(code)
        self.line = line

    def __str__(self):
        return self.line


def clean_error_message(e):
    """The message of ``e`` without the traceback of a DataLoader worker's exception."""
    msg = str(e).strip()
    if "Original Traceback" in msg:
        last, prefix = msg.splitlines()[-1], f"{type(e).__module__}.{type(e).__name__}: "
        msg = last[len(prefix) :] if last.startswith(prefix) else last
    return msg


def disk_full_message(e):
    """The one-line message of a full disk that ``e`` is or was raised from, else None."""
    e = os_error_cause(e, (errno.ENOSPC, errno.EDQUOT))
    if e is None:
        return None
    where = f" {e.filename!r}" if e.filename else " an output file"
    return (
        f"Cannot write{where}: {e.strerror or os.strerror(e.errno)}. Free some space, or give an "
        "output folder on another disk, and run again."
    )


@contextlib.contextmanager
def one_line_errors(*types):
    """An :class:`InputError`, a full disk (exit code 2) or one of ``types`` (exit code 1)
    raised in the block ends the program with one line "ERROR: <message>" on stderr."""
    try:
        yield
    except Exception as e:
        known = isinstance(e, (InputError,) + types)
        message = clean_error_message(e) if known else disk_full_message(e)
        if message is None:
            raise
        line = "ERROR: " + " ".join(message.split())
        print(line, file=sys.stderr, flush=True)
        code = 1 if isinstance(e, types) and not isinstance(e, InputError) else 2
        raise InputErrorExit(line, code) from None
