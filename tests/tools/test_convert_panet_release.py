# -*- coding: utf-8 -*-
"""
tools/convert_panet_release.py and the release configs: a checkpoint in the format of the authors'
release (github.com/ShuLiu1993/PANet; its key names and shapes from tests/release/release_format.py,
written from the release's code, not from the converter, and equal to the key lists taken from
the release's own modules in tests/fixtures/panet_release/) converts into a checkpoint that
Detectron2's DetectionCheckpointer loads strictly into each release config's model; unknown and
missing tensors are refused by name; FrozenBN's scale is the release's weight exactly; class rows
move (background last); a converted model fine-tunes on the generated dataset with another number
of classes.
"""

import errno
import json
import logging
import os
import pickle
import re
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from panet_d2.errors import CheckpointError, ConfigError

from ..common import ROOT, FileProxy, error_exit, load_script, panet_cfg, random_image
from ..export.test_torchscript import test_instance_model_scripts_and_traces as scripts_and_traces
from ..release.release_format import FULL, release_shapes

VARIANTS = ("det", "det_2fc", "mask")


tool = load_script("tools/convert_panet_release.py", "convert_panet_release")

# Narrow widths (GN needs multiples of 32; the FF's second conv has half the mask head's channels
# and GN with 32 groups, as the release's): the same options for the release-format builder and
# for panet_d2's configs.
WIDTHS = dict(stem=16, res2=32, bottleneck=8, fpn=32, box_conv=32, fc=64, mask_conv=64, classes=5)
NARROW = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", WIDTHS["stem"],
    "MODEL.RESNETS.RES2_OUT_CHANNELS", WIDTHS["res2"],
    "MODEL.RESNETS.WIDTH_PER_GROUP", WIDTHS["bottleneck"],
    "MODEL.FPN.OUT_CHANNELS", WIDTHS["fpn"],
    "MODEL.ROI_BOX_HEAD.CONV_DIM", WIDTHS["box_conv"],
    "MODEL.ROI_BOX_HEAD.FC_DIM", WIDTHS["fc"],
    "MODEL.ROI_MASK_HEAD.CONV_DIM", WIDTHS["mask_conv"],
    "MODEL.FF.CONV_DIMS", [WIDTHS["mask_conv"], WIDTHS["mask_conv"] // 2],
    "MODEL.ROI_HEADS.NUM_CLASSES", WIDTHS["classes"],
]  # fmt: skip
OPTS = [str(x) for x in NARROW]  # the same on a command line


def release_state(variant, w=WIDTHS, seed=0):
    """Random tensors of :func:`release_shapes` (AffineChannel2d weights positive, as trained)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in release_shapes(variant, w).items():
        t = torch.randn(shape, generator=g) * 0.1
        if ".bn" in k or "downsample.1" in k:
            t = t.abs() + 0.5 if k.endswith("weight") else t
        out[k] = t
    return out


def _save_release(path, state, legacy=False):
    """A file as the release's train_net_step.py saves it (numpy lr in the optimizer state)."""
    ckpt = {
        "step": 89999,
        "train_size": 117264,
        "batch_size": 16,
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": np.float64(0.0002), "params": [0]}]},
    }
    torch.save(ckpt, str(path), _use_new_zipfile_serialization=not legacy)


class _RecordingCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, keeping what its load found missing, unexpected or misshapen."""

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def _model(variant, opts=()):
    cfg = panet_cfg(tool.RELEASE_CONFIGS[variant], opts=NARROW + list(opts))
    torch.manual_seed(0)
    return build_model(cfg), cfg


# ------------------------------------------------------------------------------------------------
def test_release_key_counts_are_the_releases():
    # the counts for the released R-50 models (240 / 237 / 273 tensors)
    assert [len(release_shapes(v, FULL)) for v in VARIANTS] == [240, 237, 273]
    for v in VARIANTS:
        assert tool.detect_variant(release_shapes(v, FULL)) == v


def test_release_format_is_the_releases_key_lists():
    # the key lists that tools/make_release_fixture.py took from the release's own modules
    for v in VARIANTS:
        path = os.path.join(ROOT, "tests", "fixtures", "panet_release", "keys_%s.json" % v)
        with open(path) as f:
            tensors = json.load(f)["tensors"]
        assert {k: tuple(s) for k, s in tensors.items()} == release_shapes(v, FULL)


def test_full_size_converts_to_exactly_the_config_models_keys_and_shapes():
    for v in VARIANTS:
        # zeros, not torch.empty: uninitialised memory may hold NaN, which is refused
        state = {k: torch.zeros(s) for k, s in release_shapes(v, FULL).items()}
        converted = tool.convert_release_state_dict(state)
        tool.check_against_model(converted, tool.build_release_model_state(v))


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_checkpoint_loads_strictly(variant, tmp_path, capsys):
    release = release_state(variant)
    src, dst = tmp_path / "release.pth", tmp_path / "converted.pth"
    _save_release(src, release)
    assert tool.main([str(src), str(dst)] + OPTS) == 0
    printed = capsys.readouterr().out
    assert tool.RELEASE_CONFIGS[variant] in printed
    # the evaluation command, with the config options of the check ("[64, 32]" quoted)
    config = "configs/" + tool.RELEASE_CONFIGS[variant]
    command = ["python3", "train_net.py", "--config-file", config, "--eval-only"]
    assert shlex.split(printed.splitlines()[-1]) == command + OPTS + ["MODEL.WEIGHTS", str(dst)]
    # its own output given again: already a Detectron2 checkpoint, in one line, nothing written
    again = tmp_path / "again.pth"
    line = error_exit(tool.main, [str(dst), str(again)] + OPTS)
    assert "already a Detectron2 checkpoint" in line and "pass it as MODEL.WEIGHTS" in line
    assert not again.exists()

    model, _ = _model(variant)
    checkpointer = _RecordingCheckpointer(model)
    checkpointer.load(str(dst))
    incompatible = checkpointer.incompatible
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    assert not incompatible.incorrect_shapes
    converted = torch.load(str(dst), weights_only=True)
    assert converted["matching_heuristics"] is False
    model.load_state_dict(converted["model"], strict=True)

    sd = model.state_dict()
    # per-level layers: level l (N2 first) owns rows [l * C, (l + 1) * C) / entry l
    if variant == "det_2fc":
        fc1 = sd["roi_heads.box_head.fc1.per_level.weight"]
        for lv in range(4):
            assert torch.equal(fc1[lv], release["Box_Head.fc1.%d.0.weight" % lv])
        gn = sd["roi_heads.box_head.fc1.norm.weight"].view(4, -1)
        assert torch.equal(gn[2], release["Box_Head.fc1.2.1.weight"])
        assert torch.equal(sd["roi_heads.box_head.fc2.norm.bias"], release["Box_Head.fc2.1.bias"])
    else:
        conv1 = sd["roi_heads.box_head.conv1.per_level.weight"].view(4, WIDTHS["box_conv"], -1)
        for lv in range(4):
            assert torch.equal(
                conv1[lv], release["Box_Head.conv1_head.%d.0.weight" % lv].flatten(1)
            )
        assert torch.equal(
            sd["roi_heads.box_head.conv3.weight"], release["Box_Head.convs.3.weight"]
        )
    if variant == "mask":
        m = sd["roi_heads.mask_head.mask_fcn1.per_level.norm.bias"].view(4, -1)
        assert torch.equal(m[3], release["Mask_Head.mask_conv1.3.1.bias"])
        assert torch.equal(
            sd["roi_heads.mask_head.fc_fusion.conv2.weight"],
            release["Mask_Head.mask_conv5_fc.0.weight"],
        )
        assert torch.equal(
            sd["roi_heads.mask_head.mask_fcn4.weight"], release["Mask_Head.mask_conv4.0.weight"]
        )
    # bottom-up path: module k builds N_{k+3}; its conv keeps its bias before the GN
    assert torch.equal(
        sd["backbone.bpa_down3.bias"], release["Conv_Body.panet_buttomup_conv1_modules.0.0.bias"]
    )
    assert torch.equal(
        sd["backbone.bpa_out5.weight"], release["Conv_Body.panet_buttomup_conv2_modules.2.0.weight"]
    )
    # FPN: conv_top is res5's lateral, posthoc_modules run from the coarsest level
    assert torch.equal(sd["backbone.fpn_lateral5.weight"], release["Conv_Body.conv_top.0.weight"])
    assert torch.equal(
        sd["backbone.fpn_output2.norm.weight"], release["Conv_Body.posthoc_modules.3.1.weight"]
    )
    model.eval()
    with torch.no_grad():
        out = model([{"image": random_image(64, 96)}])[0]
    assert "instances" in out


def test_frozen_bn_scale_is_the_release_weight_exactly():
    release = release_state("det")
    model, _ = _model("det")
    model.load_state_dict(tool.convert_release_state_dict(release), strict=True)
    frozen = {n: m for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)}
    assert len(frozen) == 1 + 16 * 3 + 4  # stem, 3 per bottleneck, 4 shortcuts
    names = {
        "backbone.bottom_up.stem.conv1.norm": "Conv_Body.conv_body.res1.bn1",
        "backbone.bottom_up.res3.0.shortcut.norm": "Conv_Body.conv_body.res3.0.downsample.1",
        "backbone.bottom_up.res4.5.conv2.norm": "Conv_Body.conv_body.res4.5.bn2",
    }
    for ours, theirs in names.items():
        m = frozen[ours]
        scale = m.weight * (m.running_var + m.eps).rsqrt()
        assert torch.equal(scale, release[theirs + ".weight"])
        assert torch.equal(m.bias - m.running_mean * scale, release[theirs + ".bias"])
        # the release's AffineChannel2d: x * weight + bias
        x = torch.randn(2, scale.numel(), 3, 3)
        affine = x * release[theirs + ".weight"].view(1, -1, 1, 1)
        affine = affine + release[theirs + ".bias"].view(1, -1, 1, 1)
        torch.testing.assert_close(m(x), affine, rtol=1e-6, atol=1e-6)
    for m in frozen.values():
        assert torch.equal(m.weight * (m.running_var + m.eps).rsqrt(), m.weight)


def test_class_rows_background_moves_last():
    release = release_state("mask")
    K = WIDTHS["classes"]
    # release row r is class r (0 = background; 1..K = COCO's sorted category ids)
    D, M = WIDTHS["fc"], WIDTHS["mask_conv"]
    release["Box_Outs.cls_score.weight"] = torch.arange(K + 1.0)[:, None].expand(K + 1, D)
    release["Box_Outs.cls_score.bias"] = torch.arange(K + 1.0)
    release["Box_Outs.bbox_pred.bias"] = torch.arange(4 * (K + 1.0))  # class r: 4r .. 4r + 3
    release["Box_Outs.bbox_pred.weight"] = torch.arange(4 * (K + 1.0))[:, None].expand(-1, D)
    release["Mask_Outs.classify.bias"] = torch.arange(K + 1.0)
    release["Mask_Outs.classify.weight"] = (
        torch.arange(K + 1.0).view(-1, 1, 1, 1).expand(-1, M, 1, 1)
    )
    out = tool.convert_release_state_dict(release)
    # Detectron2: class i (0-based) is the release's class i + 1; background is the last row
    assert out["roi_heads.box_predictor.cls_score.bias"].tolist() == list(range(1, K + 1)) + [0]
    assert out["roi_heads.box_predictor.cls_score.weight"][:, 0].tolist() == list(
        range(1, K + 1)
    ) + [0]
    deltas = [4 * (i + 1) + j for i in range(K) for j in range(4)]  # class i's dx, dy, dw, dh
    assert out["roi_heads.box_predictor.bbox_pred.bias"].tolist() == deltas
    assert out["roi_heads.box_predictor.bbox_pred.weight"][:, 0].tolist() == deltas
    assert out["roi_heads.mask_head.predictor.bias"].tolist() == list(range(1, K + 1))
    assert out["roi_heads.mask_head.predictor.weight"][:, 0, 0, 0].tolist() == list(range(1, K + 1))
    # the model's scores: softmax over the same logits, reordered
    model, _ = _model("mask")
    model.load_state_dict(tool.convert_release_state_dict(release_state("mask")), strict=True)
    x = torch.randn(3, D)
    ours = model.roi_heads.box_predictor(x)[0].softmax(-1)
    r = release_state("mask")
    theirs = (x @ r["Box_Outs.cls_score.weight"].T + r["Box_Outs.cls_score.bias"]).softmax(-1)
    torch.testing.assert_close(ours, torch.cat([theirs[:, 1:], theirs[:, :1]], 1))


@pytest.mark.parametrize(
    "added,removed",
    [
        ("Box_Head.extra_fc.weight", None),  # no such layer in the release
        ("Conv_Body.conv_body.res2.0.bn1.running_mean", None),  # AffineChannel2d has none
        (None, "Conv_Body.conv_body.res3.1.bn2.bias"),
        (None, "Box_Head.conv1_head.2.0.weight"),  # one level of a per-level layer
        (None, "Mask_Head.mask_fc.0.bias"),
    ],
)
def test_unknown_or_missing_tensor_is_refused_by_name(added, removed, tmp_path, capsys):
    state = release_state("mask")
    if added:
        state[added] = torch.zeros(8)
    else:
        del state[removed]
    named = added or removed
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        tool.convert_release_state_dict(state)
    src = tmp_path / "release.pth"
    _save_release(src, state)
    assert named in error_exit(tool.main, ["--no-model-check", str(src), str(tmp_path / "out.pth")])
    assert not (tmp_path / "out.pth").exists()


def test_non_finite_or_integer_tensors_are_refused_by_name(tmp_path):
    """NaN / inf in a release tensor, or an integer file: one line naming the tensor (its count of
    values not finite, or its dtype), nothing written; an existing output stays as it was."""
    src, out = tmp_path / "release.pth", tmp_path / "out.pth"
    out.write_bytes(b"the user's file")
    state = release_state("mask")
    key = "Mask_Head.mask_conv1.2.0.weight"  # (64, 32, 3, 3): 18432 values
    state[key][0, 0, 0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    state["Mask_Outs.classify.bias"][1] = float("nan")  # a second tensor, later in the file
    _save_release(src, state)
    assert error_exit(tool.main, [str(src), str(out)] + OPTS) == (
        "ERROR: Release tensor {} has 3 of 18432 values not finite (2 tensor(s) in all): NaN or "
        "inf, the weights of a diverged or damaged run; not converted.".format(key)
    )
    state = {k: torch.ones(v.shape, dtype=torch.int64) for k, v in release_state("det").items()}
    _save_release(src, state)
    assert error_exit(tool.main, ["--no-model-check", str(src), str(out)]) == (
        "ERROR: Release tensor {} is torch.int64: a release model's tensors are floating point "
        "(float32); not converted.".format(next(iter(state)))
    )
    assert out.read_bytes() == b"the user's file"
    assert sorted(os.listdir(tmp_path)) == ["out.pth", "release.pth"]


def test_model_tensor_not_filled_is_refused_by_name():
    converted = tool.convert_release_state_dict(release_state("det"))
    model_state = _model("det")[0].state_dict()
    del converted["backbone.bpa_out4.bias"]
    with pytest.raises(CheckpointError, match=r"not filled: backbone\.bpa_out4\.bias\."):
        tool.check_against_model(converted, model_state)
    # a config without MODEL.PAFPN.CONV_BIAS has no bias there: the release's biases are refused
    no_bias = _model("det", ["MODEL.PAFPN.CONV_BIAS", False])[0].state_dict()
    with pytest.raises(CheckpointError, match=r"the model lacks: backbone\.bpa_down3\.bias"):
        tool.check_against_model(tool.convert_release_state_dict(release_state("det")), no_bias)


def test_model_check_names_the_options_that_fit(tmp_path):
    # an R-101 (23 blocks in res4) and an 8-class release model into the default R-50 config
    # (OPTS: 5 classes): a short line that names the first keys and the options to append
    r101 = dict(release_shapes("mask", WIDTHS, blocks=(3, 4, 23, 3)))
    eight = dict(release_shapes("mask", dict(WIDTHS, classes=8)))
    cases = [
        (r101, ["MODEL.RESNETS.DEPTH", "101"], "255 converted tensor(s) the model lacks: "),
        (eight, ["MODEL.ROI_HEADS.NUM_CLASSES", "8"], "6 of another shape: "),
    ]
    for i, (shapes, options, problem) in enumerate(cases):
        src, out = str(tmp_path / "release{}.pth".format(i)), str(tmp_path / "out.pth")
        _save_release(src, {k: torch.zeros(s) for k, s in shapes.items()})
        line = error_exit(tool.main, [src, out] + OPTS)
        command = tool.TOOL_COMMAND + [src, out] + OPTS + options
        advice = "Append the config option(s) {} to the command: ".format(" ".join(options))
        assert line.endswith(advice + shlex.join(command)), line
        assert problem in line and " and {} more".format(int(problem.split()[0]) - 3) in line
        assert len(line) - len(shlex.join(command)) < 600, line  # (the command: as it was given)
        assert tool.main(command[2:]) == 0  # the options fit
    # without the command line; panet_d2's hints (AFP, FF) as options too, or as they are
    converted = tool.convert_release_state_dict({k: torch.zeros(s) for k, s in eight.items()})
    options = [
        "MODEL.AFP.ENABLED",
        False,
        "MODEL.FF.ENABLED",
        False,
        "MODEL.ROI_HEADS.NUM_CLASSES",
        8,
    ]
    with pytest.raises(CheckpointError) as e:
        tool.check_against_model(converted, _model("mask", options)[0].state_dict())
    assert str(e.value).endswith(
        "Append the config option(s) MODEL.AFP.ENABLED True MODEL.FF.ENABLED True."
    ), str(e.value)
    with pytest.raises(CheckpointError) as e:
        model = _model("mask", ["MODEL.ROI_BOX_HEAD.NUM_CONV", 0, "MODEL.ROI_HEADS.NUM_CLASSES", 8])
        tool.check_against_model(converted, model[0].state_dict(), command=["convert"])
    assert str(e.value).endswith(
        "The checkpoint has a box head with convolutions (the heavier head): set "
        "MODEL.ROI_BOX_HEAD.NUM_CONV and NUM_FC as it was trained (the release's: 4 and 1)."
    ), str(e.value)


def test_model_check_options_checked_as_evaluation_checks_them(tmp_path):
    """The model check's config options get train_net.py --eval-only's one-line checks (before:
    KeyError / ValueError tracebacks, and INPUT.MIN_SIZE_TEST 99999 copied into the printed
    evaluation command, which then refused it)."""
    src, out = str(tmp_path / "release.pth"), str(tmp_path / "out.pth")
    _save_release(src, {k: torch.zeros(s) for k, s in dict(release_shapes("mask", WIDTHS)).items()})
    for option, message in [
        (["MODEL.RESNETS.DEPTH", "19"], "Invalid config value MODEL.RESNETS.DEPTH=19; allowed "),
        (["MODEL.RESNETS.NORM", "foo"], "Invalid config value MODEL.RESNETS.NORM='foo'; allowed"),
        (["INPUT.MIN_SIZE_TEST", "99999"], "INPUT.MIN_SIZE_TEST=99999: must be an integer <= "),
    ]:
        assert message in error_exit(tool.main, [src, out] + OPTS + option)
        assert not os.path.exists(out)


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # (torch's, loading it)
def test_model_entries_that_are_no_named_dense_tensors_refused(tmp_path):
    """Hand-made files: an integer key, a str / None / sparse value, a key with and without
    DataParallel's 'module.' prefix, a level index too large for a range, a classifier of the
    background only or transposed (before: AttributeError, TypeError, RuntimeError, a 114-line
    dispatcher error, one of the two silently dropped, an OverflowError, the advice
    NUM_CLASSES 0, bbox_pred blamed)."""
    shapes = dict(release_shapes("det", WIDTHS))
    key = next(k for k in shapes if k.startswith("Box_Head"))
    cls = tuple(shapes["Box_Outs.cls_score.weight"])  # (classes + background, features)
    huge = {
        k.replace("conv1_head.0.", "conv1_head.12345678901234567890."): torch.zeros(shapes[k])
        for k in shapes
        if k.startswith("Box_Head.conv1_head.0.")
    }  # one level more
    cases = [
        ({7: torch.zeros(1)}, "holds a Tensor (torch.strided) under the key 7; the release's"),
        ({key: "x"}, f"holds a str under the key {key!r}"),
        ({key: None}, f"holds a NoneType under the key {key!r}"),
        ({key: torch.zeros(2).to_sparse()}, "holds a Tensor (torch.sparse_coo) under the key"),
        ({"module." + key: torch.zeros(shapes[key])}, f"holds {key!r} both with and without the"),
        (huge, "per-level tensors for levels [0, 1, 2, 3, 12345678901234567890] only"),
        ({"Box_Outs.cls_score.weight": torch.zeros(1, cls[1])}, "is [1, 64]: a release classif"),
        ({"Box_Outs.cls_score.weight": torch.zeros(cls[::-1])}, "both read the box head's feat"),
    ]
    for i, (change, message) in enumerate(cases):
        state = {k: torch.zeros(s) for k, s in shapes.items()}
        state.update(change)
        src, out = str(tmp_path / f"{i}.pth"), str(tmp_path / "out.pth")
        _save_release(src, state)
        line = error_exit(tool.main, ["--no-model-check", src, out])
        assert line.startswith("ERROR: ") and message in line, line
        assert not os.path.exists(out)


@pytest.mark.parametrize("legacy", [False, True])
def test_tensors_that_make_more_than_the_file_refused(legacy, tmp_path):
    """A stride-0 tensor (torch.zeros(1).expand(100000, 100000), 40 GB made from a 2 MB file)
    is refused from the file's pickles before torch.load (before: a 40 GB allocation traceback;
    4e8 elements: a 1.6 GB output and 3.4 GB of memory), as MODEL.WEIGHTS refuses it."""
    state = {k: torch.zeros(s) for k, s in dict(release_shapes("det", WIDTHS)).items()}
    state["Box_Head.fc.weight"] = torch.zeros(1).expand(100000, 100000)
    src, out = str(tmp_path / "expanded.pth"), str(tmp_path / "out.pth")
    _save_release(src, state, legacy=legacy)
    line = error_exit(tool.main, ["--no-model-check", src, out])
    made = re.search(r"was not loaded: it makes a torch\S* of (\d+) elements or bytes, more ", line)
    assert made and int(made.group(1)) > os.path.getsize(src), line
    assert not os.path.exists(out)


def test_reading_release_files(tmp_path):
    state = release_state("det_2fc")
    # PyTorch 0.4 wrote the legacy (non-zip) format; numpy scalars in the optimizer are allowed
    legacy = tmp_path / "legacy.pth"
    _save_release(legacy, state, legacy=True)
    loaded = tool.load_release_checkpoint(str(legacy))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert tool.detect_variant(loaded) == "det_2fc"
    # a file that needs other globals is not loaded (no code from it runs)
    bad = tmp_path / "bad.pth"
    torch.save({"model": state, "extra": logging.Formatter()}, str(bad))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        tool.load_release_checkpoint(str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        tool.load_release_checkpoint(str(tmp_path / "nowhere.pth"))
    plain = tmp_path / "plain.pth"
    torch.save(state, str(plain))  # a bare state dict, no 'model' entry
    with pytest.raises(CheckpointError, match="'model'"):
        tool.load_release_checkpoint(str(plain))


def test_numpy_1_scalar_names_load(tmp_path):
    # NumPy 1.x pickled its scalars as numpy.core.multiarray.scalar (NumPy 2: numpy._core...)
    state = release_state("det")
    path = tmp_path / "np1.pth"
    _save_release(path, state, legacy=True)
    data = path.read_bytes()
    np2, np1 = b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n"
    assert data.count(np2) == 1
    path.write_bytes(data.replace(np2, np1))
    loaded = tool.load_release_checkpoint(str(path))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_detectron_pkl_files_are_named_as_such(tmp_path):
    # a Detectron2 model-zoo .pkl and a Detectron (Caffe2) .pkl: NumPy arrays, no torch file
    zoo, c2 = tmp_path / "model_final_f10217.pkl", tmp_path / "e2e_mask_rcnn_R-50-FPN.pkl"
    w = {"backbone.bottom_up.stem.conv1.weight": np.ones((4, 3, 7, 7), np.float32)}
    with open(zoo, "wb") as f:
        pickle.dump({"model": w, "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    with open(c2, "wb") as f:
        pickle.dump({"blobs": {"conv1_w": np.ones((4, 3, 7, 7), np.float32)}}, f, protocol=2)
    line = error_exit(tool.main, [str(zoo), str(tmp_path / "o.pth")])
    assert "'{}' is already a Detectron2 checkpoint".format(zoo) in line
    assert "pass it as MODEL.WEIGHTS" in line
    line = error_exit(tool.main, [str(c2), str(tmp_path / "o.pth")])
    assert "'{}' is a pickle of NumPy arrays (keys ['blobs'])".format(c2) in line
    assert "not a checkpoint of the PANet release" in line and "as MODEL.WEIGHTS" in line
    assert not (tmp_path / "o.pth").exists()


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_files_are_named_as_such(legacy, tmp_path):
    full = tmp_path / "full.pth"
    _save_release(full, release_state("det"), legacy=legacy)
    data = full.read_bytes()
    for fraction in (0.1, 0.3, 0.5, 0.7):
        cut = tmp_path / "cut.pth"
        cut.write_bytes(data[: int(len(data) * fraction)])
        line = error_exit(tool.main, [str(cut), str(tmp_path / "o.pth")])
        assert line.startswith("ERROR: Cannot read release checkpoint '{}': ".format(cut)), line
        assert line.endswith("(the file is truncated or damaged)."), line


def test_expected_keys_follow_the_resnet_depth_only():
    # R-101 (23 blocks in res4): its keys; 5 RoI levels: the release's 4 (N2-N5) expected
    r101 = release_shapes("mask", FULL, blocks=(3, 4, 23, 3))
    assert sorted(tool.expected_release_keys(r101, "mask")) == sorted(r101)
    five = release_shapes("mask", FULL, levels=5)
    level4 = {
        k for k in five if k.startswith(("Box_Head.conv1_head.4.", "Mask_Head.mask_conv1.4."))
    }
    assert len(level4) == 6  # conv + GN (weight, bias) of each
    assert set(five) - set(tool.expected_release_keys(five, "mask")) == level4


def test_detectron2_checkpoints_are_named_as_such(tmp_path):
    # train_net.py's checkpoints ({'model': ..., 'iteration': ...}) and a bare state dict
    names = {"backbone.bottom_up.stem.conv1.weight": torch.zeros(2), "roi_heads.x": torch.ones(1)}
    for i, data in enumerate(({"model": names, "iteration": 99}, names)):
        path = tmp_path / "model_{}.pth".format(i)
        torch.save(data, str(path))
        with pytest.raises(CheckpointError, match="already a Detectron2 checkpoint") as e:
            tool.load_release_checkpoint(str(path))
        assert "pass it as MODEL.WEIGHTS" in str(e.value) and "'backbone.bottom_up" in str(e.value)


def _run_tool_script(*args):
    """The tool as a command, with Python's import log (-X importtime) on stderr."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    script = os.path.join(ROOT, "tools", "convert_panet_release.py")
    cmd = [sys.executable, "-X", "importtime", script] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_wrong_input_files_are_reported_before_torch_is_imported(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("step: 179999\nmodel: e2e_panet_R-50-FPN_2x_mask\n")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cases = {
        tmp_path / "nowhere.pth": "Release checkpoint '{}' does not exist.",
        text: "'{}' is a text file (it begins 'step: 179999'): expected a trained model of the "
        "PANet release",
        empty: "'{}' is an empty file: expected",
        tmp_path: "Release checkpoint '{}' is a folder",
    }
    archive = tmp_path / "PANet.zip"  # a download of a folder holding the .pth
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("PANet/model_step89999.pth", b"\x80\x02")
    cases[archive] = "'{}' is a zip archive (it holds 'PANet/model_step89999.pth'), not the file"
    os.mkfifo(tmp_path / "pipe.pth")  # (a read would wait for a writer)
    cases[tmp_path / "pipe.pth"] = "Release checkpoint '{}' is not a regular file."
    for path, expected in cases.items():
        out = _run_tool_script(path, tmp_path / "out.pth")
        errors = [line for line in out.stderr.splitlines() if not line.startswith("import time")]
        assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
        assert errors[0].startswith("ERROR: " + expected.format(path)), errors[0]
        imported = [line.split("|")[-1].strip() for line in out.stderr.splitlines()]
        assert "torch" not in imported and "detectron2" not in imported
    assert not (tmp_path / "out.pth").exists()
    # the same lines from main() (a script importing the tool)
    assert "is a text file" in error_exit(tool.main, [str(text), str(tmp_path / "o.pth")])
    # a real checkpoint goes on to torch (here: one that is not the release's)
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, str(plain))
    out = _run_tool_script(plain, tmp_path / "out.pth")
    assert out.returncode == 2 and "bottom-up path" in out.stderr.splitlines()[-1]
    assert "torch" in [line.split("|")[-1].strip() for line in out.stderr.splitlines()]


def test_wrong_outputs_are_reported_before_torch_is_imported(tmp_path):
    src, a_file = tmp_path / "release.pth", tmp_path / "notes.txt"
    _save_release(src, {"x": torch.zeros(1)})  # (not converted: refused before)
    a_file.write_text("x")
    link = tmp_path / "link.pth"
    link.symlink_to(src)
    cases = {
        tmp_path: "Output '{}' is a folder; give the .pth file to write.",
        a_file / "sub" / "o.pth": "Cannot write '{}': '%s' is a file, not a folder." % a_file,
        src: "Output '{}' is the input release checkpoint; give another file name.",
        link: "Output '{}' is the input release checkpoint; give another file name.",
        str(tmp_path / "newdir") + "/": "Output '{}' names a folder; give the .pth file to write",
    }
    if os.path.isdir("/proc"):
        cases["/proc/no_such_process/o.pth"] = (
            "Cannot write '{}': no file can be created in '/proc'"
        )
    if os.path.exists("/dev/full"):
        cases["/dev/full"] = "Output '{}' exists and is not a regular file; give a .pth file name."
    data = src.read_bytes()
    for path, expected in cases.items():
        out = _run_tool_script(src, path)
        errors = [line for line in out.stderr.splitlines() if not line.startswith("import time")]
        assert out.returncode == 2 and len(errors) == 1, out.stderr[-2000:]
        assert errors[0].startswith("ERROR: " + expected.format(path)), errors[0]
        assert "torch" not in [line.split("|")[-1].strip() for line in out.stderr.splitlines()]
        # the same from main()
        assert error_exit(tool.main, [str(src), str(path)]) == errors[0]
    assert src.read_bytes() == data and link.read_bytes() == data


class _FailingWrite(FileProxy):
    error = errno.ENOSPC

    def write(self, data):
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EIO])
def test_failed_write_keeps_the_existing_output(error, tmp_path, monkeypatch):
    src, out = tmp_path / "release.pth", tmp_path / "out.pth"
    _save_release(src, release_state("det"))
    out.write_bytes(b"the user's file")
    open_ = PathManager.open
    monkeypatch.setattr(_FailingWrite, "error", error)
    monkeypatch.setattr(PathManager, "open", lambda *a, **k: _FailingWrite(open_(*a, **k)))
    line = error_exit(tool.main, ["--no-model-check", str(src), str(out)])
    assert line.startswith("ERROR: Cannot write '{}': {}".format(out, os.strerror(error))), line
    assert out.read_bytes() == b"the user's file"
    assert sorted(os.listdir(tmp_path)) == ["out.pth", "release.pth"]  # no partial file left


def test_detect_variant_refuses_other_models():
    with pytest.raises(CheckpointError, match="bottom-up path"):
        tool.detect_variant({"backbone.bottom_up.stem.conv1.weight": torch.zeros(1)})
    state = release_state("det_2fc")
    state.update({k: v for k, v in release_state("mask").items() if k.startswith("Mask_")})
    with pytest.raises(CheckpointError, match="Unknown PANet release model"):
        tool.detect_variant(state)
    with pytest.raises(CheckpointError, match="not 'mask'"):
        tool.convert_release_state_dict(release_state("det"), "mask")


# ------------------------------------------------------------------------------------------------
# the model options of the release configs
# ------------------------------------------------------------------------------------------------
def test_release_configs_compute_what_the_release_computes():
    for v in VARIANTS:
        model, cfg = _model(v)
        assert list(cfg.MODEL.PIXEL_MEAN) == [102.9801, 115.9465, 122.7717]
        assert list(cfg.MODEL.PIXEL_STD) == [1.0, 1.0, 1.0] and cfg.INPUT.FORMAT == "BGR"
        assert cfg.MODEL.RESNETS.STRIDE_IN_1X1
        assert model.backbone.bottom_up.res3[0].conv1.stride == (2, 2)  # stride in the 1x1 conv
        poolers = [model.roi_heads.box_pooler] + (
            [model.roi_heads.mask_pooler] if v == "mask" else []
        )
        for pooler in poolers:  # Detectron's RoIAlign: no half-pixel offset, 2 x 2 samples a bin
            assert all(not p.aligned and p.sampling_ratio == 2 for p in pooler.level_poolers)
        for k in (3, 4, 5):
            for conv in (
                getattr(model.backbone, "bpa_down%d" % k),
                getattr(model.backbone, "bpa_out%d" % k),
            ):
                assert conv.bias is not None and isinstance(conv.norm, nn.GroupNorm)
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (1000, 1400)
        assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.5
    two_fc = _model("det_2fc")[0].roi_heads.box_head
    assert isinstance(two_fc.fc1.norm, nn.GroupNorm) and isinstance(two_fc.fc2.norm, nn.GroupNorm)
    det = panet_cfg(tool.RELEASE_CONFIGS["det"])
    assert (det.SOLVER.MAX_ITER, tuple(det.SOLVER.STEPS)) == (90000, (60000, 80000))
    mask = panet_cfg(tool.RELEASE_CONFIGS["mask"])
    assert (mask.SOLVER.MAX_ITER, tuple(mask.SOLVER.STEPS)) == (180000, (120000, 160000))


def test_pafpn_conv_bias_default_keeps_todays_layers():
    cfg = panet_cfg(opts=["MODEL.PAFPN.NORM", "GN", "MODEL.FPN.OUT_CHANNELS", 32])
    assert cfg.MODEL.PAFPN.CONV_BIAS is False
    backbone = build_model(cfg).backbone
    assert backbone.bpa_down3.bias is None  # a norm follows: no bias (Detectron2's rule)
    plain = build_model(panet_cfg(opts=["MODEL.FPN.OUT_CHANNELS", 32])).backbone
    assert plain.bpa_down3.bias is not None  # no norm: a bias, with or without the key
    bad = panet_cfg(opts=["MODEL.FPN.OUT_CHANNELS", 32])
    bad.MODEL.PAFPN.CONV_BIAS = "yes"  # (a LazyConfig or a Python caller; yacs refuses a str)
    with pytest.raises(ConfigError, match="MODEL.PAFPN.CONV_BIAS='yes'"):
        build_model(bad)


# ------------------------------------------------------------------------------------------------
# fine-tuning from a converted model on the generated dataset with another number of classes
# ------------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("single_thread")
def test_fine_tune_from_converted_model(tmp_path, caplog):
    from panet_d2.data import register_synthetic_dataset
    from panet_d2.engine import PANetTrainer

    root = str(tmp_path / "datasets")
    register_synthetic_dataset(
        "test_release_synth", root=root, splits={"train": {"num_images": 4, "seed": 1}}
    )
    src, dst = tmp_path / "release.pth", tmp_path / "converted.pth"
    _save_release(src, release_state("mask"))
    assert tool.main([str(src), str(dst)] + OPTS) == 0
    cfg = panet_cfg(
        tool.RELEASE_CONFIGS["mask"],
        opts=NARROW
        + [
            "MODEL.WEIGHTS", str(dst),
            "MODEL.ROI_HEADS.NUM_CLASSES", 3,
            "DATASETS.TRAIN", ("test_release_synth_train",),
            "DATASETS.TEST", (),
            "INPUT.MIN_SIZE_TRAIN", (96,),
            "INPUT.MAX_SIZE_TRAIN", 128,
            "INPUT.MASK_FORMAT", "bitmask",
            "DATALOADER.NUM_WORKERS", 0,
            "SOLVER.IMS_PER_BATCH", 2,
            "SOLVER.BASE_LR", 0.001,
            "SOLVER.MAX_ITER", 3,
            "SOLVER.WARMUP_ITERS", 0,
            "SOLVER.STEPS", (),
            "SOLVER.CHECKPOINT_PERIOD", 1000,
            "OUTPUT_DIR", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    trainer = PANetTrainer(cfg)
    with caplog.at_level(logging.WARNING):
        trainer.resume_or_load(resume=False)
    model = trainer.model
    converted = torch.load(str(dst), weights_only=True)["model"]
    # every tensor but the class-dependent predictors comes from the converted model
    for k, v in model.state_dict().items():
        if k.startswith(("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")):
            assert v.shape != converted[k].shape, k
        else:
            assert torch.equal(v, converted[k]), k
    log = caplog.text
    for layer in ("roi_heads.box_predictor.cls_score", "roi_heads.mask_head.predictor"):
        assert layer in log  # Detectron2 reports the skipped (re-initialised) layers
    trainer.train()
    assert trainer.iter == 3


def test_command_line_errors(tmp_path, capsys):
    src = tmp_path / "release.pth"
    _save_release(src, release_state("det"))
    out = str(tmp_path / "out.pth")
    line = error_exit(tool.main, ["--variant", "mask", str(src), out])  # wrong variant
    assert "is the release's 'det' model, not 'mask'" in line
    assert "MODEL.NO_SUCH_KEY" in error_exit(tool.main, [str(src), out, "MODEL.NO_SUCH_KEY", "1"])
    with pytest.raises(SystemExit):  # an option after the config options
        tool.main([str(src), out] + OPTS + ["--no-model-check"])
    assert "before the config options" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # options for a check not made (they were copied, unchecked)
        tool.main([str(src), out, "--no-model-check"] + OPTS)
    assert "--no-model-check: the config options are for the model check" in capsys.readouterr().err
    assert not os.path.exists(out)
    # flags after the file names: checked and used (the model check with the config options)
    with pytest.raises(SystemExit) as e:
        tool.main([str(src), out, "--variant", "foo"])
    assert e.value.code == 2 and "invalid choice: 'foo'" in capsys.readouterr().err
    line = error_exit(tool.main, [str(src), out, "--no-model-check", "--variant=mask"])
    assert "is the release's 'det' model, not 'mask'" in line
    assert tool.main([str(src), out, "--variant", "det"] + OPTS) == 0
    line = error_exit(tool.main, [str(src), out + "2", "--variant", "det"])  # full widths: checked
    assert "does not fit its config's model" in line and not os.path.exists(out + "2")
    assert tool.main([str(src), out, "--variant", "det", "--no-model-check"]) == 0


def test_release_config_scripts_and_traces():
    # Detectron2's export (scripting_with_instances, TracingAdapter) of the release's mask model,
    # Detectron's anchors included, equal to eager (the check of tests/export/test_torchscript.py)
    scripts_and_traces(tool.RELEASE_CONFIGS["mask"])
