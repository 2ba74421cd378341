#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Fig. 3 of the PANet paper for a trained model: with adaptive feature pooling and max fusion, the
share of the fused features that comes from each pyramid level (N2..N5 = "level 1".."level 4"),
for the proposals grouped by the level FPN would assign them to.

    python3 tools/analyze_level_usage.py \
        --config-file configs/quick_schedules/panoptic_panet_R_18_synth.yaml \
        [--dataset NAME] [--output DIR] [--num-images N] [--ties split|first|exclude] \
        MODEL.WEIGHTS output/quick_schedules/panoptic_panet_R_18_synth/model_final.pth

Runs inference on a test dataset (default: the first of DATASETS.TEST) and counts, for every
proposal, the level each fused element came from: in the box branch after the per-level fc1 (or
the heavier head's conv1), in the mask branch after the per-level conv1, each after its norm and
ReLU, as the max fusion sees them (``panet_d2/analysis/level_usage.py`` says how ties are counted:
by default a tie of k levels gives 1/k to each). The box branch counts every RPN proposal that
reaches the box head, the mask branch every detection that reaches the mask head.

Prints the L x L tables of percentages (rows: the FPN level of the proposal; columns: the level
the features came from; each row sums to 100), and writes ``level_usage.json`` and the bar chart
``level_usage.png`` into --output (default ``<OUTPUT_DIR>/level_usage``).
"""

import panet_d2  # noqa: F401  isort: skip  (first: Detectron2 then imports without warnings)

import argparse
import itertools
import json
import logging
import os
import re

import torch
from tqdm import tqdm

from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from panet_d2 import PANetCheckpointer  # registers the models and datasets
from panet_d2.analysis import TIE_RULES, LevelUsage, draw_level_usage, format_table
from panet_d2.engine import load_config, one_line_errors
from panet_d2.engine.checks import check_registered
from panet_d2.errors import ConfigError

logger = logging.getLogger("panet_d2.analyze_level_usage")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config")
    parser.add_argument("--dataset", help="test dataset (default: the first of DATASETS.TEST)")
    parser.add_argument(
        "--output", help="folder of level_usage.json / .png (default: <OUTPUT_DIR>/level_usage)"
    )
    parser.add_argument(
        "--num-images", type=int, default=0, help="count on the first N images (default: all)"
    )
    parser.add_argument(
        "--ties", choices=TIE_RULES, default="split", help="how tied maxima are counted"
    )
    parser.add_argument(
        "opts", default=[], nargs=argparse.REMAINDER, help="config options: KEY VALUE pairs"
    )
    return parser.parse_args(argv)


def setup(args):
    """The config; refuses one whose model Fig. 3 does not apply to (no AFP, sum fusion)."""
    cfg, notes = load_config(args.config_file, args.opts, lazy=False)
    cfg.freeze()
    setup_logger(name="detectron2")
    setup_logger(name="panet_d2")
    for note in notes:
        logger.warning(note)
    if not cfg.MODEL.AFP.ENABLED:
        raise ConfigError(
            "{}: MODEL.AFP.ENABLED=False. Fig. 3 counts the levels that adaptive feature "
            "pooling's max fusion takes each feature from; without AFP every proposal is pooled "
            "from the one level FPN assigns it to.".format(args.config_file)
        )
    if cfg.MODEL.AFP.FUSE_TYPE != "max":
        raise ConfigError(
            "{}: MODEL.AFP.FUSE_TYPE={!r}. Fig. 3 needs max fusion, where each fused element "
            "comes from one level; with sum fusion every level adds to every element.".format(
                args.config_file, cfg.MODEL.AFP.FUSE_TYPE
            )
        )
    return cfg


def main(args):
    """
    Returns:
        dict: what level_usage.json holds ("branches": the tables of
        :meth:`panet_d2.analysis.LevelUsage.tables`).
    """
    cfg = setup(args)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
    if not dataset:
        raise ConfigError("No dataset: give --dataset or set DATASETS.TEST.")
    check_registered(dataset, "--dataset")
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "level_usage")

    model = build_model(cfg)
    model.eval()
    try:
        usage = LevelUsage(model, ties=args.ties)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # required (a CheckpointError line if empty): every tensor of the model from the file
    PANetCheckpointer(model).load(cfg.MODEL.WEIGHTS)

    loader = build_detection_test_loader(cfg, dataset)
    n = len(loader) if args.num_images <= 0 else min(args.num_images, len(loader))
    with usage, torch.no_grad():
        for inputs in tqdm(itertools.islice(loader, n), total=n, desc="images", unit="img"):
            model(inputs)

    tables = usage.tables()
    for name, table in tables.items():
        print(format_table(name, table) + "\n")
    pooler = next(iter(usage.branches.values())).pooler
    result = {
        "config_file": args.config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "dataset": dataset,
        "num_images": n,
        "ties": args.ties,
        "canonical_box_size": pooler.canonical_box_size,
        "canonical_level": pooler.canonical_level,
        "branches": tables,
    }
    os.makedirs(output, exist_ok=True)
    json_path = os.path.join(output, "level_usage.json")
    text = json.dumps(result, indent=2)
    # one line per innermost list (a table row)
    text = re.sub(
        r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text
    )
    with open(json_path, "w") as f:
        f.write(text + "\n")
    png_path = os.path.join(output, "level_usage.png")
    title = "{} on {} ({} images)".format(os.path.basename(args.config_file), dataset, n)
    draw_level_usage(tables, png_path, title=title)
    logger.info("Wrote {} and {}".format(json_path, png_path))
    return result


def invoke_main(argv=None):
    args = parse_args(argv)
    with one_line_errors():
        return main(args)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
