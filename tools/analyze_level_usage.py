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
ReLU, as the max fusion sees them (``docs/level_usage.md`` says how ties are counted: by default a
tie of k levels gives 1/k to each). The box branch counts every RPN proposal that
reaches the box head, the mask branch every detection that reaches the mask head.

Prints the L x L tables of percentages (rows: the FPN level of the proposal; columns: the level
the features came from; each row sums to 100), and writes ``level_usage.json`` and the bar chart
``level_usage.png`` into --output (default ``<OUTPUT_DIR>/level_usage``). The model says whether
Fig. 3 applies to it (adaptive feature pooling with max fusion); one line if not.
"""

import panet_d2  # noqa: F401  isort: skip  (first: Detectron2 then imports without warnings)

import argparse
import itertools
import json
import logging
import os
import re
import sys
from typing import Dict, Optional

import torch
from tqdm import tqdm

from detectron2.data import build_detection_test_loader
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from panet_d2 import PANetCheckpointer  # registers the models and datasets
from panet_d2.config import load_config_file
from panet_d2.engine import adapt_config_to_machine, one_line_errors
from panet_d2.engine.checks import check_dataset, check_output_dir
from panet_d2.errors import ConfigError

_TOOLS = os.path.dirname(os.path.abspath(__file__))
if _TOOLS not in sys.path:  # level_usage.py next to this file (also when imported)
    sys.path.insert(0, _TOOLS)
from level_usage import TIE_RULES, LevelUsage  # noqa: E402  isort: skip

logger = logging.getLogger("panet_d2.analyze_level_usage")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config")
    parser.add_argument("--dataset", help="test dataset (default: the first of DATASETS.TEST)")
    parser.add_argument(
        "--output", help="folder of level_usage.json / .png (default: <OUTPUT_DIR>/level_usage)"
    )
    parser.add_argument(
        "--num-images", type=int, default=0, help="count on the first N images (default 0: all)"
    )
    parser.add_argument(
        "--ties", choices=TIE_RULES, default="split", help="how tied maxima are counted"
    )
    parser.add_argument(
        "opts", default=[], nargs=argparse.REMAINDER, help="config options: KEY VALUE pairs"
    )
    return parser.parse_args(argv)


def setup(args):
    """The config (whether Fig. 3 applies is the model's to say: :class:`LevelUsage`)."""
    cfg = load_config_file(args.config_file, args.opts, lazy=False)
    notes = adapt_config_to_machine(cfg)
    cfg.freeze()
    setup_logger(name="detectron2")
    setup_logger(name="panet_d2")
    for note in notes:
        logger.warning(note)
    return cfg


def format_table(name: str, table: dict) -> str:
    """A branch's table of :meth:`LevelUsage.tables` as text, for printing."""
    head = "{:<26}".format("{} branch".format(name)) + "".join(
        "{:>10}".format("level {}".format(j + 1)) for j in range(len(table["columns"]))
    )
    lines = [
        "{} branch, after {}: % of the fused elements from each level (columns), by the level FPN "
        "assigns the proposal to (rows)".format(name, table["layer"]),
        head,
    ]
    for i, row in enumerate(table["percent"]):
        label = "level {} (N{}, {} props)".format(i + 1, i + 2, table["proposals"][i])
        lines.append(
            "{:<26}".format(label)
            + "".join("{:>10}".format("-" if v is None else "{:.1f}".format(v)) for v in row)
        )
    return "\n".join(lines)


def draw_level_usage(tables: Dict[str, dict], path: str, title: Optional[str] = None):
    """
    Draws the paper's Fig. 3 as grouped bars into ``path`` (PNG), on a figure of its own with
    matplotlib's Agg canvas (no pyplot: matplotlib's backend is left as it is): one panel per
    branch; horizontal axis the level the pooled features come from; one series per group of
    proposals (the level FPN assigns them to; the paper's "lines"; level 1 blue, level 4 yellow
    as in the paper's text).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = ["#1f77b4", "#d62728", "#2ca02c", "#f2c80f", "#9467bd", "#8c564b"]
    fig = Figure(figsize=(5.0 * len(tables), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tables), squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        rows = table["percent"]
        L = len(rows)
        width = 0.8 / L
        for i, row in enumerate(rows):
            xs = [j + (i - (L - 1) / 2) * width for j in range(L)]
            ys = [0.0 if v is None else v for v in row]
            label = "level {} ({} proposals)".format(i + 1, table["proposals"][i])
            ax.bar(xs, ys, width, color=colors[i % len(colors)], label=label)
        ax.set_xticks(range(L))
        ax.set_xticklabels(["level {}".format(j + 1) for j in range(L)])
        ax.set_xlabel("level the pooled features come from")
        ax.set_ylabel("ratio (%)")
        ax.set_ylim(0, 100)
        ax.set_title("{} branch ({})".format(name, table["layer"].split(".")[-1]))
        ax.legend(title="FPN level of proposal", fontsize=8, title_fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_json(result: dict, path: str):
    """``result`` as indented JSON, one line per innermost list (a table row)."""
    text = json.dumps(result, indent=2)
    text = re.sub(
        r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text
    )
    with open(path, "w") as f:
        f.write(text + "\n")


def main(args):
    """
    Returns:
        dict: what level_usage.json holds ("branches": the tables of
        :meth:`level_usage.LevelUsage.tables`).
    """
    cfg = setup(args)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None)
    if not dataset:
        raise ConfigError("No dataset: give --dataset or set DATASETS.TEST.")
    check_dataset(dataset, "--dataset")
    if args.num_images < 0:
        raise ConfigError(
            "--num-images {}: must be 0 (every image) or positive".format(args.num_images)
        )
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "level_usage")
    check_output_dir(output, "--output" if args.output else "OUTPUT_DIR")

    model = build_model(cfg)
    model.eval()
    try:
        usage = LevelUsage(model, ties=args.ties)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # required (a CheckpointError line if empty): every tensor of the model from the file
    PANetCheckpointer(model).load(cfg.MODEL.WEIGHTS)

    loader = build_detection_test_loader(cfg, dataset)
    n = len(loader) if args.num_images == 0 else min(args.num_images, len(loader))
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
    write_json(result, json_path)
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
