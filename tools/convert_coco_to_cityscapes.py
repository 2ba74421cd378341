#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Turn a COCO (80-class) PANet / Mask R-CNN checkpoint into the initial weights of a Cityscapes
(8-class) model, as the PANet paper's "COCO" row of Table 9 (and Detectron's
convert_coco_model_to_cityscapes.py) does: every tensor is kept; the class-dependent predictors
keep the rows of the matching COCO classes (Cityscapes' rider starts from COCO's person).

    python3 tools/convert_coco_to_cityscapes.py COCO_CHECKPOINT OUTPUT.pth

A wrong input, an output that is the input (or a link to it), a folder or not writable, and
weights that hold NaN or inf are one line "ERROR: ..." (exit code 2), with nothing written; the
output is written to ``OUTPUT.partial`` and renamed over OUTPUT once complete.
"""

import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_TOOLS))
import panet_d2  # noqa: F401  isort: skip  (first: Detectron2 then imports without warnings)

import argparse

import torch

from detectron2.data import MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from panet_d2.checkpoint import check_weights_file, read_checkpoint
from panet_d2.engine.cli import one_line_errors
from panet_d2.errors import CheckpointError

if _TOOLS not in sys.path:  # convert_panet_release.py next to this file (also when imported)
    sys.path.insert(0, _TOOLS)
# its checks of the output, its atomic write and its refusal of NaN / inf
from convert_panet_release import (  # noqa: E402  isort: skip
    output_file_problem,
    refuse_non_finite,
    save_checkpoint,
)

# Cityscapes thing class -> the COCO class whose predictor rows it starts from
COCO_NAME = {"rider": "person"}


def cityscapes_to_coco_indices():
    """For each Cityscapes thing class (Detectron2's order), its contiguous COCO index."""
    coco = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    cityscapes = MetadataCatalog.get("cityscapes_fine_instance_seg_train").thing_classes
    return [coco.index(COCO_NAME.get(name, name)) for name in cityscapes]


def convert(state_dict, indices):
    """
    Args:
        state_dict (dict[str, Tensor]): a COCO model's state dict.
        indices (list[int]): COCO class index of each new class.

    Returns:
        dict[str, Tensor]: the same tensors, the class-dependent ones restricted to ``indices``:
        box classifier (K + 1 rows, background last), class-specific box regression (4 rows per
        class), class-specific mask predictor (one output channel per class).
    """
    idx = torch.as_tensor(indices)
    out = dict(state_dict)
    for prefix in ("roi_heads.box_predictor.cls_score.",):
        for suffix in ("weight", "bias"):
            t = torch.as_tensor(state_dict[prefix + suffix])
            out[prefix + suffix] = torch.cat([t[idx], t[-1:]])  # background stays last
    for suffix in ("weight", "bias"):
        key = "roi_heads.box_predictor.bbox_pred." + suffix
        t = torch.as_tensor(state_dict[key])
        if t.shape[0] > 4:  # class-specific regression
            out[key] = t.view(-1, 4, *t.shape[1:])[idx].reshape(-1, *t.shape[1:])
        key = "roi_heads.mask_head.predictor." + suffix
        if key in state_dict and torch.as_tensor(state_dict[key]).shape[0] > 1:
            out[key] = torch.as_tensor(state_dict[key])[idx]
    return out


def _coco_state_dict(path):
    """The model state dict of a COCO (80-class) checkpoint; nothing in the file is run (.pth:
    weights_only; .pkl: NumPy arrays only). Raises CheckpointError naming the file otherwise."""
    check_weights_file(path, "the COCO checkpoint")
    loaded = read_checkpoint(path)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
        raise CheckpointError("{} holds no 'model' state dict.".format(path))
    state_dict = {k: torch.as_tensor(v) for k, v in loaded["model"].items()}
    key = "roi_heads.box_predictor.cls_score.weight"
    if key not in state_dict:
        raise CheckpointError(
            "{} has no box predictor: not a COCO PANet / Mask R-CNN checkpoint.".format(path)
        )
    num_classes = state_dict[key].shape[0] - 1
    if num_classes != 80:
        raise CheckpointError(
            "{} has a {}-class box predictor; expected a COCO (80-class) model.".format(
                path, num_classes
            )
        )
    return state_dict


def _output_problem(path, checkpoint):
    """What makes the output ``path`` unwritable (convert_panet_release's checks), or None."""
    if os.path.isfile(path) and os.path.isfile(checkpoint) and os.path.samefile(path, checkpoint):
        return "Output {!r} is the input COCO checkpoint; give another file name.".format(path)
    return output_file_problem(path, checkpoint)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "checkpoint", help="COCO checkpoint (.pth of panet_d2 / Detectron2, or .pkl)"
    )
    parser.add_argument("output", help="where to write the Cityscapes initial weights (.pth)")
    args = parser.parse_args(argv)
    with one_line_errors():  # a CheckpointError, a full disk: one line, exit code 2
        check_weights_file(args.checkpoint, "the COCO checkpoint")
        problem = _output_problem(args.output, args.checkpoint)
        if problem:
            raise CheckpointError(problem)
        state_dict = _coco_state_dict(args.checkpoint)
        refuse_non_finite(state_dict, "COCO checkpoint tensor")
        converted = convert(state_dict, cityscapes_to_coco_indices())
        save_checkpoint(
            {"model": converted, "__author__": "panet_d2 convert_coco_to_cityscapes"}, args.output
        )
    print(
        "Wrote {} (8 Cityscapes classes from COCO's {}).".format(
            args.output, cityscapes_to_coco_indices()
        )
    )


if __name__ == "__main__":
    main()
