# -*- coding: utf-8 -*-
"""
:class:`PANetCheckpointer`: Detectron2's :class:`DetectionCheckpointer` with

* the warm start of adaptive feature pooling: a Detectron2 Mask R-CNN / Panoptic FPN checkpoint
  initialises every level's fc1 / mask conv1 from its single fc1 / conv1, and the log lists
  exactly which tensors were copied, replicated per level and newly initialised;
* clear errors for a checkpoint that does not exist, cannot be read, or whose shapes do not fit
  the model (only the class-dependent predictor layers may differ, for fine-tuning on another
  dataset, as Detectron2 allows);
* atomic writes: a checkpoint (and the ``last_checkpoint`` tag) is written to a temporary file and
  renamed, so an interrupted save never leaves a truncated file behind.
"""
import logging
import os
import tempfile

import torch
from fvcore.common.checkpoint import _strip_prefix_if_present

from detectron2.checkpoint import DetectionCheckpointer

from .adaptive_feature_pooling import expand_single_level_weights

__all__ = ["PANetCheckpointer", "CheckpointShapeError"]

logger = logging.getLogger(__name__)

# Layers whose shapes depend on the number of classes; a checkpoint trained on another dataset may
# differ there (they are then newly initialised, with a warning, as in Detectron2).
CLASS_DEPENDENT_PREFIXES = (
    "roi_heads.box_predictor.",
    "roi_heads.mask_head.predictor.",
    "sem_seg_head.predictor.",
)


class CheckpointShapeError(ValueError):
    """A checkpoint tensor whose shape does not fit the model."""


def _atomic_write(path: str, write_fn, mode: str = "wb"):
    """Write a file through ``write_fn(file)`` into a temporary file, then rename it over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class PANetCheckpointer(DetectionCheckpointer):
    """
    Drop-in replacement of :class:`DetectionCheckpointer` (same constructor and methods); see the
    module docstring.
    """

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                "Checkpoint {!r} does not exist (MODEL.WEIGHTS or the checkpoint given to load). "
                "Give a local .pth/.pkl file, a Detectron2 model-zoo URL, or '' to start from "
                "scratch.".format(path)
            )
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        try:
            loaded = super()._load_file(filename)
        except Exception as e:
            raise RuntimeError(
                "Cannot read checkpoint {!r}: {}: {}. Expected a checkpoint written by "
                "Detectron2 or panet_d2 (.pth) or a Detectron2 model-zoo .pkl file.".format(
                    filename, type(e).__name__, e
                )
            ) from e
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise RuntimeError(
                "Checkpoint {!r} holds no model state dict (found {}).".format(
                    filename, type(loaded).__name__
                )
            )
        return loaded

    def _torch_load(self, f):
        # Our own and Detectron2's .pth checkpoints hold optimizer/scheduler state besides tensors.
        return torch.load(f, map_location=torch.device("cpu"), weights_only=False)

    def _load_model(self, checkpoint):
        state_dict = checkpoint["model"]
        if not checkpoint.get("matching_heuristics", False):
            self._convert_ndarray_to_tensor(state_dict)
            _strip_prefix_if_present(state_dict, "module.")
            replicated = expand_single_level_weights(self.model, state_dict)
            self._check_shapes(state_dict)
        else:  # Caffe2-style names: Detectron2 renames them first; no per-level warm start
            replicated = []
        checkpoint_keys = set(state_dict.keys())
        incompatible = super()._load_model(checkpoint)
        self._log_warm_start(checkpoint_keys, replicated, incompatible)
        return incompatible

    def _check_shapes(self, state_dict):
        model_state = self.model.state_dict()
        bad = []
        for k, v in state_dict.items():
            if k in model_state and tuple(v.shape) != tuple(model_state[k].shape):
                if not k.startswith(CLASS_DEPENDENT_PREFIXES):
                    bad.append((k, tuple(v.shape), tuple(model_state[k].shape)))
        if bad:
            lines = "\n".join(
                "  {}: checkpoint {} vs model {}".format(k, list(c), list(m)) for k, c, m in bad
            )
            raise CheckpointShapeError(
                "The checkpoint does not fit the model: {} tensor(s) have other shapes:\n{}\n"
                "Was it trained with another config (backbone depth, FPN channels, head sizes, "
                "MODEL.AFP / MODEL.FF settings)? Only the class-dependent predictor layers may "
                "differ.".format(len(bad), lines)
            )

    def _log_warm_start(self, checkpoint_keys, replicated, incompatible):
        model_keys = set(self.model.state_dict().keys())
        missing = set(incompatible.missing_keys)
        skipped = {k for k, _, _ in incompatible.incorrect_shapes}
        loaded = (model_keys & checkpoint_keys) - missing - skipped
        copied = loaded - set(replicated)
        new = sorted(missing | skipped)
        logger.info(
            "Loaded {} of the model's {} tensors: {} copied, {} replicated per level; {} newly "
            "initialised; {} checkpoint tensors unused.".format(
                len(loaded),
                len(model_keys),
                len(copied),
                len(replicated),
                len(new),
                len(incompatible.unexpected_keys),
            )
        )
        if copied:
            logger.info("Copied: " + ", ".join(sorted(copied)))
        if replicated:
            logger.info("Replicated to every level (AFP warm start): " + ", ".join(sorted(replicated)))
        if new:
            logger.info("Newly initialised: " + ", ".join(new))
        self.last_load_summary = {
            "copied": sorted(copied),
            "replicated": sorted(replicated),
            "new": new,
            "unused": sorted(incompatible.unexpected_keys),
        }

    def save(self, name: str, **kwargs) -> None:
        """Like :meth:`Checkpointer.save`, but atomic: the file appears whole or not at all."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        os.makedirs(self.save_dir, exist_ok=True)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")
