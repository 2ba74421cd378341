#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
PANet training script, with the command line of Detectron2's tools/train_net.py.

    python3 train_net.py --config-file configs/quick_schedules/panoptic_panet_R_18_synth.yaml \
        --num-gpus 1                                        # train, then evaluate
    python3 train_net.py --config-file <cfg.yaml> --eval-only MODEL.WEIGHTS /path/to/model.pth
    python3 train_net.py --config-file <cfg.yaml> --resume  # continue from OUTPUT_DIR

The trainer is :class:`panet_d2.engine.PANetTrainer`. A bad input (config, dataset, image,
checkpoint: :class:`panet_d2.errors.InputError`) stops the run with one line "ERROR: ...".
"""

import logging
import os
import sys

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from panet_d2 import PANetCheckpointer, add_panet_config  # registers the models and datasets
from panet_d2.engine import PANetTrainer, adapt_config_to_machine
from panet_d2.errors import InputError, check_inputs, clean_error_message


class Trainer(PANetTrainer):
    """The trainer of this script; override its methods here to customise an experiment."""


def setup(args):
    """The config of the command line; sets up Detectron2's and panet_d2's loggers."""
    if not os.path.isfile(args.config_file):
        raise InputError(
            "Config file {!r} (--config-file) does not exist.".format(args.config_file)
        )
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    notes = adapt_config_to_machine(cfg)
    cfg.freeze()
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
    checkpointer = PANetCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    results = Trainer.test(cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(Trainer.test_with_TTA(cfg, model))
    if comm.is_main_process():
        verify_results(cfg, results)
    return results


def invoke_main():
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, (args,))
    except InputError as e:
        sys.exit("ERROR: " + clean_error_message(e))


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
