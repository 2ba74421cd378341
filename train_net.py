#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
PANet training script, with the command line of Detectron2's tools/train_net.py.

    python3 train_net.py --config-file configs/quick_schedules/panoptic_panet_R_18_synth.yaml \
        --num-gpus 1                                        # train, then evaluate
    python3 train_net.py --config-file <cfg.yaml> --eval-only MODEL.WEIGHTS /path/to/model.pth
    python3 train_net.py --config-file <cfg.yaml> --resume  # continue from OUTPUT_DIR

The trainer is :class:`panet_d2.engine.PANetTrainer`. A bad input (config, dataset, image,
checkpoint: :class:`panet_d2.errors.InputError`), a full disk or a diverging run
(:class:`panet_d2.errors.TrainingDivergedError`) stops the run with one line "ERROR: ...", also
with several processes (--num-gpus, --num-machines; on CPUs too): the config is checked before
they start. Ctrl-C ends it with one line naming the checkpoint that --resume continues from. One
run at a time owns an OUTPUT_DIR (training and --eval-only alike: a second one stops with one
line naming the first). --eval-only needs weights (MODEL.WEIGHTS, or the last checkpoint with
--resume) that hold every tensor of the model. Exit codes: 0 done, 1 diverged, 2 input error or
full disk, 130 Ctrl-C (the table: docs/reliability.md).
"""

import panet_d2  # noqa: F401  isort: skip  (first: Detectron2 then imports without warnings)

import contextlib
import fnmatch
import functools
import glob
import json
import logging
import math
import multiprocessing
import os
import shlex
import shutil
import signal
import socket
import sys
import time

import torch.multiprocessing as mp

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from panet_d2 import PANetCheckpointer  # registers the models and datasets
from panet_d2.compat import atomic_output_files
from panet_d2.config import load_config_file
from panet_d2.engine import PANetTrainer, adapt_config_to_machine, one_line_errors
from panet_d2.engine.checks import (
    check_config,
    check_expected_results,
    check_inputs,
    check_output_dir,
    check_run_values,
)
from panet_d2.engine.resume import check_last_checkpoint
from panet_d2.engine.trainer import TrainingInterrupted
from panet_d2.errors import ConfigError, DatasetError, check_choice

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no lock)
    fcntl = None

logger = logging.getLogger("panet_d2")
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process ended by SIGINT (128 + 2)
LOCK_FILE = "panet_d2_run.lock"  # in OUTPUT_DIR (output_dir_lock)
# Detectron2's values of its training keys, which it checks only once the datasets have loaded
# (then blamed on the dataset, or a traceback)
TRAINING_CHOICES = {
    "SOLVER.LR_SCHEDULER_NAME": (
        "WarmupMultiStepLR",
        "WarmupCosineLR",
        "WarmupStepWithFixedGammaLR",
    ),
    "SOLVER.WARMUP_METHOD": ("linear", "constant"),
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": ("choice", "range"),
    "INPUT.MASK_FORMAT": ("polygon", "bitmask"),
    "INPUT.RANDOM_FLIP": ("horizontal", "vertical", "none"),
    "INPUT.CROP.TYPE": ("relative_range", "relative", "absolute", "absolute_range"),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": ("value", "norm"),  # with CLIP_GRADIENTS.ENABLED
    "MODEL.RPN.BBOX_REG_LOSS_TYPE": ("smooth_l1", "giou", "diou", "ciou"),
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE": ("smooth_l1", "giou", "diou", "ciou"),
    "DATALOADER.SAMPLER_TRAIN": tuple(
        s + "TrainingSampler"
        for s in ("", "RepeatFactor", "RandomSubset", "Weighted", "WeightedCategory")
    ),
}
# Detectron2's loss weights (a negative one trains towards a larger loss, silently)
LOSS_WEIGHTS = ("MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT", "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT")
LOSS_WEIGHTS += ("MODEL.RPN.LOSS_WEIGHT", "MODEL.RPN.BBOX_REG_LOSS_WEIGHT")
LOSS_WEIGHTS += ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT",)


class Trainer(PANetTrainer):
    """The trainer of this script; override its methods here to customise an experiment."""


def checked_config(args):
    """
    The config of the command line (frozen) and the notes of ``adapt_config_to_machine``; its
    files (``_BASE_`` included), keys and OUTPUT_DIR checked, with a :class:`ConfigError` naming
    the file or key.
    """
    cfg = load_config_file(args.config_file, args.opts, lazy=False)
    notes = adapt_config_to_machine(cfg)
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR)

    def value(key):
        return functools.reduce(lambda node, k: node[k], key.split("."), cfg)

    for key, allowed in TRAINING_CHOICES.items() if not args.eval_only else ():
        if key != "SOLVER.CLIP_GRADIENTS.CLIP_TYPE" or cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
            check_choice(key, value(key), allowed)
    for key in LOSS_WEIGHTS if not args.eval_only else ():
        if not 0 <= value(key) < math.inf:  # NaN too
            raise ConfigError(f"{key}={value(key)!r}: a loss weight must be 0 or positive, finite.")
    return cfg, notes


def setup(args, loaded=None):
    """The config of the command line (``loaded``: that of :func:`checked_config`); sets up
    Detectron2's and panet_d2's loggers and writes config.yaml (atomically)."""
    cfg, notes = loaded or checked_config(args)
    with atomic_output_files():
        default_setup(cfg, args)  # the "detectron2" and "fvcore" loggers, config.yaml, seeds
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="panet_d2")
    for note in notes:
        logging.getLogger("panet_d2").warning(note)
    return cfg


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


# what a training run writes in OUTPUT_DIR (Detectron2's names), moved together by keep_previous_run
RUN_FILES = ("last_checkpoint", "model_*.pth", "metrics.json", "log.txt*", "events.out.tfevents.*")
RUN_FILES += ("config.yaml", "inference", "inference_TTA")


def keep_previous_run(cfg, resume):
    """
    Before a training run that starts over in cfg.OUTPUT_DIR where a run left checkpoints (not
    ``resume`` from its last_checkpoint), moves that run's :data:`RUN_FILES` to
    ``OUTPUT_DIR/previous_run_N`` (Detectron2 would overwrite its checkpoints and mix its logs);
    returns the notes that say so. Refuses (:class:`ConfigError`) a MODEL.WEIGHTS among them.
    """
    folder = cfg.OUTPUT_DIR
    if "://" in folder or (resume and os.path.lexists(os.path.join(folder, "last_checkpoint"))):
        return []
    kept = sorted(glob.glob(os.path.join(glob.escape(folder), "previous_run_*", "last_checkpoint")))
    if resume and kept:  # moved by a run without --resume (one that then failed, e.g.)
        last = max(kept, key=os.path.getmtime)
        raise ConfigError(
            f"--resume: OUTPUT_DIR={folder!r} has no last_checkpoint; the run it held was moved to "
            f"{os.path.dirname(last)!r} by a run without --resume. Move its files back to continue "
            "it, or run without --resume."
        )
    found = [glob.glob(os.path.join(glob.escape(folder), pattern)) for pattern in RUN_FILES]
    names = sorted({os.path.basename(path) for paths in found for path in paths})
    checkpoints = [n for n in names if n == "last_checkpoint" or fnmatch.fnmatch(n, "model_*.pth")]
    if not checkpoints:
        return []
    weights = cfg.MODEL.WEIGHTS
    if "://" not in weights and os.path.realpath(weights) in {
        os.path.realpath(os.path.join(folder, n)) for n in checkpoints
    }:
        raise ConfigError(
            f"MODEL.WEIGHTS={weights!r} is a checkpoint of the run in OUTPUT_DIR={folder!r}, "
            "which this new run would replace: give another OUTPUT_DIR (or --resume to continue "
            "that run)."
        )
    k = 1
    while os.path.lexists(os.path.join(folder, f"previous_run_{k}")):
        k += 1
    previous = os.path.join(folder, f"previous_run_{k}")
    os.mkdir(previous)
    for name in names:
        src, dst = os.path.join(folder, name), os.path.join(previous, name)
        if fnmatch.fnmatch(name, "log.txt*"):  # copied, then emptied: a logger of this process
            shutil.copy2(src, dst)  # (Detectron2 caches its file per process) writes on here
            os.truncate(src, 0)
        else:
            os.rename(src, dst)
    shown = ", ".join(checkpoints[:3]) + (", ..." if len(checkpoints) > 3 else "")
    return [
        f"OUTPUT_DIR={folder!r} held a previous run's checkpoints ({shown}): moved with its logs, "
        f"metrics and config to {previous!r}, not overwritten (--resume continues a run)."
    ]


@contextlib.contextmanager
def owning_output_dir(cfg, args=None):
    """
    While the block runs, this run owns cfg.OUTPUT_DIR (:func:`output_dir_lock`, taken by the
    main process; the others wait for it) and a log file that cannot be written fails in one line
    (:func:`quiet_log_file_errors`). Before training (``args`` not --eval-only), a previous run's
    files are moved aside (:func:`keep_previous_run`); yields the notes that say so.
    """
    with contextlib.ExitStack() as stack:
        notes = []
        if comm.is_main_process():
            stack.enter_context(output_dir_lock(cfg.OUTPUT_DIR))
            if args is not None and not args.eval_only:
                notes = keep_previous_run(cfg, args.resume)
        comm.synchronize()
        stack.enter_context(quiet_log_file_errors())
        yield notes


def main(args):
    cfg, notes = checked_config(args)
    if not args.eval_only:  # what loads no dataset, before a previous run's files are moved
        with quiet_log_file_errors():  # (the run's log is set up after the move)
            check_run_values(cfg, train=True)
    with owning_output_dir(cfg, args) as moved:
        return _run(args, setup(args, (cfg, notes + moved)))


def _run(args, cfg):
    if not args.eval_only:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()

    check_inputs(cfg, train=False)
    model = Trainer.build_model(cfg)
    checkpointer = PANetCheckpointer(model, save_dir=cfg.OUTPUT_DIR)  # every tensor from the file
    last = check_last_checkpoint(checkpointer) if args.resume else None
    if last and cfg.MODEL.WEIGHTS and os.path.abspath(cfg.MODEL.WEIGHTS) != os.path.abspath(last):
        logger.warning(
            f"--eval-only --resume: evaluating {last!r} (named by last_checkpoint), not "
            f"MODEL.WEIGHTS={cfg.MODEL.WEIGHTS!r}; without --resume, MODEL.WEIGHTS is evaluated."
        )
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    if not len(cfg.DATASETS.TEST):  # (after the weights: --eval-only checks them too)
        raise DatasetError(
            "--eval-only: DATASETS.TEST is empty, nothing to evaluate (the weights loaded). Name "
            "the datasets to evaluate, e.g. DATASETS.TEST \"('coco_2017_val',)\"."
        )
    results = Trainer.test(cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(Trainer.test_with_TTA(cfg, model))
    if comm.is_main_process():
        check_expected_results(cfg, results)  # a task it names, not a KeyError
        verify_results(cfg, results)
    return results


def _one_line_main(args):
    # main in one of several processes: an InputError as one line (the traceback that
    # torch.multiprocessing would print is of no use), then exit code 2 (a divergence: 1); Ctrl-C:
    # exit code 130, quietly (the launching process prints the line)
    try:
        with one_line_errors(FloatingPointError):
            return main(args)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


def _last_checkpoint(output_dir):
    """The checkpoint ``<output_dir>/last_checkpoint`` names, if it exists, else None."""
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            path = os.path.join(output_dir, f.read().strip())
    except OSError:
        return None
    return path if os.path.isfile(path) else None


def interrupted_line(args, e, output_dir=None):
    """
    The line with which Ctrl-C ends the run: where it stopped and, when training, the checkpoint
    that --resume continues from (``e``'s, a :class:`TrainingInterrupted`; else what
    ``<output_dir>/last_checkpoint`` names) with the command, or that there is none.
    """
    if args.eval_only:
        return "Interrupted by Ctrl-C during the evaluation: run the command again."
    if isinstance(e, TrainingInterrupted):
        at, last = " at iteration {}".format(e.iteration), e.last_checkpoint
    elif output_dir is not None:  # the launching process of several
        at, last = "", _last_checkpoint(output_dir)
    else:
        return "Interrupted by Ctrl-C before training started: run the command again."
    if not last:
        return (
            "Interrupted by Ctrl-C{}, before the first checkpoint: nothing to resume from; run "
            "the command again to start over.".format(at)
        )
    argv = ["python3", sys.argv[0], "--resume"] + [a for a in sys.argv[1:] if a != "--resume"]
    return (
        "Interrupted by Ctrl-C{}. The last checkpoint is {!r}; continue from it with: "
        "{}".format(at, last, shlex.join(argv))
    )


def invoke_main():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    world_size = args.num_gpus * args.num_machines
    cfg = None
    try:
        with one_line_errors(FloatingPointError):  # a divergence: TrainingDivergedError
            n, machines, rank = args.num_gpus, args.num_machines, args.machine_rank
            if n < 0 or machines < 1 or not 0 <= rank < machines:  # launch would wait forever
                raise ConfigError(
                    f"--num-gpus {n} --num-machines {machines} --machine-rank {rank}: give "
                    "--num-gpus >= 0 (processes per machine), --num-machines >= 1 and "
                    "--machine-rank from 0 to --num-machines - 1."
                )
            if world_size > 1:  # the config checks before any process starts
                cfg, _ = checked_config(args)
                check_config(cfg, train=not args.eval_only, world_size=world_size)
            launch(
                _one_line_main if world_size > 1 else main,
                args.num_gpus,
                args.num_machines,
                args.machine_rank,
                args.dist_url,
                (args,),
            )
    except (KeyboardInterrupt, mp.ProcessExitedException) as e:
        interrupted = (EXIT_INTERRUPTED, -signal.SIGINT)  # exited after Ctrl-C, or killed by it
        if isinstance(e, mp.ProcessExitedException) and e.exit_code not in interrupted:
            # a process that exited with its "ERROR: ..." line
            sys.exit(e.exit_code if e.exit_code in (1, 2) else "ERROR: {}".format(e))
        if cfg is not None:  # several processes: each stops before the line is written
            _stop_processes()
        print(interrupted_line(args, e, cfg and cfg.OUTPUT_DIR), file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)


def _stop_processes(grace_s=2.0, timeout_s=120.0):
    """The processes that :func:`launch` started, stopped as by Ctrl-C (SIGINT, for those that a
    Ctrl-C in the terminal did not reach: ``kill -INT`` of this process) and waited for."""
    children = multiprocessing.active_children()
    for p in children:
        p.join(grace_s / len(children))
    for p in children:
        if p.is_alive():
            os.kill(p.pid, signal.SIGINT)
    for p in children:
        p.join(timeout_s)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
