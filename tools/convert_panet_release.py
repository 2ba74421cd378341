#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Convert a trained model of the authors' PANet release (github.com/ShuLiu1993/PANet,
Detectron.pytorch on PyTorch 0.4) into a Detectron2 checkpoint of panet_d2:

    python3 tools/convert_panet_release.py INPUT.pth OUTPUT.pth

The three released COCO models and the config that computes what each computes:

    variant  release config (its configs/panet/)  panet_d2 config (RELEASE_CONFIGS, in configs/)
    det      e2e_panet_R-50-FPN_1x_det.yaml        COCO-Detection/panet_R_50_FPN_release_1x.yaml
    det_2fc  e2e_panet_R-50-FPN_1x_det_2fc.yaml    COCO-Detection/panet_R_50_FPN_release_2fc_1x.yaml
    mask     e2e_panet_R-50-FPN_2x_mask.yaml       COCO-InstanceSegmentation/
                                                   panet_R_50_FPN_release_2x.yaml

A release checkpoint is ``{'step', 'train_size', 'batch_size', 'model': state_dict, 'optimizer'}``.
It is read with ``torch.load(..., weights_only=True)``: no code from the file runs (numpy scalars,
which a 2018 optimizer state may hold, are the only globals allowed besides tensors). The variant
is recognised from the keys; every tensor is mapped to panet_d2's names:

* ResNet (``Conv_Body.conv_body.res*``): frozen affine BN (``AffineChannel2d``: weight and bias)
  becomes Detectron2's ``FrozenBatchNorm2d`` with running_mean 0 and running_var 1 - eps, so that
  its scale ``weight * (running_var + eps).rsqrt()`` equals the release's weight exactly;
* FPN (``conv_top``, ``topdown_lateral_modules``, ``posthoc_modules``, GN), the bottom-up path
  (``panet_buttomup_conv{1,2}_modules``: conv with bias + GN; MODEL.PAFPN.CONV_BIAS), the RPN
  (``FPN_RPN_*``: the same anchor order, 3 aspect ratios 0.5, 1, 2 per location, as Detectron2's);
* per-level layers (ModuleLists of 4: ``Box_Head.conv1_head``, ``Box_Head.fc1``,
  ``Mask_Head.mask_conv1``) stacked into panet_d2's batched per-level layers (``per_level.*``);
* predictors: 81 rows with background first become Detectron2's 80 + background last
  (``cls_score``); class-specific box deltas and masks lose the background's rows.

Any tensor it cannot place, or any tensor of the release's model that is missing, is an error
that lists them; the result is then checked against the model its config builds (every key and
shape; a mismatch names the config options to append that fit, e.g. MODEL.RESNETS.DEPTH 101 for
an R-101), and written as ``{"model": ..., "__author__": ..., "matching_heuristics": False}``,
which Detectron2's ``DetectionCheckpointer`` and ``train_net.py`` load as they are (no name
matching).

A wrong input is one line "ERROR: ..." (exit code 2): a missing file, a folder, or a file that
``torch.save`` did not write (a text file, e.g.), and an output that is the input, a folder, or
in a folder where no file can be created, before torch and Detectron2 are imported; a Detectron2
checkpoint (this tool's output, train_net.py's ``model_final.pth``, a model-zoo .pkl) as "already
a Detectron2 checkpoint: pass it as MODEL.WEIGHTS"; a Detectron (Caffe2) .pkl as such; a
truncated file as truncated or damaged; a tensor that is not floating point, or holds NaN or inf,
by name (nothing is written). The output is written to ``OUTPUT.partial`` and renamed
over OUTPUT once complete: a failed write (a full disk, e.g.) leaves an existing OUTPUT as it was.
"""

import argparse
import errno
import os
import pickle
import re
import shlex
import sys
import tempfile
import zipfile
from collections import OrderedDict, defaultdict
from typing import Dict, List, Optional

# the first bytes of a file that torch.save wrote: a zip archive (torch >= 1.6) or a pickle
# (the legacy format of PyTorch 0.4, protocol 2 and up)
_TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")
_DETECTRON2_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.", "sem_seg_head.")


def input_file_problem(path: str) -> Optional[str]:
    """
    What is wrong with the input file, found before torch and Detectron2 are imported (which
    takes 10-45 s): it does not exist, is a folder, or is not a file that ``torch.save`` wrote
    (a text file, e.g.). None when it may be a checkpoint.
    """
    if not os.path.exists(path):
        return "Release checkpoint {!r} does not exist.".format(path)
    if os.path.isdir(path):
        return "Release checkpoint {!r} is a folder; give the .pth file.".format(path)
    if not os.path.isfile(path):  # a pipe would hang the read
        return "Release checkpoint {!r} is not a regular file.".format(path)
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        return "Cannot read release checkpoint {!r}: {}.".format(path, e.strerror or e)
    if head.startswith(_TORCH_FILE_MAGIC[0]):  # torch's zip, or a zip archive holding one
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None  # torch says why
        if not any(n.endswith("/data.pkl") for n in names):
            return (
                "{!r} is a zip archive (it holds {}), not the file that torch.save wrote: extract "
                "the release's .pth from it and convert that.".format(
                    path, ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
                )
            )
    if head.startswith(_TORCH_FILE_MAGIC):
        return None
    kind = "an empty file" if not head else "not a file that torch.save wrote"
    text = head.decode("utf-8", errors="replace").strip()
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        kind = "a text file (it begins {!r})".format(text.splitlines()[0][:40])
    return (
        "{!r} is {}: expected a trained model of the PANet release (github.com/ShuLiu1993/PANet), "
        "the .pth file that torch.save wrote ({{'model': state_dict, 'step': ...}}).".format(
            path, kind
        )
    )


def output_file_problem(path: str, input_path: str) -> Optional[str]:
    """
    What makes the output ``path`` unwritable, found before the conversion: it is the input, a
    folder or not a regular file, a .pkl (read back as another format), its folder is a file or
    no file can be created there. None
    when it can be written (then atomically: a failed write leaves an existing file as it was).
    """
    if os.path.exists(path) and os.path.exists(input_path) and os.path.samefile(path, input_path):
        return "Output {!r} is the input release checkpoint; give another file name.".format(path)
    if os.path.isdir(path):
        return "Output {!r} is a folder; give the .pth file to write.".format(path)
    if path.endswith(("/", os.sep)):
        return "Output {!r} names a folder; give the .pth file to write (e.g. {!r}).".format(
            path, os.path.join(path, "converted.pth")
        )
    if os.path.exists(path) and not os.path.isfile(path):
        return "Output {!r} exists and is not a regular file; give a .pth file name.".format(path)
    if path.endswith(".pkl"):  # (panet_d2.checkpoint, as Detectron2, reads a .pkl as NumPy arrays)
        return (
            "Output {!r}: MODEL.WEIGHTS reads a .pkl file as a pickle of NumPy arrays (Detectron2's"
            " model zoo), and this tool writes a torch file: give a .pth name.".format(path)
        )
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # the folder that exists, where the missing ones go
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return "Cannot write {!r}: {!r} is a file, not a folder.".format(path, folder)
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        return "Cannot write {!r}: no file can be created in {!r} ({}).".format(
            path, folder, e.strerror or e
        )
    return None


def _flags(parser):
    parser.add_argument(
        "--variant", choices=sorted(RELEASE_CONFIGS), help="default: recognised from the keys"
    )
    parser.add_argument(
        "--no-model-check",
        action="store_true",
        help="do not build the config's model to check every key and shape",
    )
    return parser


def _parser():
    parser = argparse.ArgumentParser(
        description="Convert a trained model of the PANet release (ShuLiu1993/PANet) into a "
        "Detectron2 checkpoint of panet_d2."
    )
    parser.add_argument("input", help="release checkpoint (.pth: {'model': ..., 'step': ...})")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pth)")
    _flags(parser).add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config options for the check (KEY VALUE ..., after the other arguments)",
    )
    return parser


def _parse_args(argv=None):
    """The arguments; the flags given after the file names (which REMAINDER takes) parsed too."""
    parser = _parser()
    args = parser.parse_args(argv)
    n = 0  # the flags before the first config option
    while n < len(args.opts) and args.opts[n].startswith("-"):
        n += 2 if args.opts[n] == "--variant" else 1
    flags, args.opts = args.opts[:n], args.opts[n:]
    _flags(argparse.ArgumentParser(prog=parser.prog)).parse_args(flags, namespace=args)
    misplaced = [o for o in args.opts if o.split("=")[0] in ("--variant", "--no-model-check")]
    if misplaced:
        parser.error("give {} before the config options (KEY VALUE ...)".format(misplaced[0]))
    if args.no_model_check and args.opts:  # they would be copied into the command printed
        parser.error("--no-model-check: the config options are for the model check; give one")
    return args


# variant -> config (relative to configs/) that computes what the release's model computes
RELEASE_CONFIGS = {
    "det": "COCO-Detection/panet_R_50_FPN_release_1x.yaml",
    "det_2fc": "COCO-Detection/panet_R_50_FPN_release_2fc_1x.yaml",
    "mask": "COCO-InstanceSegmentation/panet_R_50_FPN_release_2x.yaml",
}

if __name__ == "__main__":  # a wrong input or output file in one line, before the imports below
    _args = _parse_args()
    _problem = input_file_problem(_args.input) or output_file_problem(_args.output, _args.input)
    if _problem:
        print("ERROR: " + _problem, file=sys.stderr)
        sys.exit(2)  # an input error (docs/reliability.md)

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing panet_d2

from detectron2.utils.file_io import PathManager

from panet_d2.checkpoint import (
    CLASS_KEYS,
    RestrictedUnpickler,
    abbrev,
    fit_hints,
    non_finite,
    scan_torch_file,
)
from panet_d2.compat import atomic_output_files
from panet_d2.engine.cli import one_line_errors
from panet_d2.errors import CheckpointError, os_error_cause

__all__ = [
    "RELEASE_CONFIGS",
    "detect_variant",
    "convert_release_state_dict",
    "load_release_checkpoint",
    "check_against_model",
    "main",
]

# Detectron2's FrozenBatchNorm2d eps (detectron2.layers.FrozenBatchNorm2d(num_features, eps=1e-5))
FROZEN_BN_EPS = 1e-5

# Globals a 2018 checkpoint may hold outside its tensors (numpy scalars in the optimizer state):
# data constructors only, allowed for weights_only loading under the name the file gives them
# (NumPy 1.x wrote numpy.core.multiarray.scalar, which NumPy 2 has as numpy._core.multiarray's).
_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")  # NumPy 2, NumPy 1.x
_NUMPY_SCALAR_GLOBALS = {
    "numpy.core.multiarray.scalar": (_MULTIARRAY, "scalar"),
    "numpy._core.multiarray.scalar": (_MULTIARRAY, "scalar"),
    "numpy.dtype": (("numpy",), "dtype"),
}
for _n in ("Float64", "Float32", "Int64", "Int32", "Bool"):
    _NUMPY_SCALAR_GLOBALS["numpy.dtypes.{}DType".format(_n)] = (("numpy.dtypes",), _n + "DType")

# Top-level modules of the release's generalized_rcnn (lib/modeling/model_builder.py)
_BODY = "Conv_Body."
_RESNET = _BODY + "conv_body."
# Detectron2's ResNet depth (MODEL.RESNETS.DEPTH) of the bottleneck blocks in res4
# (detectron2.modeling.backbone.resnet: 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3])
_DEPTH_OF_RES4_BLOCKS = {6: 50, 23: 101, 36: 152}
# the command that converts (in the options that check_against_model suggests)
TOOL_COMMAND = ["python3", "tools/convert_panet_release.py"]


def detect_variant(release_model_state: Dict[str, torch.Tensor]) -> str:
    """
    Recognise a release model from its state dict's keys.

    Returns:
        str: "det" (heavier box head ``roi_Xconv1fc_gn_head_panet``, no mask branch), "det_2fc"
        (``roi_2mlp_head_gn_panet``) or "mask" (heavier box head + ``Mask_Head``).

    Raises:
        CheckpointError: the keys are none of the release's three models.
    """
    keys = [k[len("module.") :] if k.startswith("module.") else k for k in release_model_state]
    hhd = any(k.startswith("Box_Head.conv1_head.") for k in keys)
    two_fc = any(re.match(r"Box_Head\.fc1\.\d+\.", k) for k in keys)
    mask = any(k.startswith(("Mask_Head.", "Mask_Outs.")) for k in keys)
    if not any(k.startswith(_BODY + "panet_buttomup_conv1_modules.") for k in keys):
        raise CheckpointError(
            "Not a model of the PANet release (github.com/ShuLiu1993/PANet): it has no "
            "'Conv_Body.panet_buttomup_conv1_modules.*' (bottom-up path) tensors; its keys begin "
            "{}.".format(sorted(keys)[:5])
        )
    if hhd and not two_fc:
        return "mask" if mask else "det"
    if two_fc and not hhd and not mask:
        return "det_2fc"
    raise CheckpointError(
        "Unknown PANet release model: box head {}, mask branch {}. The release's models are det "
        "(Box_Head.conv1_head.*), det_2fc (Box_Head.fc1.<level>.*) and mask (Box_Head.conv1_head.* "
        "and Mask_Head.*).".format(
            "+".join(n for n, on in (("conv1_head", hhd), ("fc1 per level", two_fc)) if on)
            or "none",
            "yes" if mask else "no",
        )
    )


# ------------------------------------------------------------------------------------------------
# one-to-one renames: (release regex, panet_d2 template); "{n}" fields computed by _rename
# ------------------------------------------------------------------------------------------------
def _resnet_rules():
    affine = r"(?P<p>weight|bias)"
    return [
        (_RESNET + r"res1\.conv1\.weight", "backbone.bottom_up.stem.conv1.weight"),
        (_RESNET + r"res1\.bn1\." + affine, "backbone.bottom_up.stem.conv1.norm.{p}"),
        (
            _RESNET + r"res(?P<s>[2-5])\.(?P<b>\d+)\.conv(?P<i>[123])\.weight",
            "backbone.bottom_up.res{s}.{b}.conv{i}.weight",
        ),
        (
            _RESNET + r"res(?P<s>[2-5])\.(?P<b>\d+)\.bn(?P<i>[123])\." + affine,
            "backbone.bottom_up.res{s}.{b}.conv{i}.norm.{p}",
        ),
        (
            _RESNET + r"res(?P<s>[2-5])\.(?P<b>\d+)\.downsample\.0\.weight",
            "backbone.bottom_up.res{s}.{b}.shortcut.weight",
        ),
        (
            _RESNET + r"res(?P<s>[2-5])\.(?P<b>\d+)\.downsample\.1\." + affine,
            "backbone.bottom_up.res{s}.{b}.shortcut.norm.{p}",
        ),
    ]


def _neck_rules():
    wb = r"(?P<p>weight|bias)"
    return [
        # FPN with GN (FPN.USE_GN): conv (no bias) + GroupNorm; levels from the coarsest (5)
        (_BODY + r"conv_top\.0\.weight", "backbone.fpn_lateral5.weight"),
        (_BODY + r"conv_top\.1\." + wb, "backbone.fpn_lateral5.norm.{p}"),
        (
            _BODY + r"topdown_lateral_modules\.(?P<i>\d)\.conv_lateral\.0\.weight",
            "backbone.fpn_lateral{lat}.weight",
        ),
        (
            _BODY + r"topdown_lateral_modules\.(?P<i>\d)\.conv_lateral\.1\." + wb,
            "backbone.fpn_lateral{lat}.norm.{p}",
        ),
        (_BODY + r"posthoc_modules\.(?P<i>\d)\.0\.weight", "backbone.fpn_output{out}.weight"),
        (_BODY + r"posthoc_modules\.(?P<i>\d)\.1\." + wb, "backbone.fpn_output{out}.norm.{p}"),
        # bottom-up path: module k builds N_{k+3} from N_{k+2} (conv1: stride 2, conv2: on the sum)
        (
            _BODY + r"panet_buttomup_conv1_modules\.(?P<i>\d)\.0\." + wb,
            "backbone.bpa_down{bpa}.{p}",
        ),
        (
            _BODY + r"panet_buttomup_conv1_modules\.(?P<i>\d)\.1\." + wb,
            "backbone.bpa_down{bpa}.norm.{p}",
        ),
        (_BODY + r"panet_buttomup_conv2_modules\.(?P<i>\d)\.0\." + wb, "backbone.bpa_out{bpa}.{p}"),
        (
            _BODY + r"panet_buttomup_conv2_modules\.(?P<i>\d)\.1\." + wb,
            "backbone.bpa_out{bpa}.norm.{p}",
        ),
        # RPN on FPN (shared over levels): conv + ReLU, objectness (A), deltas (4A)
        (r"RPN\.FPN_RPN_conv\." + wb, "proposal_generator.rpn_head.conv.{p}"),
        (r"RPN\.FPN_RPN_cls_score\." + wb, "proposal_generator.rpn_head.objectness_logits.{p}"),
        (r"RPN\.FPN_RPN_bbox_pred\." + wb, "proposal_generator.rpn_head.anchor_deltas.{p}"),
    ]


def _head_rules():
    wb = r"(?P<p>weight|bias)"
    box, mask = "roi_heads.box_head.", "roi_heads.mask_head."
    return [
        # heavier head roi_Xconv1fc_gn_head_panet: convs = [conv, GN, ReLU] x 3 -> conv2..conv4
        (r"Box_Head\.convs\.(?P<c>\d+)\.weight", box + "conv{conv}{gn}.weight"),
        (r"Box_Head\.convs\.(?P<c>\d+)\.bias", box + "conv{conv}{gn}.bias"),
        (r"Box_Head\.fc\." + wb, box + "fc1.{p}"),
        # 2fc head roi_2mlp_head_gn_panet: fc2 = [Linear, GN, ReLU]
        (r"Box_Head\.fc2\.0\." + wb, box + "fc2.{p}"),
        (r"Box_Head\.fc2\.1\." + wb, box + "fc2.norm.{p}"),
        # mask head mask_rcnn_fcn_head_v1up4convs_gn_adp_ff
        (r"Mask_Head\.conv_fcn\.(?P<c>\d+)\.weight", mask + "mask_fcn{conv}{gn}.weight"),
        (r"Mask_Head\.conv_fcn\.(?P<c>\d+)\.bias", mask + "mask_fcn{conv}{gn}.bias"),
        (r"Mask_Head\.mask_conv4\.0\.weight", mask + "mask_fcn4.weight"),
        (r"Mask_Head\.mask_conv4\.1\." + wb, mask + "mask_fcn4.norm.{p}"),
        (r"Mask_Head\.mask_conv4_fc\.0\.weight", mask + "fc_fusion.conv1.weight"),
        (r"Mask_Head\.mask_conv4_fc\.1\." + wb, mask + "fc_fusion.conv1.norm.{p}"),
        (r"Mask_Head\.mask_conv5_fc\.0\.weight", mask + "fc_fusion.conv2.weight"),
        (r"Mask_Head\.mask_conv5_fc\.1\." + wb, mask + "fc_fusion.conv2.norm.{p}"),
        (r"Mask_Head\.mask_fc\.0\." + wb, mask + "fc_fusion.fc.{p}"),
        (r"Mask_Head\.upconv\." + wb, mask + "deconv.{p}"),
    ]


# per-level ModuleLists: (release regex with the level, panet_d2 key, how the L tensors combine)
# "cat": concatenated along dim 0 (a grouped conv's / a norm's L * C channels); "stack": a new
# leading dim (GroupedLinear's (L, out, in) weight and (L, out) bias).
_BOX, _MASK = "roi_heads.box_head.", "roi_heads.mask_head."
_PER_LEVEL_RULES = [
    (r"Box_Head\.conv1_head\.(?P<l>\d+)\.0\.weight", _BOX + "conv1.per_level.weight", "cat"),
    (
        r"Box_Head\.conv1_head\.(?P<l>\d+)\.1\.(?P<p>weight|bias)",
        _BOX + "conv1.per_level.norm.{p}",
        "cat",
    ),
    (r"Box_Head\.fc1\.(?P<l>\d+)\.0\.(?P<p>weight|bias)", _BOX + "fc1.per_level.{p}", "stack"),
    (r"Box_Head\.fc1\.(?P<l>\d+)\.1\.(?P<p>weight|bias)", _BOX + "fc1.norm.{p}", "cat"),
    (r"Mask_Head\.mask_conv1\.(?P<l>\d+)\.0\.weight", _MASK + "mask_fcn1.per_level.weight", "cat"),
    (
        r"Mask_Head\.mask_conv1\.(?P<l>\d+)\.1\.(?P<p>weight|bias)",
        _MASK + "mask_fcn1.per_level.norm.{p}",
        "cat",
    ),
]

# class-dependent layers: release key -> panet_d2 key
_PREDICTORS = {
    "Box_Outs.cls_score.weight": "roi_heads.box_predictor.cls_score.weight",
    "Box_Outs.cls_score.bias": "roi_heads.box_predictor.cls_score.bias",
    "Box_Outs.bbox_pred.weight": "roi_heads.box_predictor.bbox_pred.weight",
    "Box_Outs.bbox_pred.bias": "roi_heads.box_predictor.bbox_pred.bias",
    "Mask_Outs.classify.weight": "roi_heads.mask_head.predictor.weight",
    "Mask_Outs.classify.bias": "roi_heads.mask_head.predictor.bias",
}


def _fields(m: "re.Match") -> Dict[str, str]:
    """Template fields of a one-to-one rule's match."""
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    if "i" in g:
        i = int(g["i"])
        g["lat"] = str(4 - i)  # topdown_lateral_modules.i: lateral of res(4 - i)
        g["out"] = str(5 - i)  # posthoc_modules.i: output of level 5 - i
        g["bpa"] = str(i + 3)  # panet_buttomup_conv*_modules.i: N_{i+3}
    if "c" in g:
        # an nn.Sequential of [conv, GN, ReLU] blocks: index 3j is conv j, 3j + 1 its GN; the
        # first of these convs is the head's second conv (the first is per level)
        c = int(g["c"])
        g["conv"] = str(c // 3 + 2)
        g["gn"] = {0: "", 1: ".norm"}.get(c % 3, "<ReLU has no parameters>")
    return g


def _classes_with_background(state: Dict[str, torch.Tensor]) -> int:
    """The rows of a release state's box classifier (0 without one); a CheckpointError for a
    classifier of the background only, or of other features than the box regressor's."""
    cls, reg = state.get("Box_Outs.cls_score.weight"), state.get("Box_Outs.bbox_pred.weight")
    if cls is None:
        return 0
    if cls.dim() != 2 or cls.shape[0] < 2:
        raise CheckpointError(
            f"Box_Outs.cls_score.weight is {list(cls.shape)}: a release classifier is (classes + "
            "background, features), with at least one class besides the background."
        )
    if reg is not None and reg.dim() == 2 and reg.shape[1] != cls.shape[1]:
        raise CheckpointError(
            f"Box_Outs.cls_score.weight is {list(cls.shape)}, Box_Outs.bbox_pred.weight "
            f"{list(reg.shape)}: both read the box head's features (their second dimension); a "
            "damaged or transposed tensor, not converted."
        )
    return cls.shape[0]


def _class_rows(key: str, t: torch.Tensor, num_classes_bg: int) -> torch.Tensor:
    """The release's class-dependent rows (background first) in Detectron2's layout."""
    if key.startswith("Box_Outs.cls_score."):
        return torch.cat([t[1:], t[:1]])  # background moves last
    if key.startswith("Box_Outs.bbox_pred."):
        if t.shape[0] == 4 * num_classes_bg or t.shape[0] == 8:  # class-specific or agnostic
            return t[4:].clone()  # the background's 4 rows are never used
        raise CheckpointError(
            "{} has {} rows; expected 4 per class ({} classes with background: {}) or 8 "
            "(class-agnostic).".format(key, t.shape[0], num_classes_bg, 4 * num_classes_bg)
        )
    # Mask_Outs.classify: one output channel per class, background first (never used)
    return t[1:].clone() if t.shape[0] == num_classes_bg else t.clone()


def refuse_non_float(state: Dict[str, torch.Tensor]):
    """A CheckpointError naming the first tensor of a release state that is not floating point."""
    for key, t in state.items():  # the release's tensors are all float32
        if not t.is_floating_point():
            raise CheckpointError(
                "Release tensor {} is {}: a release model's tensors are floating point (float32); "
                "not converted.".format(key, t.dtype)
            )


def refuse_non_finite(state: Dict[str, torch.Tensor], what: str):
    """A CheckpointError naming the first floating tensor of ``state`` that holds NaN or inf (as
    "``what`` KEY has N of M values not finite"): nothing is converted or written from it."""
    bad, first = non_finite(state)
    if bad:
        raise CheckpointError(
            "{} {}: NaN or inf, the weights of a diverged or damaged run; not converted.".format(
                what, first
            )
        )


def _frozen_bn_buffers(weight: torch.Tensor):
    """running_mean 0, running_var 1 - eps: FrozenBatchNorm2d's scale is then ``weight`` exactly."""
    var = torch.full_like(weight, 1.0 - FROZEN_BN_EPS)
    if not torch.equal((var + FROZEN_BN_EPS).rsqrt(), torch.ones_like(var)):
        raise CheckpointError(
            "running_var = 1 - eps does not give a scale of exactly 1 in {}".format(weight.dtype)
        )
    return torch.zeros_like(weight), var


def expected_release_keys(release_model_state: Dict[str, torch.Tensor], variant: str) -> List[str]:
    """
    The keys a release model of ``variant`` has (read from the release's
    lib/modeling/{ResNet,FPN,fast_rcnn_heads,mask_rcnn_heads}.py): the ResNet blocks that
    ``release_model_state`` shows (its depth); the rest as the release's configs have it: 4 FPN
    levels (P2-P5), RoI levels N2-N5 for the per-level layers, 3 box-head convs after the
    per-level conv1 (FAST_RCNN.NUM_STACKED_CONVS 4) and the mask head's 4 convs.
    """
    out = [_RESNET + "res1.conv1.weight", _RESNET + "res1.bn1.weight", _RESNET + "res1.bn1.bias"]
    stages = _resnet_blocks(release_model_state, _RESNET)
    for s in (2, 3, 4, 5):
        for b in range(max(stages[s], default=0) + 1):
            p = _RESNET + "res%d.%d." % (s, b)
            if b == 0:  # stride or width change: a projection shortcut
                out += [
                    p + "downsample.0.weight",
                    p + "downsample.1.weight",
                    p + "downsample.1.bias",
                ]
            for i in (1, 2, 3):
                out += [p + "conv%d.weight" % i, p + "bn%d.weight" % i, p + "bn%d.bias" % i]
    gn = ["0.weight", "1.weight", "1.bias"]
    out += [_BODY + "conv_top." + s for s in gn]
    for i in range(3):
        out += [_BODY + "topdown_lateral_modules.%d.conv_lateral.%s" % (i, s) for s in gn]
    for i in range(4):
        out += [_BODY + "posthoc_modules.%d.%s" % (i, s) for s in gn]
    for i in range(3):
        for n in (1, 2):
            p = _BODY + "panet_buttomup_conv%d_modules.%d." % (n, i)
            out += [p + "0.weight", p + "0.bias", p + "1.weight", p + "1.bias"]
    for n in ("conv", "cls_score", "bbox_pred"):
        out += ["RPN.FPN_RPN_%s.weight" % n, "RPN.FPN_RPN_%s.bias" % n]
    levels = range(4)  # FPN.ROI_MIN_LEVEL 2 .. ROI_MAX_LEVEL 5
    if variant in ("det", "mask"):
        for lv in levels:
            out += ["Box_Head.conv1_head.%d.%s" % (lv, s) for s in gn]
        for j in range(3):  # FAST_RCNN.NUM_STACKED_CONVS 4: 3 after the per-level conv1
            out += ["Box_Head.convs.%d.weight" % (3 * j), "Box_Head.convs.%d.weight" % (3 * j + 1)]
            out += ["Box_Head.convs.%d.bias" % (3 * j + 1)]
        out += ["Box_Head.fc.weight", "Box_Head.fc.bias"]
    else:
        for lv in levels:
            out += [
                "Box_Head.fc1.%d.%s" % (lv, s) for s in ("0.weight", "0.bias", "1.weight", "1.bias")
            ]
        out += ["Box_Head.fc2.%s" % s for s in ("0.weight", "0.bias", "1.weight", "1.bias")]
    out += [
        "Box_Outs.%s.%s" % (n, p) for n in ("cls_score", "bbox_pred") for p in ("weight", "bias")
    ]
    if variant == "mask":
        for lv in levels:
            out += ["Mask_Head.mask_conv1.%d.%s" % (lv, s) for s in gn]
        out += [
            "Mask_Head.conv_fcn.%s" % s
            for s in ("0.weight", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias")
        ]
        for n in ("mask_conv4", "mask_conv4_fc", "mask_conv5_fc"):
            out += ["Mask_Head.%s.%s" % (n, s) for s in gn]
        out += ["Mask_Head.mask_fc.0.weight", "Mask_Head.mask_fc.0.bias"]
        out += ["Mask_Head.upconv.weight", "Mask_Head.upconv.bias"]
        out += ["Mask_Outs.classify.weight", "Mask_Outs.classify.bias"]
    return out  # fmt: skip


def _resnet_blocks(keys, prefix) -> Dict[int, set]:
    """The block indices of each ResNet stage (2-5) among ``keys``: ``prefix + "res<s>.<b>."``
    (the release's ``Conv_Body.conv_body.``, Detectron2's ``backbone.bottom_up.``)."""
    stages = {s: set() for s in (2, 3, 4, 5)}
    for k in keys:
        m = re.match(re.escape(prefix) + r"res([2-5])\.(\d+)\.", k)
        if m:
            stages[int(m.group(1))].add(int(m.group(2)))
    return stages


def _unconvertible(variant, unknown, missing):
    unknown = (
        "{} tensor(s) that no rule places: {}. ".format(len(unknown), unknown) if unknown else ""
    )
    missing = (
        "{} tensor(s) of the release's model missing: {}.".format(len(missing), missing)
        if missing
        else ""
    )
    return CheckpointError(
        "Cannot convert the PANet release's {!r} model: {}{}".format(variant, unknown, missing)
    )


def convert_release_state_dict(
    release_model_state: Dict[str, torch.Tensor], variant: str = None
) -> Dict[str, torch.Tensor]:
    """
    Map a release model's state dict to panet_d2's names (any widths and ResNet depth).

    Args:
        release_model_state (dict[str, Tensor]): the ``'model'`` entry of a release checkpoint.
        variant (str or None): "det", "det_2fc" or "mask"; None: :func:`detect_variant`.

    Returns:
        OrderedDict[str, Tensor]: panet_d2 / Detectron2 names -> tensors (FrozenBN statistics
        included).

    Raises:
        CheckpointError: tensors that no rule places, or tensors of the release's model that are
            missing (each listed), or per-level layers with missing levels; a tensor not
            floating point, or one holding NaN or inf (named, with the count of such values).
    """
    state = OrderedDict(
        (k[len("module.") :] if k.startswith("module.") else k, torch.as_tensor(v))
        for k, v in release_model_state.items()
    )
    found = detect_variant(state)
    variant = variant or found
    if variant not in RELEASE_CONFIGS:
        raise CheckpointError(
            "Unknown variant {!r}; allowed: {}.".format(variant, sorted(RELEASE_CONFIGS))
        )
    if variant != found:
        raise CheckpointError(
            "The checkpoint is the release's {!r} model, not {!r}.".format(found, variant)
        )
    refuse_non_float(state)
    refuse_non_finite(state, "Release tensor")
    missing = [k for k in expected_release_keys(state, variant) if k not in state]
    rules = [(re.compile(p + "$"), t) for p, t in _resnet_rules() + _neck_rules() + _head_rules()]
    per_level = [(re.compile(p + "$"), t, how) for p, t, how in _PER_LEVEL_RULES]
    num_classes_bg = _classes_with_background(state)

    out, unknown, levels = OrderedDict(), [], defaultdict(dict)
    for key, t in state.items():
        t = torch.as_tensor(t)
        if key in _PREDICTORS:
            out[_PREDICTORS[key]] = _class_rows(key, t, num_classes_bg)
            continue
        m = next(((m, tpl, how) for r, tpl, how in per_level for m in [r.match(key)] if m), None)
        if m is not None:
            match, tpl, how = m
            levels[(tpl.format(**_fields(match)), how)][int(match.group("l"))] = (key, t)
            continue
        m = next(((m, tpl) for r, tpl in rules for m in [r.match(key)] if m), None)
        if m is None:
            unknown.append(key)
            continue
        new = m[1].format(**_fields(m[0]))
        if "<" in new:
            unknown.append(key)
            continue
        out[new] = t.clone()
        if key.startswith(_RESNET) and re.search(r"\.(bn\d|downsample\.1)\.weight$", key):
            base = new[: -len("weight")]
            out[base + "running_mean"], out[base + "running_var"] = _frozen_bn_buffers(t)
    if unknown or missing:
        raise _unconvertible(variant, unknown, missing)
    for (new, how), by_level in levels.items():
        L = max(by_level) + 1
        if sorted(by_level) != list(range(min(L, len(by_level) + 1))) or L < 2:  # (no huge range)
            raise CheckpointError(
                "{}: per-level tensors for levels {} only; expected levels 0..{} "
                "(N2 first).".format(new, sorted(by_level), max(L - 1, 1))
            )
        tensors = [by_level[lv][1] for lv in range(L)]
        out[new] = torch.cat(tensors) if how == "cat" else torch.stack(tensors)
    return out


def check_against_model(
    converted: Dict[str, torch.Tensor], model_state: Dict[str, torch.Tensor], command=None
):
    """
    Raise :class:`CheckpointError` in one line naming (the first 3 of each) the model's tensors
    the conversion did not fill, the converted tensors the model does not have, and those of
    another shape, with the config options that would fit: MODEL.RESNETS.DEPTH from the converted
    ResNet's res4 blocks, MODEL.ROI_HEADS.NUM_CLASSES from its predictors' rows
    (panet_d2.checkpoint's ``CLASS_KEYS``), and those of panet_d2.checkpoint's ``fit_hints``.
    ``command`` (list of str): the conversion's command line, shown with the options appended.
    """
    missing = [k for k in model_state if k not in converted]
    extra = [k for k in converted if k not in model_state]
    shapes = [
        k
        for k in converted
        if k in model_state and tuple(converted[k].shape) != tuple(model_state[k].shape)
    ]
    if not (missing or extra or shapes):
        return
    problems = []
    if missing:
        problems.append("{} model tensor(s) not filled: {}".format(len(missing), abbrev(missing)))
    if extra:
        problems.append(
            "{} converted tensor(s) the model lacks: {}".format(len(extra), abbrev(extra))
        )
    if shapes:
        listed = [
            "{} {} vs model {}".format(k, list(converted[k].shape), list(model_state[k].shape))
            for k in shapes
        ]
        problems.append("{} of another shape: {}".format(len(shapes), abbrev(listed)))
    options, hints = _fitting_options(converted, model_state, missing, extra, shapes)
    parts = ["; ".join(problems)] + ["The checkpoint has " + h for h in hints]
    if options:
        parts.append("Append the config option(s) " + " ".join(options))
        if command:  # last: the line ends with the command (no full stop to copy with it)
            parts[-1] += " to the command: " + " ".join(map(shlex.quote, list(command) + options))
    raise CheckpointError(
        "The converted checkpoint does not fit its config's model: "
        + ". ".join(parts)
        + ("" if options and command else ".")
    )


def _fitting_options(converted, model_state, missing, extra, shapes):
    """The config options (KEY VALUE ...) that fit ``converted`` and the hints of panet_d2's
    ``fit_hints`` that hold but name no single option."""
    options = []
    file_blocks = len(_resnet_blocks(converted, "backbone.bottom_up.")[4])
    depth = _DEPTH_OF_RES4_BLOCKS.get(file_blocks)
    if depth and file_blocks != len(_resnet_blocks(model_state, "backbone.bottom_up.")[4]):
        options += ["MODEL.RESNETS.DEPTH", str(depth)]
    for prefix, (key, count) in CLASS_KEYS.items():  # cls_score first
        for k in shapes:
            if k.startswith(prefix) and key not in options:
                n_file, n_model = (
                    count(s[k].shape[0] if s[k].dim() else 0) for s in (converted, model_state)
                )
                if n_file is not None and n_file != n_model:
                    options += [key, str(n_file)]
    hints = []
    for hint in fit_hints(missing, extra, converted, model_state):
        m = re.fullmatch(r"(.*): set (MODEL\.[A-Z0-9_.]+) (\w+)(?: \(.*\))?", hint)
        if m and m.group(2) not in options:
            options += [m.group(2), m.group(3)]
        elif not m:
            hints.append(hint)
    return options, hints


def load_release_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """
    Read a release checkpoint with ``torch.load(weights_only=True)`` (no code from the file runs)
    and return its ``'model'`` state dict. numpy scalar globals are allowed when the file names
    them (a 2018 optimizer state may hold numpy floats); anything else is refused.
    """
    if not os.path.isfile(path):
        raise CheckpointError("Release checkpoint {!r} does not exist.".format(path))
    scan_torch_file(path)  # no tensor that makes more than the file (a stride-0 expand)
    allowed = []  # (numpy global, the name the file gives it)
    while True:
        try:
            with torch.serialization.safe_globals(allowed):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as e:
            # "Unsupported global: GLOBAL numpy.dtype ..." or "... but got <class 'numpy.X'>"
            names = [
                a or b for a, b in re.findall(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>", str(e))
            ]
            new = [
                (_import(*_NUMPY_SCALAR_GLOBALS[n]), n)
                for n in names
                if n in _NUMPY_SCALAR_GLOBALS and n not in [a[1] for a in allowed]
            ]
            if names and new and all(obj is not None for obj, _ in new):
                allowed += new
                continue
            _refuse_plain_pickle(path)
            if not names:
                raise _damaged(path, e) from None
            raise CheckpointError(
                "Cannot read {!r} with torch.load(weights_only=True): it needs {} beyond "
                "tensors and plain data, and was not loaded (that would run code from the "
                "file). If you trust it, load it yourself without weights_only and save "
                "{{'model': checkpoint['model']}}; then convert that file.".format(path, names)
            ) from None
        except Exception as e:
            _refuse_plain_pickle(path)
            raise _damaged(path, e) from None
    model = loaded.get("model") if isinstance(loaded, dict) else None
    _refuse_detectron2_checkpoint(path, model if isinstance(model, dict) else loaded)
    if not isinstance(model, dict):
        raise CheckpointError(
            "{!r} is not a PANet release checkpoint: expected a dict with a 'model' state dict "
            "(and 'step', 'train_size', 'batch_size', 'optimizer'), found {}.".format(
                path,
                sorted(loaded)[:8] if isinstance(loaded, dict) else type(loaded).__name__,
            )
        )
    for k, v in model.items():  # (hand-made files: tracebacks deep in the conversion before)
        if not isinstance(k, str) or not isinstance(v, torch.Tensor) or v.layout != torch.strided:
            found = type(v).__name__ + (f" ({v.layout})" if isinstance(v, torch.Tensor) else "")
            raise CheckpointError(
                f"{path!r} is not a PANet release checkpoint: its model state holds a {found} "
                f"under the key {k!r}; the release's holds dense tensors under their names."
            )
    names = [k[len("module.") :] if k.startswith("module.") else k for k in model]
    twice = sorted({k for k in names if names.count(k) > 1})
    if twice:
        raise CheckpointError(
            f"{path!r} holds {twice[0]!r} both with and without the 'module.' prefix (of "
            "DataParallel): one of them would be dropped. Keep one of each."
        )
    return model


def _refuse_detectron2_checkpoint(path, state):
    """A checkpoint with Detectron2's parameter names (e.g. this tool's output, or train_net.py's
    model_final.pth) is refused in one line: it needs no conversion."""
    names = [k for k in state if isinstance(k, str)] if isinstance(state, dict) else []
    if any(k.startswith(_DETECTRON2_PREFIXES) for k in names):
        raise CheckpointError(
            "{!r} is already a Detectron2 checkpoint (parameters named as Detectron2's, e.g. "
            "{!r}): pass it as MODEL.WEIGHTS, it needs no conversion.".format(
                path, min(k for k in names if k.startswith(_DETECTRON2_PREFIXES))
            )
        )


def _damaged(path, e):
    # torch's weights-only refusal: its reason, not its advice to load without weights_only
    detail = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", str(e), re.S)
    detail = " ".join((detail.group(1) if detail else str(e)).split()[:40])
    return CheckpointError(
        "Cannot read release checkpoint {!r}: {}{} (the file is truncated or damaged).".format(
            path, type(e).__name__, ": " + detail if detail else ""
        )
    )


def _refuse_plain_pickle(path):
    """A pickle of NumPy arrays (a Detectron2 model-zoo or a Detectron / Caffe2 .pkl), read as
    data by panet_d2's restricted unpickler, is refused saying what it is."""
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f, encoding="latin1").load()
    except Exception:
        return  # (a torch file: its first pickle is a number, or it is a zip archive)
    if not isinstance(data, dict):
        return
    _refuse_detectron2_checkpoint(path, data.get("model", data))
    raise CheckpointError(
        "{!r} is a pickle of NumPy arrays (keys {}), as Detectron's (Caffe2) .pkl files are, not a "
        "checkpoint of the PANet release (Detectron.pytorch: a .pth that torch.save wrote, "
        "{{'model': ..., 'step': ...}}). Detectron2 loads Caffe2 .pkl files directly: pass it as "
        "MODEL.WEIGHTS.".format(path, sorted(map(str, data))[:5])
    )


def _import(modules, name):
    for module in modules:
        try:
            return getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            pass
    return None


def build_release_model_state(variant: str, opts=()) -> Dict[str, torch.Tensor]:
    """The state dict (keys and shapes) of the model that RELEASE_CONFIGS[variant] builds."""
    from detectron2.modeling import build_model

    from panet_d2.config import load_config_file
    from panet_d2.engine.checks import check_config

    path = os.path.join(ROOT, "configs", RELEASE_CONFIGS[variant])
    opts = ["MODEL.WEIGHTS", ""] + list(opts) + ["MODEL.DEVICE", "meta"]
    cfg = load_config_file(path, opts)
    check_config(cfg, train=False)  # the options' values, as train_net.py --eval-only checks them
    with torch.device("meta"):  # tensors without data: no weights initialised (0.1 s, not 1 s)
        return build_model(cfg).state_dict()


def main(argv=None):
    args = _parse_args(argv)
    with one_line_errors():  # CheckpointError, ConfigError, a full disk: one line, exit code 2
        problem = input_file_problem(args.input) or output_file_problem(args.output, args.input)
        if problem:
            raise CheckpointError(problem)
        release = load_release_checkpoint(args.input)
        variant = args.variant or detect_variant(release)
        converted = convert_release_state_dict(release, variant)
        if not args.no_model_check:
            command = TOOL_COMMAND + list(sys.argv[1:] if argv is None else argv)
            check_against_model(
                converted, build_release_model_state(variant, args.opts), command=command
            )
        save_checkpoint(
            {
                "model": converted,
                "__author__": "PANet release (github.com/ShuLiu1993/PANet), "
                "converted by panet_d2 tools/convert_panet_release.py",
                "matching_heuristics": False,
            },
            args.output,
        )
    config = os.path.join("configs", RELEASE_CONFIGS[variant])
    print(
        "Converted the release's {!r} model: {} tensors -> {} ({} tensors).".format(
            variant, len(release), args.output, len(converted)
        )
    )
    print("Config: {}".format(config))
    command = ["python3", "train_net.py", "--config-file", config, "--eval-only"]
    command += list(args.opts) + ["MODEL.WEIGHTS", args.output]
    print("  " + " ".join(shlex.quote(a) for a in command))
    return 0


def save_checkpoint(checkpoint, path):
    """``torch.save`` to ``<path>.partial``, renamed over ``path`` once written: a failed write
    leaves an existing ``path`` as it was and is a CheckpointError (a full disk: the OSError)."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_output_files(), PathManager.open(path, "wb") as f:
            torch.save(checkpoint, f)
    except (OSError, RuntimeError) as e:
        cause = os_error_cause(e)
        if cause is None or cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CheckpointError(
            "Cannot write {!r}: {} (an existing file there is unchanged).".format(
                path, cause.strerror or cause
            )
        ) from None


if __name__ == "__main__":
    sys.exit(main())
