# -*- coding: utf-8 -*-
"""
What every entry point (train_net.py, demo.py, tools/*.py) shares: loading a yacs or LazyConfig
file with command-line options, the CPU fallback of a CUDA config (noted, for the log), an
:class:`~panet_d2.errors.InputError` or a full disk as one "ERROR:" line and exit code 2 (the
table of exit codes: docs/reliability.md), one run at a time in an OUTPUT_DIR
(:func:`output_dir_lock`) and log files that fail in one line (:func:`quiet_log_file_errors`).
"""

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time

import torch
from omegaconf import OmegaConf

from ..config import load_config_file
from ..errors import ConfigError, InputError
from .checks import clean_error_message

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no lock)
    fcntl = None

__all__ = [
    "adapt_config_to_machine",
    "load_config",
    "one_line_errors",
    "InputErrorExit",
    "disk_full_error",
    "disk_full_message",
    "output_dir_lock",
    "quiet_log_file_errors",
    "LOCK_FILE",
    "EXIT_INTERRUPTED",
]

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2)
LOCK_FILE = "panet_d2_run.lock"  # in OUTPUT_DIR: who owns it (output_dir_lock)
# the errors of a full disk (or quota) while writing an output
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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


def disk_full_error(e):
    """
    Returns:
        OSError or None: the error of a full disk (ENOSPC, EDQUOT) that ``e`` is or was raised
        from (torch wraps its writer's OSError in a RuntimeError), else None.
    """
    for _ in range(8):  # the chain of causes and contexts, not a cycle
        if e is None or (isinstance(e, OSError) and e.errno in _DISK_FULL):
            return e
        e = e.__cause__ or e.__context__
    return None


def disk_full_message(e):
    """The one-line message of a full disk's OSError ``e`` (see :func:`disk_full_error`)."""
    where = " {!r}".format(e.filename) if e.filename else " an output file"
    return (
        "Cannot write{}: {}. Free some space, or give an output folder on another disk, and run "
        "again.".format(where, e.strerror or os.strerror(e.errno))
    )


@contextlib.contextmanager
def one_line_errors(*types):
    """
    An :class:`~panet_d2.errors.InputError` or a full disk (:func:`disk_full_error`: exit code 2)
    or one of ``types`` (exit code 1, e.g. a divergence) raised in the block ends the program with
    one line "ERROR: <message>" on stderr, without a traceback (:class:`InputErrorExit`).
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, (InputError,) + types):
            message = clean_error_message(e)
        elif disk_full_error(e) is not None:
            message = disk_full_message(disk_full_error(e))
        else:
            raise
        line = "ERROR: " + " ".join(message.split())
        print(line, file=sys.stderr, flush=True)
        code = 1 if isinstance(e, types) and not isinstance(e, InputError) else 2
        raise InputErrorExit(line, code) from None


def _owner(fd):
    """The description of the run that holds the lock file ``fd`` (what it wrote there)."""
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
        return "pid {} on host {}, started {} ({})".format(
            info["pid"], info["host"], info["started"], info["command"]
        )
    except (OSError, ValueError, KeyError, TypeError):  # it has not written its details yet
        return "a process that has not written its details yet"


_HELD_LOCKS = set()  # the lock files' descriptors held by this process (output_dir_lock)
_AT_FORK = []  # [True] once _forget_locks_in_child is registered


def _forget_locks_in_child():
    # a forked child (a DataLoader worker) closes its copies: a lock is held by the process that
    # took it, and no longer than that process lives
    while _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(_HELD_LOCKS.pop())


@contextlib.contextmanager
def output_dir_lock(path, key="OUTPUT_DIR"):
    """
    While the block runs, the folder ``path`` (config ``key``, existing) is owned by this process:
    an exclusive ``fcntl.flock`` on its file :data:`LOCK_FILE`, which holds this process's pid,
    host, start time and command. The operating system releases the lock when the process ends,
    however it ends (a killed run leaves nothing stuck: ``--resume`` takes it; its forked
    DataLoader workers do not hold it); on exit from the block the file is emptied and released.
    A folder on another storage (``://``), a system without ``fcntl`` or a file system without
    locks (a warning) is not locked.

    Raises:
        ConfigError: one line naming the run that owns the folder (pid, host, start time,
            command), when another process holds the lock (or another block of this one).
    """
    fd = None
    if fcntl is not None and "://" not in path:
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise ConfigError(
                "{}={!r} is in use by another run: {}. One run at a time writes to an {}: wait "
                "for it to end (or stop it), or give another {}.".format(key, path, owner, key, key)
            ) from None
        except OSError as e:  # e.g. ENOLCK: a file system without locks
            os.close(fd)
            fd = None
            logger.warning("%s=%r is not locked against a second run: %s.", key, path, e)
    if fd is not None:
        if not _AT_FORK:
            os.register_at_fork(after_in_child=_forget_locks_in_child)
            _AT_FORK.append(True)
        _HELD_LOCKS.add(fd)
        _write_owner(fd)
    try:
        yield
    finally:
        if fd is not None:
            _HELD_LOCKS.discard(fd)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the lock


def _write_owner(fd):
    info = {"pid": os.getpid(), "host": socket.gethostname()}
    info.update(started=time.strftime("%Y-%m-%d %H:%M:%S %z"), command=" ".join(sys.argv))
    with contextlib.suppress(OSError):  # a full disk: locked all the same, without details
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)


def _is_console(stream):
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


@contextlib.contextmanager
def quiet_log_file_errors():
    """
    While the block runs, a log handler that cannot write its file (a full disk: Python's logging
    would print a traceback for every record, and Detectron2's log stream again at exit) prints
    one line "WARNING: Cannot write the log file ..." on stderr, closes its file (what it held is
    lost) and drops the records that follow; the terminal still shows them. Other handlers' errors
    are logging's. Put back after.
    """
    handle_error = logging.StreamHandler.handleError

    def one_line(handler, record):
        stream, e = getattr(handler, "stream", None), sys.exc_info()[1]
        if _is_console(stream) or not (isinstance(e, OSError) or getattr(stream, "closed", 0)):
            return handle_error(handler, record)
        handler.emit = lambda record: None  # this handler's file is lost
        if not getattr(stream, "closed", True):
            name = getattr(stream, "name", "?")
            print(
                "WARNING: Cannot write the log file {!r}: {}; the log goes on on the terminal "
                "only.".format(name, getattr(e, "strerror", None) or e),
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(Exception):  # closed even when its last flush fails
                stream.close()

    logging.StreamHandler.handleError = one_line
    try:
        yield
    finally:
        logging.StreamHandler.handleError = handle_error
