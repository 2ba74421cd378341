# -*- coding: utf-8 -*-
"""
Shared helpers of the tests: the checkout's scripts as modules, generated datasets, small-model
options, configs, images, annotations, panoptic PNG decoding and a one-step train/infer check.
"""

import contextlib
import importlib.util
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from panopticapi.utils import rgb2id
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from detectron2.utils.file_io import PathManager

from panet_d2.config import MASK_RCNN_OPTS, load_config_file
from panet_d2.data import register_synthetic_dataset

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG_DIR = os.path.join(ROOT, "configs")

# ResNet-18 (BasicBlock; its res2 has 64 channels) in place of a config's ResNet-50/101.
R18 = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
# Narrow heads (FF's second conv has half the mask head's channels, as in the paper).
NARROW_HEADS = [
    "MODEL.FPN.OUT_CHANNELS",
    64,
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    128,
    "MODEL.ROI_MASK_HEAD.CONV_DIM",
    64,
    "MODEL.FF.CONV_DIMS",
    [64, 32],
]
# No score thresholds: every image has instances, and the panoptic merge has things and stuff.
NO_THRESHOLDS = [
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",
    0.0,
    "MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT",
    16,
]

ALL_OFF = list(MASK_RCNN_OPTS)  # every PANet component off: Detectron2's Mask R-CNN


def load_script(relpath, name):
    """The checkout's script ``relpath`` (e.g. "train_net.py", "tools/export_model.py") imported
    as a new module ``name`` (not put in sys.modules: each call runs the file again)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script_call(script, args, cwd, env):
    return dict(
        args=[sys.executable, os.path.join(ROOT, script)] + [str(a) for a in args],
        cwd=None if cwd is None else str(cwd),
        env=dict(os.environ, OMP_NUM_THREADS="1", **env),
        text=True,
    )


def run_script(script, *args, cwd=None, timeout=300, **env):
    """
    Runs ``script`` (a path in the checkout, e.g. "train_net.py", or an absolute path) with
    ``args`` in a new Python process with one OpenMP thread and the environment variables ``env``
    added; returns the finished process (its stdout and stderr as text).
    """
    return subprocess.run(
        **_script_call(script, args, cwd, env), capture_output=True, timeout=timeout
    )


def start_script(script, *args, cwd=None, **env):
    """:func:`run_script`'s process, started and not waited for (a Popen; read its output with
    ``communicate(timeout=...)``): several commands run side by side."""
    call = _script_call(script, args, cwd, env)
    return subprocess.Popen(
        call.pop("args"), **call, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@contextlib.contextmanager
def synthetic_datasets(tmp_path_factory, prefix, splits=None, folder="panet_d2_datasets"):
    """
    The generated dataset registered under ``prefix`` (``splits``: None for its default splits)
    in a new temporary folder, which is PANET_D2_DATASETS while the context lasts; yields the
    folder's path.
    """
    root = str(tmp_path_factory.mktemp(folder))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PANET_D2_DATASETS", root)
        register_synthetic_dataset(prefix, root=root, splits=splits)
        yield root


def read_png(path):
    """The pixels of a PNG file as an array (H, W) or (H, W, C), as stored."""
    with PathManager.open(path, "rb") as f:
        return np.asarray(Image.open(f))


def panoptic_ids(path):
    """The segment ids (H, W, int64) of a COCO panoptic PNG, decoded by panopticapi's rgb2id."""
    return rgb2id(np.asarray(Image.open(path).convert("RGB"), dtype=np.int64))


def panet_cfg(config="Base-PANet.yaml", small=True, opts=()):
    """A PANet config on the CPU; ``small`` shrinks sampling sizes (not the architecture)."""
    cfg = load_config_file(os.path.join(CONFIG_DIR, config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    if small:
        cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
        cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
        cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.merge_from_list(list(opts))
    return cfg


def random_image(h=128, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 255


def toy_instances(h=128, w=160, num_classes=80):
    """Two boxes with box-shaped masks."""
    boxes = torch.tensor([[10.0, 20.0, 90.0, 110.0], [50.0, 40.0, 150.0, 120.0]])
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor([1 % num_classes, 5 % num_classes])
    inst.gt_masks = BitMasks(masks)
    return inst


def train_step_and_infer(model, num_classes, sem_classes=None, h=64, w=96):
    """
    Trains ``model`` one step on a random (h, w) image with two toy instances (and, when
    ``sem_classes`` is given, a random semantic map with void rows), asserts that the loss is
    finite, backpropagates it, and returns the eval-mode output of another random image.
    """
    sample = {"image": random_image(h, w), "instances": toy_instances(h, w, num_classes)}
    if sem_classes is not None:
        sem = torch.randint(0, sem_classes, (h, w))
        sem[:8] = 255  # void
        sample["sem_seg"] = sem
    model.train()
    with EventStorage(0):
        losses = model([sample])
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    model.eval()
    with torch.no_grad():
        return model([{"image": random_image(h, w, seed=1)}])[0]


def error_exit(call, *args, **kwargs):
    """The one "ERROR: ..." line with which an entry point's ``call`` refuses its input (exit
    code 2, panet_d2.engine.cli.one_line_errors)."""
    with pytest.raises(SystemExit) as e:
        call(*args, **kwargs)
    assert e.value.code == 2, e.value.code
    line = str(e.value)
    assert line.startswith("ERROR: ") and "\n" not in line, line
    return line


def register_coco(name, json_file, image_root):
    """Register a COCO instances dataset under ``name``, replacing one of that name."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(json_file), str(image_root))
    return name


class FileProxy:
    """A file object that passes everything to ``f``; subclasses change what they test."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def generated_val_set(tmp_path_factory, prefix):
    """The generated dataset's 4 validation images, registered under ``prefix`` and written now."""
    with synthetic_datasets(
        tmp_path_factory, prefix, {"val": {"num_images": 4, "seed": 3}}
    ) as root:
        DatasetCatalog.get(prefix + "_val")
        yield root


@contextlib.contextmanager
def logged_messages(name="panet_d2"):
    """The messages logged under logger ``name`` in the block (its handlers may not propagate)."""
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
