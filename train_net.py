#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
PANet training script, with the command line of Detectron2's tools/train_net.py.

    python3 train_net.py --config-file configs/quick_schedules/panoptic_panet_R_18_synth.yaml \
        --num-gpus 1                                        # train, then evaluate
    python3 train_net.py --config-file <cfg.yaml> --eval-only MODEL.WEIGHTS /path/to/model.pth
    python3 train_net.py --config-file <cfg.yaml> --resume  # continue from OUTPUT_DIR

The trainer is :class:`panet_d2.engine.PANetTrainer`. A bad input (config, dataset, image,
checkpoint: :class:`panet_d2.errors.InputError`) or a diverging run
(:class:`panet_d2.errors.TrainingDivergedError`) stops the run with one line "ERROR: ...", also
with several processes (--num-gpus, --num-machines; on CPUs too): the config is checked before
they start. --eval-only needs weights (MODEL.WEIGHTS, or the last checkpoint with --resume) that
hold every tensor of the model; see docs/reliability.md.
"""

import panet_d2  # noqa: F401  isort: skip  (first: Detectron2 then imports without warnings)

import logging
import sys

import torch.multiprocessing as mp

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from panet_d2 import PANetCheckpointer  # registers the models and datasets
from panet_d2.engine import PANetTrainer
from panet_d2.engine import load_config as panet_load_config
from panet_d2.engine import one_line_errors
from panet_d2.engine.checks import check_config, check_inputs, check_output_dir


class Trainer(PANetTrainer):
    """The trainer of this script; override its methods here to customise an experiment."""


def load_config(args):
    """
    The config of the command line (frozen) and the notes of ``adapt_config_to_machine``; its
    files (``_BASE_`` included), keys and OUTPUT_DIR checked, with a :class:`ConfigError` naming
    the file or key.
    """
    cfg, notes = panet_load_config(args.config_file, args.opts, lazy=False)
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR)
    return cfg, notes


def setup(args):
    """The config of the command line; sets up Detectron2's and panet_d2's loggers."""
    cfg, notes = load_config(args)
    default_setup(cfg, args)  # the "detectron2" and "fvcore" loggers, config.yaml, seeds
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="panet_d2")
    for note in notes:
        logging.getLogger("panet_d2").warning(note)
    return cfg


def main(args):
    cfg = setup(args)
    if not args.eval_only:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()

    check_inputs(cfg, train=False)
    model = Trainer.build_model(cfg)
    checkpointer = PANetCheckpointer(model, save_dir=cfg.OUTPUT_DIR)  # every tensor from the file
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    results = Trainer.test(cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(Trainer.test_with_TTA(cfg, model))
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def _one_line_main(args):
    # main in one of several processes: an InputError as one line (the traceback that
    # torch.multiprocessing would print is of no use), then exit code 2 (a divergence: 1)
    with one_line_errors(FloatingPointError):
        return main(args)


def invoke_main():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    world_size = args.num_gpus * args.num_machines
    try:
        with one_line_errors(FloatingPointError):  # a divergence: TrainingDivergedError
            if world_size > 1:  # the config checks before any process starts
                cfg, _ = load_config(args)
                check_config(cfg, train=not args.eval_only, world_size=world_size)
            launch(
                _one_line_main if world_size > 1 else main,
                args.num_gpus,
                args.num_machines,
                args.machine_rank,
                args.dist_url,
                (args,),
            )
    except mp.ProcessExitedException as e:  # a process that exited with its "ERROR: ..." line
        sys.exit(e.exit_code if e.exit_code in (1, 2) else "ERROR: {}".format(e))


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
