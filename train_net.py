#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
PANet training script, in the manner of Detectron2's tools/train_net.py and
projects/PointRend/train_net.py (same command line).

Train (the quick schedule on the generated dataset; CPU is fine):
    python3 train_net.py --config-file configs/quick_schedules/panet_R_18_synth_instance.yaml \
        --num-gpus 1
Evaluate a checkpoint:
    python3 train_net.py --config-file <cfg.yaml> --eval-only MODEL.WEIGHTS /path/to/model.pth
Continue an interrupted run from the last checkpoint in OUTPUT_DIR:
    python3 train_net.py --config-file <cfg.yaml> --resume

The trainer (panet_d2.engine.PANetTrainer) is Detectron2's DefaultTrainer with PANet's
checkpointer, evaluators chosen by the test datasets' evaluator_type, the panoptic mapper where
needed, clear input errors and exact resumption; see panet_d2/engine.py.
With TEST.AUG.ENABLED, the model is evaluated once more with test-time augmentation
(GeneralizedRCNNWithTTA) after training / in --eval-only, results under "<key>_TTA".
On a machine without CUDA, MODEL.DEVICE "cuda" falls back to "cpu" (and AMP is switched off).
"""
import logging
import os
import sys

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results

# Importing panet_d2 registers its backbone, heads, meta-architectures and datasets.
from panet_d2 import PANetCheckpointer, add_panet_config
from panet_d2.engine import (
    InputError,
    PANetTrainer,
    adapt_config_to_machine,
    clean_error_message,
    load_checkpoint,
    validate_datasets,
)
from panet_d2.errors import CheckpointError as CheckpointShapeError


class Trainer(PANetTrainer):
    """
    The trainer of this script: :class:`panet_d2.engine.PANetTrainer` (Detectron2's
    DefaultTrainer with PANetCheckpointer, build_evaluator by evaluator_type, test_with_TTA).
    Override methods here to customise one experiment.
    """


def setup(args):
    """
    Create configs and perform basic setups.
    """
    if not args.config_file or not os.path.isfile(args.config_file):
        raise InputError(
            "Config file {!r} (--config-file) does not exist. Model-zoo configs are under "
            "configs/ (or panet_d2.model_zoo.get_config_file('<dir>/<name>.yaml')).".format(
                args.config_file
            )
        )
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    notes = adapt_config_to_machine(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    for note in notes:
        logging.getLogger("detectron2").warning(note)
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        # clear errors for unregistered / missing / unparseable datasets before anything is built
        # (the Trainer does the same for training)
        validate_datasets(cfg, train=False)
        model = Trainer.build_model(cfg)
        checkpointer = PANetCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        load_checkpoint(checkpointer, cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    # With TEST.AUG.ENABLED the trainer evaluates once more with test-time augmentation after
    # training (Detectron2's EvalHook(0, test_with_TTA), see PANetTrainer.build_hooks).
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (InputError, CheckpointShapeError) as e:
        # a problem with the inputs: its message says what and where; no traceback
        sys.exit("ERROR: " + clean_error_message(e))


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
