# -*- coding: utf-8 -*-
"""
:class:`PANetCheckpointer`: Detectron2's :class:`DetectionCheckpointer` that

* never runs code from a file: ``.pth`` / ``.pyth`` files are read with
  ``torch.load(weights_only=True)`` (tensors and plain values only; panet_d2's and Detectron2's
  checkpoints, optimizer, scheduler and random states included, need no allow-list), Detectron2's
  ``.pkl`` files (model zoo, Caffe2 conversions) with :class:`RestrictedUnpickler` (NumPy arrays,
  numbers, strings and containers only); a file holding anything else is refused with one line
  naming it and what it holds (:func:`read_checkpoint`);
* loads only weights that fit: by default (evaluation, export, demo, ``--resume``) every tensor
  of the model must come from the file (see :data:`NOT_REQUIRED_SUFFIXES`), and a class-count or
  architecture mismatch names the tensors and the config keys that would fit; with
  ``warm_start=True`` (the trainer loading MODEL.WEIGHTS) new layers are allowed and listed in the
  log, and the class-dependent predictors may differ (fine-tuning to other classes). A file that
  holds none of the model's tensors is refused in both cases;
* saves atomically (``<name>.pth.partial`` renamed over the file): a failed save (disk full,
  permission, quota) is one :class:`CheckpointError` naming the path and the cause, the previous
  checkpoint stays the one ``last_checkpoint`` names and no partial file is left; the weights of a
  diverged model (NaN / inf) are not saved (:class:`TrainingDivergedError`).

The AFP warm start (a Mask R-CNN checkpoint's fc1 / mask conv1 copied to every level) needs no
checkpointer: the per-level layers do it in ``_load_from_state_dict``, so Detectron2's own
``DetectionCheckpointer`` (``DefaultPredictor``, ``lazyconfig_train_net.py``) does it as well.
Importing panet_d2 changes nothing in Detectron2: its own checkpointer loads as it always did.
"""

import contextlib
import logging
import os
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils.file_io import PathManager

from .errors import CheckpointError, TrainingDivergedError

__all__ = ["PANetCheckpointer", "RestrictedUnpickler", "read_checkpoint"]

logger = logging.getLogger(__name__)

# Layers whose shapes depend on the number of classes; a checkpoint trained on another dataset may
# differ there (they are then newly initialised, with Detectron2's warning).
CLASS_DEPENDENT_PREFIXES = (
    "roi_heads.box_predictor.",
    "roi_heads.mask_head.predictor.",
    "sem_seg_head.predictor.",
)

# Suffix of the file a save writes before it is renamed over the checkpoint.
PARTIAL_SUFFIX = ".partial"


class _AtomicFile:
    """A file of ``path_manager`` written under ``<path>.partial`` and renamed on success."""

    def __init__(self, path_manager, path, mode):
        self._pm, self._path, self._tmp = path_manager, path, path + PARTIAL_SUFFIX
        self._f = path_manager.open(self._tmp, mode)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self._f.close()  # a full disk may fail here, flushing the last bytes
        except OSError:
            if exc_type is None:
                self._pm.rm(self._tmp)
                raise
        if exc_type is not None:
            self._pm.rm(self._tmp)  # the previous checkpoint stays as it was
            return False
        if "://" not in self._path:  # local: an atomic rename over the old file
            os.replace(self._tmp, self._path)
            return False
        try:  # iopath's mv refuses an existing destination (returns False)
            moved = self._pm.mv(self._tmp, self._path)
        except NotImplementedError:
            moved = False
        if not moved:  # a storage without rename over a file: copy, then remove
            self._pm.copy(self._tmp, self._path, overwrite=True)
            self._pm.rm(self._tmp)
        return False


class _AtomicWrites:
    """
    Wraps a checkpointer's ``path_manager`` so that fvcore's own ``Checkpointer.save`` and
    ``tag_last_checkpoint`` write atomically (fvcore has no hook for it); reads pass through.
    """

    def __init__(self, path_manager):
        self._pm = path_manager

    def __getattr__(self, name):
        return getattr(self._pm, name)

    def open(self, path, mode="r", **kwargs):
        if "w" in mode:
            return _AtomicFile(self._pm, path, mode)
        return self._pm.open(path, mode, **kwargs)


# Tensors of the model that a file need not hold: a counter that inference does not use, and the
# pixel normalisation that the config sets (Detectron2 ignores them missing as well). Everything
# else, FrozenBatchNorm / BatchNorm statistics included, must come from the file.
NOT_REQUIRED_SUFFIXES = ("num_batches_tracked", "pixel_mean", "pixel_std")

# What a Detectron2 .pkl may hold: NumPy arrays and scalars, numbers, strings and containers.
_NUMPY_GLOBALS = {"multiarray": ("_reconstruct", "scalar"), "numeric": ("_frombuffer",)}
_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3
}
_SAFE_BUILTINS = {"set", "frozenset", "complex", "bytearray", "int", "float", "str", "bytes"}
_SAFE_BUILTINS |= {"list", "dict", "tuple", "bool", "slice"}


class RestrictedUnpickler(pickle.Unpickler):
    """
    An unpickler that rebuilds NumPy arrays and scalars, numbers, strings and containers only
    (what Detectron2's model-zoo and Caffe2 ``.pkl`` files hold); any other global (a function
    or class that unpickling would call) raises ``pickle.UnpicklingError`` naming it.
    """

    def find_class(self, module, name):
        plain = module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS
        package, _, submodule = module.rpartition(".")
        numpy = package in ("numpy.core", "numpy._core") and name in _NUMPY_GLOBALS.get(
            submodule, ()
        )
        if numpy:  # NumPy 2 moved numpy.core to numpy._core (the old name warns)
            module = ("numpy._core." if hasattr(np, "_core") else "numpy.core.") + submodule
        if plain or numpy or (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError("refused global {}.{}".format(module, name))


def _refusal(path, e):
    # torch: "... Unsupported global: GLOBAL posix.system was not an allowed global ..."
    found = re.search(r"GLOBAL ([\w.]+)|refused global ([\w.]+)", str(e))
    what = next((g for g in found.groups() if g), None) if found else None
    holds = "the Python object {!r}".format(what) if what else "Python objects"
    return CheckpointError(
        "Checkpoint {!r} was not loaded: besides tensors and plain values it holds {}, which "
        "loading would call (it could run any code). panet_d2 loads tensors, NumPy arrays, "
        "numbers, strings and containers only: re-save the state dicts of a file you trust "
        "(e.g. torch.save({{'model': model.state_dict()}}, path)).".format(path, holds)
    )


def _read_error(path, e):
    detail = " ".join(str(e).split()) or type(e).__name__
    if len(detail) > 300:
        detail = detail[:300] + " ..."
    return CheckpointError(
        "Cannot read checkpoint {!r}: {}: {} (truncated or not a checkpoint?). Expected a .pth "
        "written by panet_d2 or Detectron2 (torch.save) or a Detectron2 model-zoo .pkl.".format(
            path, type(e).__name__, detail
        )
    )


def _torch_load(path):
    with PathManager.open(path, "rb") as f:
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)


def _pkl_load(path):
    with PathManager.open(path, "rb") as f:
        return RestrictedUnpickler(f, encoding="latin1").load()


def read_checkpoint(path):
    """
    Reads a checkpoint file without running code from it: a ``.pkl`` with
    :class:`RestrictedUnpickler`, anything else with ``torch.load(weights_only=True)``.

    Returns:
        the object in the file (for a panet_d2 / Detectron2 checkpoint, a dict with "model").

    Raises:
        CheckpointError: one line naming the file and what it holds (an object that loading
            would call), or why it cannot be read (missing, truncated, not a checkpoint).
    """
    try:
        return _pkl_load(path) if path.endswith(".pkl") else _torch_load(path)
    except pickle.UnpicklingError as e:
        if re.search(r"GLOBAL [\w.]+|refused global", str(e)):
            raise _refusal(path, e) from None
        raise _read_error(path, e) from None
    except Exception as e:
        raise _read_error(path, e) from None


def _os_error(e):
    """The OSError that caused ``e`` (torch.save wraps a failed write in a RuntimeError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _classes(key, shape):
    """(config key, number of classes) that a class-dependent tensor of ``shape`` fits."""
    n = shape[0] if shape else 0
    if key.startswith("roi_heads.box_predictor.cls_score."):
        return "MODEL.ROI_HEADS.NUM_CLASSES", n - 1
    if key.startswith("roi_heads.box_predictor.bbox_pred."):
        return ("MODEL.ROI_HEADS.NUM_CLASSES", n // 4) if n > 4 else (None, None)
    if key.startswith("roi_heads.mask_head.predictor."):
        return ("MODEL.ROI_HEADS.NUM_CLASSES", n) if n > 1 else (None, None)
    if key.startswith("sem_seg_head.predictor."):
        return "MODEL.SEM_SEG_HEAD.NUM_CLASSES", n
    return None, None


def _architecture_hints(missing, unexpected, model_keys, file_keys):
    """The config keys that would make the model fit the file."""
    hints = []

    def has(keys, part):
        return any(part in k for k in keys)

    if has(unexpected, ".per_level.") and not has(model_keys, ".per_level."):
        hints.append("the file has AFP per-level weights: set MODEL.AFP.ENABLED True")
    if any(".per_level." in k and k.replace(".per_level", "") in file_keys for k in missing):
        hints.append(
            "the file has single-level box fc1 / mask conv1 (trained without AFP): set "
            "MODEL.AFP.ENABLED False (AFP starts from them only when training)"
        )
    if has(missing, "fc_fusion.") and not has(file_keys, "fc_fusion."):
        hints.append("the file has no fully-connected fusion: set MODEL.FF.ENABLED False")
    if has(unexpected, "fc_fusion.") and not has(model_keys, "fc_fusion."):
        hints.append("the file has fully-connected fusion weights: set MODEL.FF.ENABLED True")
    if has(missing, "backbone.bpa_") and not has(file_keys, "backbone.bpa_"):
        hints.append(
            "the file has no bottom-up path augmentation: set MODEL.BACKBONE.NAME "
            "build_resnet_fpn_backbone"
        )
    if has(unexpected, "backbone.bpa_") and not has(model_keys, "backbone.bpa_"):
        hints.append(
            "the file has bottom-up path augmentation: set MODEL.BACKBONE.NAME "
            "build_resnet_pafpn_backbone"
        )
    if has(missing, "sem_seg_head.") and not has(file_keys, "sem_seg_head."):
        hints.append(
            "the file has no semantic segmentation head (an instance-segmentation checkpoint): "
            "use an instance config (MODEL.META_ARCHITECTURE GeneralizedRCNN), not a panoptic one"
        )
    if has(missing, "roi_heads.mask_head.") and not has(file_keys, "roi_heads.mask_head."):
        hints.append("the file has no mask head: set MODEL.MASK_ON False")
    return hints


def _names(keys, n=3):
    keys = sorted(keys)
    more = " and {} more".format(len(keys) - n) if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


class PANetCheckpointer(DetectionCheckpointer):
    """
    Drop-in replacement of :class:`DetectionCheckpointer` (same constructor and methods); see the
    module docstring. Partial files left by an interrupted save are removed when it is created.

    Args:
        warm_start (bool): False (default): every tensor of the model must come from the file
            loaded, and a path must be given. True: a warm start for training (MODEL.WEIGHTS):
            new layers and other class counts allowed, "" starts from scratch. Resuming
            (``resume_or_load(..., resume=True)`` with a checkpoint in ``save_dir``) is strict
            in both cases.
    """

    def __init__(
        self, model, save_dir="", *, save_to_disk=None, warm_start=False, **checkpointables
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.warm_start = warm_start
        self._loading = None
        self.path_manager = _AtomicWrites(self.path_manager)
        if self.save_dir and self.save_to_disk and self.path_manager.isdir(self.save_dir):
            for name in self.path_manager.ls(self.save_dir):
                if name.endswith(PARTIAL_SUFFIX):
                    logger.info("Removing {} left by an interrupted save".format(name))
                    self.path_manager.rm(os.path.join(self.save_dir, name))

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        self._check_finite(name)
        try:
            super().save(name, **kwargs)
        except (OSError, RuntimeError) as e:
            cause = _os_error(e)
            if cause is None:
                raise
            raise CheckpointError(
                "Cannot save checkpoint {!r}: {} (the previous checkpoint is intact{}).".format(
                    os.path.join(self.save_dir, name + ".pth"),
                    cause.strerror or cause,
                    self._last_named(),
                )
            ) from None

    def _last_named(self):
        last = self.get_checkpoint_file() if self.has_checkpoint() else ""
        return ": last_checkpoint names {!r}".format(os.path.basename(last)) if last else ""

    def _check_finite(self, name):
        bad = [
            k
            for k, v in self.model.state_dict().items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())
        ]
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else None
            raise TrainingDivergedError(
                "Not saving checkpoint {!r}: {} tensor(s) of the model hold NaN or inf ({}); "
                "the last checkpoint is {}.".format(
                    name + ".pth",
                    len(bad),
                    _names(bad),
                    repr(last) if last else "none",
                ),
                last_checkpoint=last,
            )

    @contextlib.contextmanager
    def _strict(self):
        warm_start, self.warm_start = self.warm_start, False
        try:
            yield
        finally:
            self.warm_start = warm_start

    def resume_or_load(self, path, *, resume=True):
        """fvcore's: the last checkpoint of ``save_dir`` when ``resume`` and there is one (every
        tensor from it), else ``path`` (model only; a warm start if ``warm_start``)."""
        if resume and self.has_checkpoint():
            with self._strict():
                return self.load(self.get_checkpoint_file())
        return self.load(path, checkpointables=[])

    def load(self, path, *args, **kwargs):
        if not path and not self.warm_start:
            raise CheckpointError(
                "No checkpoint given (MODEL.WEIGHTS, or train.init_checkpoint of a LazyConfig, is "
                "empty): evaluating, exporting or showing a randomly initialised model gives "
                "meaningless results. Give the checkpoint to use (e.g. MODEL.WEIGHTS "
                "output/model_final.pth)."
            )
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(
                "Checkpoint {!r} does not exist (MODEL.WEIGHTS or the checkpoint given to load). "
                "Give a local .pth/.pkl file, a Detectron2 model-zoo URL, or '' to start from "
                "scratch.".format(path)
            )
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            data = read_checkpoint(filename)
            if not isinstance(data, dict):
                raise CheckpointError(
                    "Checkpoint {!r} holds a {}, not a dict of arrays.".format(
                        filename, type(data).__name__
                    )
                )
            if "model" in data and "__author__" in data:  # Detectron2's model zoo
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                loaded = data
            else:  # Caffe2 / Detectron1 model zoo, as DetectionCheckpointer reads it
                blobs = data.get("blobs", data)
                blobs = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
                loaded = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        elif filename.endswith(".pyth"):  # pycls, as DetectionCheckpointer reads it
            data = read_checkpoint(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise CheckpointError(
                    "Cannot load .pyth file {!r}: pycls checkpoints hold 'model_state'.".format(
                        filename
                    )
                )
            state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            loaded = {"model": state, "__author__": "pycls", "matching_heuristics": True}
        else:  # DetectionCheckpointer's, reading with _torch_load (URL queries included)
            loaded = super()._load_file(filename)
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise CheckpointError(
                "Checkpoint {!r} holds no model state dict (found {}).".format(
                    filename, type(loaded).__name__
                )
            )
        return loaded

    def _torch_load(self, f):
        # tensors and plain values only: the project's own checkpoints (model, trainer,
        # optimizer, scheduler, random states) and Detectron2's need no allow-list
        return read_checkpoint(f)

    def _load_model(self, checkpoint):
        state_dict = checkpoint["model"]
        self._convert_ndarray_to_tensor(state_dict)
        if checkpoint.get("matching_heuristics", False):  # names of another code base
            state_dict = align_and_update_state_dicts(
                self.model.state_dict(),
                state_dict,
                c2_conversion=checkpoint.get("__author__", None) == "Caffe2",
            )
            checkpoint["model"] = state_dict
            checkpoint["matching_heuristics"] = False  # done: DetectionCheckpointer skips it
        consume_prefix_in_state_dict_if_present(state_dict, "module.")  # as fvcore does
        self._check_fit(state_dict)
        return super()._load_model(checkpoint)

    def _check_fit(self, state_dict):
        """
        Raises :class:`CheckpointError` when the file's tensors ``state_dict`` do not make the
        model: none of its tensors; a tensor of another shape (but the class-dependent predictors
        of a warm start); without ``warm_start``, any tensor of the model missing.
        """
        path = self._loading or "the checkpoint"
        model_state = self.model.state_dict()
        required = [k for k in model_state if not k.endswith(NOT_REQUIRED_SUFFIXES)]
        shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
        if required and not any(k in shapes for k in required):
            some = _names(shapes) if shapes else "nothing"
            raise CheckpointError(
                "Checkpoint {!r} holds none of the model's {} tensors (it holds {} tensor(s): "
                "{}): it is not a checkpoint of this model.".format(
                    path, len(required), len(shapes), some
                )
            )
        bad = [
            (k, shapes[k], tuple(model_state[k].shape))
            for k in required
            if k in shapes and shapes[k] != tuple(model_state[k].shape)
        ]
        classes = [b for b in bad if b[0].startswith(CLASS_DEPENDENT_PREFIXES)]
        others = [b for b in bad if not b[0].startswith(CLASS_DEPENDENT_PREFIXES)]
        missing = [k for k in required if k not in shapes]
        unexpected = [k for k in shapes if k not in model_state]
        hints = _architecture_hints(missing, unexpected, set(model_state), set(shapes))
        if others:
            advice = "; ".join(hints) or (
                "was it trained with another config (backbone depth, FPN channels, head sizes, "
                "MODEL.AFP / MODEL.FF settings)? Only the class-dependent predictors may differ, "
                "when training"
            )
            listed = "; ".join(
                "{}: checkpoint {} vs model {}".format(k, list(c), list(m))
                for k, c, m in others[:3]
            )
            listed += " and {} more".format(len(others) - 3) if len(others) > 3 else ""
            raise CheckpointError(
                "Checkpoint {!r} does not fit the model: {} tensor(s) have other shapes: {}: "
                "{}.".format(path, len(others), listed, advice)
            )
        if self.warm_start:
            return
        if classes:
            fits = OrderedDict()  # per config key, its first tensor (cls_score first)
            for k, c, m in classes:
                key, n_file = _classes(k, c)
                _, n_model = _classes(k, m)
                if key is not None and n_file != n_model:
                    fits.setdefault(key, (k, n_file, n_model))
            text = "; ".join(
                "{} has {} classes in the file, the config {} {}: set {} {}".format(
                    k, n_file, key, n_model, key, n_file
                )
                for key, (k, n_file, n_model) in fits.items()
            ) or "{} have other shapes ({})".format(_names([c[0] for c in classes]), classes[0])
            raise CheckpointError(
                "Checkpoint {!r} does not fit the model: {} ({} class-dependent tensor(s) "
                "differ: {}). Only training may start new predictors (fine-tuning to other "
                "classes).".format(path, text, len(classes), _names([c[0] for c in classes]))
            )
        if missing:
            raise CheckpointError(
                "Checkpoint {!r} does not fit the model: {} of its {} tensors are not in the file "
                "({}){}. Give the checkpoint of this model, or the config it was trained "
                "with.".format(
                    path,
                    len(missing),
                    len(required),
                    _names(missing),
                    ": " + "; ".join(hints) if hints else "",
                )
            )
