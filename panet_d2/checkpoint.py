# -*- coding: utf-8 -*-
"""
:class:`PANetCheckpointer`: Detectron2's :class:`DetectionCheckpointer` that reads files as data,
never code (:func:`read_checkpoint`), checks fvcore's report of what a file loaded (refusing
weights that do not fit, naming the config keys that would) and saves atomically. Why, and every
message: docs/reliability.md.
"""

import logging
import os
import pickle
import re

import numpy as np
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.utils.file_io import PathManager

from .errors import CheckpointError, TrainingDivergedError

__all__ = ["PANetCheckpointer", "RestrictedUnpickler", "read_checkpoint"]

logger = logging.getLogger(__name__)

# Tensors of the model a file need not hold: a counter inference does not use, the config's pixel
# normalisation. Everything else, BatchNorm statistics included, must come from the file.
NOT_REQUIRED_SUFFIXES = ("num_batches_tracked", "pixel_mean", "pixel_std")

# Class-dependent tensors (a warm start may start them new): key prefix -> (config key, the classes
# of a tensor of n rows, None where n says nothing).
_ROI, _SEM = "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.SEM_SEG_HEAD.NUM_CLASSES"
_CLASS_KEYS = {
    "roi_heads.box_predictor.cls_score.": (_ROI, lambda n: n - 1),
    "roi_heads.box_predictor.bbox_pred.": (_ROI, lambda n: n // 4 if n > 4 else None),
    "roi_heads.mask_head.predictor.": (_ROI, lambda n: n if n > 1 else None),
    "sem_seg_head.predictor.": (_SEM, lambda n: n),
}
CLASS_DEPENDENT_PREFIXES = tuple(_CLASS_KEYS)

# What mismatched keys mean: (where, key part, what the file has: what to set). "missing": a tensor
# of the model with that part is not in the file, which has none; "unexpected": the file has one,
# the model none; "single": a per-level tensor is missing, the file has its single-level version.
# fmt: off
_HINTS = (
    ("unexpected", ".per_level.", "AFP per-level weights: set MODEL.AFP.ENABLED True"),
    ("single", ".per_level.", "single-level box fc1 / mask conv1 (trained without AFP): set "
     "MODEL.AFP.ENABLED False (AFP starts from them only when training)"),
    ("missing", "fc_fusion.", "no fully-connected fusion: set MODEL.FF.ENABLED False"),
    ("unexpected", "fc_fusion.", "fully-connected fusion weights: set MODEL.FF.ENABLED True"),
    ("missing", "backbone.bpa_", "no bottom-up path augmentation: set MODEL.BACKBONE.NAME "
     "build_resnet_fpn_backbone"),
    ("unexpected", "backbone.bpa_", "bottom-up path augmentation: set MODEL.BACKBONE.NAME "
     "build_resnet_pafpn_backbone"),
    ("missing", "sem_seg_head.", "no semantic segmentation head (an instance-segmentation "
     "checkpoint): use an instance config (MODEL.META_ARCHITECTURE GeneralizedRCNN), not a "
     "panoptic one"),
    ("missing", "roi_heads.mask_head.", "no mask head: set MODEL.MASK_ON False"),
)
# fmt: on

# What a Detectron2 .pkl may hold: NumPy arrays and scalars, numbers, strings and containers.
_NUMPY_GLOBALS = {"multiarray": ("_reconstruct", "scalar"), "numeric": ("_frombuffer",)}
_SAFE_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}
_SAFE_GLOBALS.add(("_codecs", "encode"))  # bytes in a protocol-2 pickle written by Python 3
_SAFE_BUILTINS = {"set", "frozenset", "complex", "bytearray", "int", "float", "str", "bytes"}
_SAFE_BUILTINS |= {"list", "dict", "tuple", "bool", "slice"}

# Suffix of the file a save writes in the checkpoint's folder before renaming it over the file.
PARTIAL_SUFFIX = ".partial"


class RestrictedUnpickler(pickle.Unpickler):
    """
    An unpickler that rebuilds NumPy arrays and scalars, numbers, strings and containers only
    (what Detectron2's model-zoo and Caffe2 ``.pkl`` files hold); any other global (a function
    or class that unpickling would call) raises ``pickle.UnpicklingError`` naming it.
    """

    def find_class(self, module, name):
        package, _, submodule = module.rpartition(".")
        numpy = package in ("numpy.core", "numpy._core")
        numpy = numpy and name in _NUMPY_GLOBALS.get(submodule, ())
        if numpy:  # NumPy 2 moved numpy.core to numpy._core (the old name warns)
            module = ("numpy._core." if hasattr(np, "_core") else "numpy.core.") + submodule
        plain = module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS
        if plain or numpy or (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def read_checkpoint(path):
    """
    Returns the object in a checkpoint file, read as data, never code: a ``.pkl`` with
    :class:`RestrictedUnpickler`, anything else with ``torch.load(weights_only=True)``. Raises
    :class:`CheckpointError` (one line) naming what the file holds that loading would call, or
    why it cannot be read (missing, truncated, not a checkpoint).
    """
    try:
        with PathManager.open(path, "rb") as f:
            if path.endswith(".pkl"):
                return RestrictedUnpickler(f, encoding="latin1").load()
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    except Exception as e:
        # torch: "... Unsupported global: GLOBAL posix.system was not an allowed global ..."
        found = re.search(r"GLOBAL ([\w.]+)|refused global ([\w.]+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and found:
            raise CheckpointError(
                f"Checkpoint {path!r} was not loaded: besides tensors and plain values it holds "
                f"the Python object {found.group(1) or found.group(2)!r}, which loading would call "
                "(it could run any code). panet_d2 loads tensors, NumPy arrays, numbers, strings "
                "and containers only: re-save the state dicts of a file you trust (e.g. "
                "torch.save({'model': model.state_dict()}, path))."
            ) from None
        detail = " ".join(str(e).split()) or type(e).__name__
        detail = detail[:300] + " ..." if len(detail) > 300 else detail
        raise CheckpointError(
            f"Cannot read checkpoint {path!r}: {type(e).__name__}: {detail} (truncated or not a "
            "checkpoint?). Expected a .pth written by panet_d2 or Detectron2 (torch.save) or a "
            "Detectron2 model-zoo .pkl."
        ) from None


def _names(keys, n=3):
    """The first ``n`` of ``keys`` (sorted) and how many more."""
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _hints(missing, unexpected, model_keys, file_keys):
    """The hints of :data:`_HINTS` that hold: the config keys that would fit the file."""

    def has(keys, part):
        return any(part in k for k in keys)

    holds = {
        "missing": lambda p: has(missing, p) and not has(file_keys, p),
        "unexpected": lambda p: has(unexpected, p) and not has(model_keys, p),
        "single": lambda p: any(p in k and k.replace(p, ".") in file_keys for k in missing),
    }
    return ["the file has " + hint for where, part, hint in _HINTS if holds[where](part)]


def _class_mismatch(wrong):
    """What class-dependent tensors ``wrong`` [(key, file shape, model shape)] mean."""
    fits = {}  # per config key, its first tensor (cls_score first)
    for k, c, m in wrong:
        key, classes = next(v for p, v in _CLASS_KEYS.items() if k.startswith(p))
        n_file, n_model = (classes(s[0] if s else 0) for s in (c, m))
        if n_file is not None and n_file != n_model:
            fits.setdefault(key, (k, n_file, n_model))
    text = "; ".join(
        f"{k} has {n} classes in the file, the config {key} {m}: set {key} {n}"
        for key, (k, n, m) in fits.items()
    )
    return text or f"{_names(w[0] for w in wrong)} have other shapes ({wrong[0]})"


class PANetCheckpointer(DetectionCheckpointer):
    """
    Drop-in replacement of :class:`DetectionCheckpointer` (same constructor and methods). Partial
    files left by an interrupted save are removed when it is created.

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
        if self.save_dir and self.save_to_disk and self.path_manager.isdir(self.save_dir):
            for name in self.path_manager.ls(self.save_dir):
                if name.endswith(PARTIAL_SUFFIX):
                    logger.info(f"Removing {name} left by an interrupted save")
                    self.path_manager.rm(os.path.join(self.save_dir, name))

    def save(self, name: str, **kwargs) -> None:
        """fvcore's save, each file written by :meth:`_write`; refuses the weights of a diverged
        model, and a failed write is one :class:`CheckpointError`."""
        if not self.save_dir or not self.save_to_disk:
            return
        self._check_finite(name)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, name + ".pth")
        self.logger.info(f"Saving checkpoint to {path}")
        try:
            self._write(path, "wb", lambda f: torch.save(data, f))
            self.tag_last_checkpoint(name + ".pth")
        except (OSError, RuntimeError) as e:
            cause = e  # torch.save wraps a failed write in a RuntimeError
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            last = os.path.basename(self.get_checkpoint_file()) if self.has_checkpoint() else ""
            last = ": last_checkpoint names {!r}".format(last) if last else ""
            raise CheckpointError(
                f"Cannot save checkpoint {path!r}: {cause.strerror or cause} (the previous "
                f"checkpoint is intact{last})."
            ) from None

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """fvcore's, written by :meth:`_write`: ``last_checkpoint`` names the old or new file."""
        path = os.path.join(self.save_dir, "last_checkpoint")
        self._write(path, "w", lambda f: f.write(last_filename_basename))

    def _write(self, path, mode, write):
        """Calls ``write(f)`` on ``<path>.partial`` in the same folder, syncs it to the disk and
        renames it over ``path``; a failure removes it and leaves ``path`` as it was."""
        tmp = path + PARTIAL_SUFFIX
        try:
            with self.path_manager.open(tmp, mode) as f:
                write(f)
                if "://" not in path:  # a local file: its bytes on the disk before the rename
                    f.flush()
                    os.fsync(f.fileno())
            if "://" in path:  # another iopath storage, without a rename over a file
                self.path_manager.copy(tmp, path, overwrite=True)
                self.path_manager.rm(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            if self.path_manager.exists(tmp):
                self.path_manager.rm(tmp)
            raise

    def _check_finite(self, name):
        """Refuses to save the weights of a diverged model (NaN or inf)."""
        state = self.model.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else None
            raise TrainingDivergedError(
                f"Not saving checkpoint {name + '.pth'!r}: {len(bad)} tensor(s) of the model "
                f"hold NaN or inf ({_names(bad)}); the last checkpoint is "
                f"{repr(last) if last else 'none'}.",
                last_checkpoint=last,
            )

    def resume_or_load(self, path, *, resume=True):
        """fvcore's: the last checkpoint of ``save_dir`` when ``resume`` and there is one (every
        tensor from it), else ``path`` (model only; a warm start if ``warm_start``)."""
        if resume and self.has_checkpoint():
            warm_start, self.warm_start = self.warm_start, False
            try:
                return self.load(self.get_checkpoint_file())
            finally:
                self.warm_start = warm_start
        return self.load(path, checkpointables=[])

    def load(self, path, *args, **kwargs):
        """fvcore's, refusing at once an empty path (unless a warm start) or a missing file."""
        if not path and not self.warm_start:
            raise CheckpointError(
                "No checkpoint given (MODEL.WEIGHTS, or train.init_checkpoint of a LazyConfig, is "
                "empty): evaluating, exporting or showing a randomly initialised model gives "
                "meaningless results. Give the checkpoint to use (e.g. MODEL.WEIGHTS "
                "output/model_final.pth)."
            )
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(
                f"Checkpoint {path!r} does not exist (MODEL.WEIGHTS or the checkpoint given to "
                "load). Give a local .pth/.pkl file, a Detectron2 model-zoo URL, or '' to start "
                "from scratch."
            )
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_file(self, filename):
        """DetectionCheckpointer's formats, each read by :func:`read_checkpoint`."""
        if not filename.endswith((".pkl", ".pyth")):
            loaded = super()._load_file(filename)  # reads with _torch_load; URL queries too
        elif filename.endswith(".pyth"):  # pycls
            data = read_checkpoint(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise CheckpointError(
                    f"Cannot load .pyth file {filename!r}: pycls checkpoints hold 'model_state'."
                )
            state = data["model_state"]
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            loaded = {"model": state, "__author__": "pycls", "matching_heuristics": True}
        else:
            loaded = read_checkpoint(filename)
            if not isinstance(loaded, dict):
                raise CheckpointError(
                    f"Checkpoint {filename!r} holds a {type(loaded).__name__}, not a dict of "
                    "arrays."
                )
            if "model" in loaded and "__author__" in loaded:  # Detectron2's model zoo
                self.logger.info(f"Reading a file from '{loaded['__author__']}'")
            else:  # Caffe2 / Detectron1 model zoo
                blobs = loaded.get("blobs", loaded)
                blobs = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
                loaded = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise CheckpointError(
                f"Checkpoint {filename!r} holds no model state dict (found "
                f"{type(loaded).__name__})."
            )
        return loaded

    def _torch_load(self, f):
        return read_checkpoint(f)  # tensors and plain values only: no allow-list needed

    def _load_model(self, checkpoint):
        """
        Detectron2's loading, then :meth:`_check_fit` on its report; a refused file leaves the
        model as it was. The file's tensor names are noted first: the AFP layers take single-level
        tensors while loading (the AFP warm start), so the report alone does not show them.
        """
        state = checkpoint["model"]
        if checkpoint.get("matching_heuristics", False):  # another code base's names: ours first
            self._convert_ndarray_to_tensor(state)
            caffe2 = checkpoint.get("__author__") == "Caffe2"
            state = align_and_update_state_dicts(
                self.model.state_dict(), state, c2_conversion=caffe2
            )
            checkpoint.update(model=state, matching_heuristics=False)  # done: D2 skips it
        consume_prefix_in_state_dict_if_present(state, "module.")  # as fvcore does
        file_keys = set(state)
        before = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        incompatible = super()._load_model(checkpoint)
        try:
            self._check_fit(incompatible, file_keys)
        except CheckpointError:
            self.model.load_state_dict(before)
            raise
        return incompatible

    def _check_fit(self, incompatible, file_keys):
        """
        Raises :class:`CheckpointError` when the file (its tensor names ``file_keys``, fvcore's
        report ``incompatible``) does not make the model: none of its tensors; a tensor of another
        shape (but the class-dependent predictors of a warm start); without ``warm_start``, any
        tensor of the model missing.
        """
        path = self._loading or "the checkpoint"
        model_keys = list(self.model.state_dict())
        required = [k for k in model_keys if not k.endswith(NOT_REQUIRED_SUFFIXES)]
        if required and not file_keys.intersection(required):
            raise CheckpointError(
                f"Checkpoint {path!r} holds none of the model's {len(required)} tensors (it holds "
                f"{len(file_keys)} tensor(s): {_names(file_keys) or 'nothing'}): it is not a "
                "checkpoint of this model."
            )
        wrong = incompatible.incorrect_shapes
        wrong = [w for w in wrong if not w[0].endswith(NOT_REQUIRED_SUFFIXES)]
        classes = [w for w in wrong if w[0].startswith(CLASS_DEPENDENT_PREFIXES)]
        others = [w for w in wrong if not w[0].startswith(CLASS_DEPENDENT_PREFIXES)]
        missing = [k for k in required if k not in file_keys]
        hints = _hints(missing, incompatible.unexpected_keys, model_keys, file_keys)
        if others:
            listed = "; ".join(
                f"{k}: checkpoint {list(c)} vs model {list(m)}" for k, c, m in others[:3]
            )
            listed += f" and {len(others) - 3} more" if len(others) > 3 else ""
            advice = "; ".join(hints) or (
                "was it trained with another config (backbone depth, FPN channels, head sizes, "
                "MODEL.AFP / MODEL.FF settings)? Only the class-dependent predictors may differ, "
                "when training"
            )
            raise CheckpointError(
                f"Checkpoint {path!r} does not fit the model: {len(others)} tensor(s) have other "
                f"shapes: {listed}: {advice}."
            )
        if self.warm_start:
            return
        if classes:
            raise CheckpointError(
                f"Checkpoint {path!r} does not fit the model: {_class_mismatch(classes)} "
                f"({len(classes)} class-dependent tensor(s) differ: "
                f"{_names(c[0] for c in classes)}). Only training may start new predictors "
                "(fine-tuning to other classes)."
            )
        if missing:
            raise CheckpointError(
                f"Checkpoint {path!r} does not fit the model: {len(missing)} of its "
                f"{len(required)} tensors are not in the file ({_names(missing)})"
                f"{': ' + '; '.join(hints) if hints else ''}. Give the checkpoint of this model, "
                "or the config it was trained with."
            )
