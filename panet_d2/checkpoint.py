# -*- coding: utf-8 -*-
"""
:class:`PANetCheckpointer`: Detectron2's :class:`DetectionCheckpointer` with atomic saves and
clear errors for checkpoints that are missing, unreadable or do not fit the model.

The AFP warm start (a Mask R-CNN checkpoint's fc1 / mask conv1 copied to every level) needs no
checkpointer: the per-level layers do it in ``_load_from_state_dict``, so Detectron2's own
``DetectionCheckpointer`` (``DefaultPredictor``, ``lazyconfig_train_net.py``) does it as well.
"""

import logging
import os

import torch
from fvcore.common.checkpoint import _strip_prefix_if_present

from detectron2.checkpoint import DetectionCheckpointer

from .errors import CheckpointError

__all__ = ["PANetCheckpointer"]

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


class PANetCheckpointer(DetectionCheckpointer):
    """
    Drop-in replacement of :class:`DetectionCheckpointer` (same constructor and methods); see the
    module docstring. Partial files left by an interrupted save are removed when it is created.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.path_manager = _AtomicWrites(self.path_manager)
        if self.save_dir and self.save_to_disk and self.path_manager.isdir(self.save_dir):
            for name in self.path_manager.ls(self.save_dir):
                if name.endswith(PARTIAL_SUFFIX):
                    logger.info("Removing {} left by an interrupted save".format(name))
                    self.path_manager.rm(os.path.join(self.save_dir, name))

    def save(self, name: str, **kwargs) -> None:
        try:
            super().save(name, **kwargs)
        except OSError as e:
            raise CheckpointError(
                "Cannot save checkpoint {!r} in {!r}: {} (the previous checkpoint is "
                "intact).".format(name + ".pth", self.save_dir, e.strerror or e)
            ) from e

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(
                "Checkpoint {!r} does not exist (MODEL.WEIGHTS or the checkpoint given to load). "
                "Give a local .pth/.pkl file, a Detectron2 model-zoo URL, or '' to start from "
                "scratch.".format(path)
            )
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        try:
            loaded = super()._load_file(filename)
        except Exception as e:
            raise CheckpointError(
                "Cannot read checkpoint {!r}: {}: {}. Expected a checkpoint written by "
                "Detectron2 or panet_d2 (.pth) or a Detectron2 model-zoo .pkl file.".format(
                    filename, type(e).__name__, e
                )
            ) from e
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise CheckpointError(
                "Checkpoint {!r} holds no model state dict (found {}).".format(
                    filename, type(loaded).__name__
                )
            )
        return loaded

    def _torch_load(self, f):
        # Our own and Detectron2's .pth checkpoints hold optimizer/scheduler state besides tensors.
        return torch.load(f, map_location=torch.device("cpu"), weights_only=False)

    def _load_model(self, checkpoint):
        if not checkpoint.get("matching_heuristics", False):
            state_dict = checkpoint["model"]
            self._convert_ndarray_to_tensor(state_dict)
            _strip_prefix_if_present(state_dict, "module.")
            self._check_shapes(state_dict)
        return super()._load_model(checkpoint)

    def _check_shapes(self, state_dict):
        # Detectron2 skips a tensor of another shape with a warning; here only the class-dependent
        # predictors may differ (fine-tuning on another dataset), anything else is a wrong config.
        model_state = self.model.state_dict()
        bad = [
            (k, tuple(v.shape), tuple(model_state[k].shape))
            for k, v in state_dict.items()
            if k in model_state
            and tuple(v.shape) != tuple(model_state[k].shape)
            and not k.startswith(CLASS_DEPENDENT_PREFIXES)
        ]
        if bad:
            lines = "\n".join(
                "  {}: checkpoint {} vs model {}".format(k, list(c), list(m)) for k, c, m in bad
            )
            raise CheckpointError(
                "The checkpoint does not fit the model: {} tensor(s) have other shapes:\n{}\n"
                "Was it trained with another config (backbone depth, FPN channels, head sizes, "
                "MODEL.AFP / MODEL.FF settings)? Only the class-dependent predictor layers may "
                "differ.".format(len(bad), lines)
            )
