"""What the entry points share: config loading, one-line errors, the OUTPUT_DIR lock."""

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

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no lock)
    fcntl = None

logger = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2)
LOCK_FILE = "panet_d2_run.lock"  # in OUTPUT_DIR (output_dir_lock)


def adapt_config_to_machine(cfg):
    """Makes ``cfg`` (not frozen) runnable here: the CPU without CUDA, no AMP on a CPU. Returns
    what it changed (list[str]), to be logged once the logger is set up."""
    notes, lazy = [], not hasattr(cfg, "MODEL")
    key = "train.device" if lazy else "MODEL.DEVICE"
    device = (OmegaConf.select(cfg, key, default=None) or "cuda") if lazy else cfg.MODEL.DEVICE
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


def load_config(path, opts=(), lazy=True, key="--config-file"):
    """:func:`panet_d2.config.load_config_file` made runnable here: (cfg, notes), not frozen."""
    cfg = load_config_file(path, opts, lazy=lazy, key=key)
    return cfg, adapt_config_to_machine(cfg)


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
        last = msg.splitlines()[-1]
        prefix = f"{type(e).__module__}.{type(e).__name__}: "
        msg = last[len(prefix) :] if last.startswith(prefix) else last
    return msg


def disk_full_message(e):
    """The one-line message of a full disk that ``e`` is or was raised from, else None."""
    for _ in range(8):  # the chain of causes and contexts, not a cycle
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" {e.filename!r}" if e.filename else " an output file"
            return (
                f"Cannot write{where}: {e.strerror or os.strerror(e.errno)}. Free some space, or "
                "give an output folder on another disk, and run again."
            )
        e = getattr(e, "__cause__", None) or getattr(e, "__context__", None)
    return None


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


def _owner(fd):
    """The run that holds the lock file ``fd``, as it wrote itself there."""
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
        return "pid {pid} on host {host}, started {started} ({command})".format(**info)
    except (OSError, ValueError, KeyError, TypeError):  # it has not written its details yet
        return "a process that has not written its details yet"


_HELD_LOCKS = set()  # the lock files' descriptors held by this process
_AT_FORK = []  # [True] once _forget_locks_in_child is registered


def _forget_locks_in_child():
    # a forked child (a DataLoader worker) closes its copies: the lock lives with its taker
    while _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(_HELD_LOCKS.pop())


@contextlib.contextmanager
def output_dir_lock(path, key="OUTPUT_DIR"):
    """While the block runs, this process owns the folder ``path`` (config ``key``): an
    exclusive ``fcntl.flock`` on its :data:`LOCK_FILE`, which names this run; else a
    :class:`ConfigError` naming the run that holds it."""
    fd = None
    if fcntl is not None and "://" not in path:
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise ConfigError(
                f"{key}={path!r} is in use by another run: {owner}. One run at a time writes to "
                f"an {key}: wait for it to end (or stop it), or give another {key}."
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
        info = {"pid": os.getpid(), "host": socket.gethostname()}
        info.update(started=time.strftime("%Y-%m-%d %H:%M:%S %z"), command=" ".join(sys.argv))
        with contextlib.suppress(OSError):  # a full disk: locked all the same, without details
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    try:
        yield
    finally:
        if fd is not None:
            _HELD_LOCKS.discard(fd)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def quiet_log_file_errors():
    """While the block runs, a log file that cannot be written (a full disk) is closed with one
    line "WARNING: Cannot write the log file ..."; the terminal still shows the log."""
    handle_error = logging.StreamHandler.handleError

    def one_line(handler, record):
        stream, e = getattr(handler, "stream", None), sys.exc_info()[1]
        consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        if stream in consoles or not (isinstance(e, OSError) or getattr(stream, "closed", 0)):
            return handle_error(handler, record)
        handler.emit = lambda record: None  # this handler's file is lost
        if not getattr(stream, "closed", True):
            name, why = getattr(stream, "name", "?"), getattr(e, "strerror", None) or e
            print(
                f"WARNING: Cannot write the log file {name!r}: {why}; the log goes on on the "
                "terminal only.",
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
