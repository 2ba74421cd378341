# -*- coding: utf-8 -*-
"""
The trainer of panet_d2 (:class:`PANetTrainer`, used by ``train_net.py``) and its helpers.

:class:`PANetTrainer` is Detectron2's :class:`DefaultTrainer` with:

* :class:`PANetCheckpointer` instead of ``DetectionCheckpointer`` (AFP warm start, atomic saves,
  clear checkpoint errors);
* evaluators chosen by the test datasets' ``evaluator_type`` (:mod:`panet_d2.evaluation`) and
  test-time augmentation as in Detectron2's ``tools/train_net.py`` (:meth:`test_with_TTA`; with
  TEST.AUG.ENABLED it runs after training, results under "<key>_TTA");
* the dataset mapper of panoptic training: ``PanopticDatasetMapper`` when
  MODEL.META_ARCHITECTURE is "PanopticPANet" and the training dicts carry "pan_seg_file_name"
  but no "sem_seg_file_name" (the semantic target is then made from the panoptic PNG);
  Detectron2's ``DatasetMapper`` otherwise;
* clear errors (:class:`InputError`, one message saying what and where) for an unregistered
  dataset, a dataset whose files are missing or do not parse, a missing or unreadable image,
  and a checkpoint that does not exist, cannot be read or does not fit the model. They are
  raised before training starts wherever that is possible (a broken image in the middle of a
  dataset is found when the loader reaches it);
* exact resumption: the checkpoints also hold the random generator states (Python, NumPy,
  torch), the training sampler skips the samples the interrupted run already used, and the data
  loader seeds its workers from its own generator; so ``--resume`` continues the very same run
  (same data order, augmentations and RoI sampling: exact on one process with
  DATALOADER.NUM_WORKERS 0 when the images fall in one aspect-ratio group, as tested; otherwise
  the data stream still continues where it stopped). Plain Detectron2 restores the iteration,
  model, optimizer and LR schedule, but restarts the data stream and the random generators.
"""
import contextlib
import difflib
import itertools
import json
import logging
import os
import random
from collections import OrderedDict

import numpy as np
import torch
import torch.utils.data as torchdata

import detectron2.utils.comm as comm
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, HookBase, hooks
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, GeneralizedRCNNWithTTA

from .checkpoint import PANetCheckpointer
from .errors import CheckpointError as CheckpointShapeError
from .evaluation import build_evaluator, check_evaluator_type

__all__ = [
    "InputError",
    "DatasetError",
    "ImageLoadError",
    "CheckpointError",
    "PANetTrainer",
    "adapt_config_to_machine",
    "validate_datasets",
    "load_dataset_dicts",
    "load_checkpoint",
    "build_train_mapper",
    "MapperWithFileNames",
    "ResumableSampler",
    "ResumeStateHook",
    "get_rng_states",
    "set_rng_states",
    "preserved_rng_states",
    "clean_error_message",
]

logger = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------
class InputError(Exception):
    """
    An error in the inputs of a run (config file, dataset, image, checkpoint) whose message says
    what is wrong and where. ``train_net.py`` and ``demo.py`` print it without a traceback.
    """


class DatasetError(InputError, ValueError):
    """A dataset that is not registered, whose files are missing, or that does not load."""


class ImageLoadError(InputError, OSError):
    """An image (or its segmentation PNG) that is missing or cannot be read."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that does not exist, cannot be read, or does not fit the model."""


def clean_error_message(e):
    """
    The message of an exception, without the traceback that PyTorch's DataLoader puts into the
    message of an exception raised in a worker process.
    """
    msg = str(e).strip()
    if "Original Traceback" in msg:
        last = msg.splitlines()[-1]
        prefix = "{}.{}: ".format(type(e).__module__, type(e).__name__)
        msg = last[len(prefix) :] if last.startswith(prefix) else last
    return msg


class _ShortInputErrors(logging.Filter):
    """
    Logs an :class:`InputError` that stops training (Detectron2's "Exception during training:")
    as one line with its message, without the traceback.
    """

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, InputError):
            record.msg = "{} {}: {}".format(
                record.getMessage(), type(exc).__name__, clean_error_message(exc)
            )
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def _install_short_input_errors():
    train_loop_logger = logging.getLogger("detectron2.engine.train_loop")
    if not any(isinstance(f, _ShortInputErrors) for f in train_loop_logger.filters):
        train_loop_logger.addFilter(_ShortInputErrors())


# -------------------------------------------------------------------------------------------------
# Config
# -------------------------------------------------------------------------------------------------
def adapt_config_to_machine(cfg):
    """
    Make a (not frozen) config runnable on this machine: MODEL.DEVICE "cuda" falls back to "cpu"
    when CUDA is not available, and SOLVER.AMP.ENABLED (CUDA mixed precision, Detectron2's
    AMPTrainer) is switched off when training on the CPU.

    Returns:
        list[str]: what was changed (to be logged once the logger is set up).
    """
    notes = []
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        notes.append(
            "MODEL.DEVICE={!r} but CUDA is not available: running on the CPU.".format(
                cfg.MODEL.DEVICE
            )
        )
        cfg.MODEL.DEVICE = "cpu"
    if cfg.SOLVER.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        notes.append(
            "SOLVER.AMP.ENABLED needs CUDA (Detectron2's AMPTrainer); training in float32 on {}."
            .format(cfg.MODEL.DEVICE)
        )
        cfg.SOLVER.AMP.ENABLED = False
    return notes


# -------------------------------------------------------------------------------------------------
# Datasets
# -------------------------------------------------------------------------------------------------
# Metadata keys that name the files/directories of a dataset (Detectron2's builtin registrations).
_DATASET_PATH_KEYS = (
    "json_file",
    "image_root",
    "panoptic_json",
    "panoptic_root",
    "sem_seg_root",
    "image_dir",
    "gt_dir",
)


def _dataset_paths(name):
    meta = MetadataCatalog.get(name)
    out = []
    for key in _DATASET_PATH_KEYS:
        value = meta.get(key, None)
        if isinstance(value, str) and value:
            out.append((key, value))
    return out


def _is_local(path):
    return "://" not in path


def _missing_dataset_paths(name):
    return [(k, p) for k, p in _dataset_paths(name) if _is_local(p) and not os.path.exists(p)]


def check_dataset_registered(name, key):
    """Raise :class:`DatasetError` if dataset ``name`` (from config key ``key``) is unknown."""
    registered = list(DatasetCatalog.list())
    if name in registered:
        return
    close = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
    hint = " Did you mean: {}?".format(", ".join(repr(c) for c in close)) if close else ""
    raise DatasetError(
        "Dataset {!r} in {} is not registered.{} Register it first (e.g. "
        "detectron2.data.datasets.register_coco_instances in a module imported by train_net.py) "
        "or fix {} in the config. {} datasets are registered, e.g. {}.".format(
            name,
            key,
            hint,
            key,
            len(registered),
            ", ".join(sorted(n for n in registered if n.startswith("panet_synth"))[:6]),
        )
    )


def _describe_load_failure(name, key, error):
    what = "dataset {!r} ({})".format(name, key)
    missing = _missing_dataset_paths(name)
    if missing:
        return "Cannot load {}: {} (the loader failed with {}: {}).".format(
            what,
            "; ".join("its {} {!r} does not exist".format(k, p) for k, p in missing),
            type(error).__name__,
            error,
        )
    paths = dict(_dataset_paths(name))
    if isinstance(error, json.JSONDecodeError):
        files = [paths[k] for k in ("json_file", "panoptic_json") if k in paths]
        where = " or ".join(repr(f) for f in files) if files else "its annotation file"
        return "Cannot load {}: the annotation file {} is not valid JSON: {}.".format(
            what, where, error
        )
    listing = ", ".join("{}={!r}".format(k, p) for k, p in paths.items())
    return "Cannot load {}: {}: {}.{}".format(
        what, type(error).__name__, error, " Its files: " + listing + "." if listing else ""
    )


def load_dataset_dicts(names, key, **kwargs):
    """
    :func:`detectron2.data.get_detection_dataset_dicts` with clear errors.

    Args:
        names (list[str]): dataset names.
        key (str): the config key they come from, for the messages ("DATASETS.TRAIN").
        kwargs: passed to ``get_detection_dataset_dicts``.

    Raises:
        DatasetError: a dataset is not registered, its files are missing or do not parse, or it
            cannot be loaded; the message names the dataset and the file or directory.
        ImageLoadError: the first image of a dataset does not exist.
    """
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        check_dataset_registered(name, key)
    try:
        dicts = get_detection_dataset_dicts(names, **kwargs)
    except Exception as e:
        culprit = names[0]
        if len(names) > 1:  # find which one fails (only on this error path)
            culprit = None
            for name in names:
                try:
                    DatasetCatalog.get(name)
                except Exception:
                    culprit = name
                    break
        if culprit is None:
            raise DatasetError(
                "Cannot load the datasets {} ({}): {}: {}".format(names, key, type(e).__name__, e)
            ) from e
        raise DatasetError(_describe_load_failure(culprit, key, e)) from e

    if isinstance(dicts, list) and dicts:  # a wrong image folder: say so before training
        first = dicts[0].get("file_name")
        if isinstance(first, str) and _is_local(first) and not os.path.isfile(first):
            what = "dataset {!r}".format(names[0]) if len(names) == 1 else str(names)
            folder = os.path.dirname(first)
            if not os.path.isdir(folder):
                raise DatasetError(
                    "The image folder {!r} of {} ({}) does not exist (first image {!r}).".format(
                        folder, what, key, first
                    )
                )
            raise ImageLoadError(
                "Image file {!r} of {} ({}) does not exist.".format(first, what, key)
            )
    return dicts


def validate_datasets(cfg, train=True):
    """
    Checks, before anything is built, that the datasets of the config can be used:
    DATASETS.TRAIN are registered (when ``train``); DATASETS.TEST are registered, have a supported
    evaluator_type and load (files present, annotation files parse); TEST.AUG.ENABLED is only used
    with a GeneralizedRCNN model (the models of Detectron2's GeneralizedRCNNWithTTA).

    Raises:
        DatasetError or ImageLoadError.
    """
    if train:
        if not len(cfg.DATASETS.TRAIN):
            raise DatasetError("DATASETS.TRAIN is empty: nothing to train on.")
        for name in cfg.DATASETS.TRAIN:
            check_dataset_registered(name, "DATASETS.TRAIN")
    for name in cfg.DATASETS.TEST:
        check_dataset_registered(name, "DATASETS.TEST")
        try:
            check_evaluator_type(name)
        except ValueError as e:
            raise DatasetError(str(e)) from e
        load_dataset_dicts([name], "DATASETS.TEST", filter_empty=False)
    if cfg.TEST.AUG.ENABLED:
        try:
            arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        except KeyError:
            arch = None  # an unknown architecture: build_model says so
        if arch is not None and not (isinstance(arch, type) and issubclass(arch, GeneralizedRCNN)):
            raise InputError(
                "TEST.AUG.ENABLED=True: test-time augmentation (Detectron2's "
                "GeneralizedRCNNWithTTA) supports GeneralizedRCNN models only, not "
                "MODEL.META_ARCHITECTURE={!r}. Set TEST.AUG.ENABLED False.".format(
                    cfg.MODEL.META_ARCHITECTURE
                )
            )


# -------------------------------------------------------------------------------------------------
# Mappers
# -------------------------------------------------------------------------------------------------
_RECORD_FILE_KEYS = ("file_name", "sem_seg_file_name", "pan_seg_file_name")


class MapperWithFileNames:
    """
    Wraps a dataset mapper so that an error while mapping a record (typically reading its image,
    deep inside a data loader worker) is raised as :class:`ImageLoadError` naming the file.
    """

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except Exception as e:
            raise ImageLoadError(self._describe(dataset_dict, e)) from e

    @staticmethod
    def _describe(d, e):
        files = [(k, d[k]) for k in _RECORD_FILE_KEYS if isinstance(d.get(k), str)]
        image = d.get("file_name", "<record without file_name>")
        missing = [(k, p) for k, p in files if _is_local(p) and not os.path.isfile(p)]
        if missing:
            return "; ".join(
                "{} {!r} does not exist".format(
                    "Image file" if k == "file_name" else "Segmentation file ({})".format(k), p
                )
                for k, p in missing
            ) + (" (image {!r})".format(image) if missing[0][0] != "file_name" else "")
        return "Cannot read or prepare image {!r} (image_id {}): {}: {}".format(
            image, d.get("image_id", "?"), type(e).__name__, e
        )

    def __repr__(self):
        return "MapperWithFileNames({!r})".format(self.mapper)


def build_train_mapper(cfg, dataset_dicts):
    """
    The training mapper: panet_d2's ``PanopticDatasetMapper`` for MODEL.META_ARCHITECTURE
    "PanopticPANet" when the dicts carry "pan_seg_file_name" and no semantic PNG of their own
    (no "sem_seg_file_name", or one that is the panoptic PNG, as in coco_2017_*_panoptic_panet;
    decided on the first dict); Detectron2's ``DatasetMapper(cfg, True)`` otherwise (instance
    datasets, and panoptic datasets in Detectron2's "panoptic_separated" convention, which carry
    instance annotations and a semantic PNG).
    """
    first = dataset_dicts[0] if isinstance(dataset_dicts, list) and dataset_dicts else {}
    if (
        cfg.MODEL.META_ARCHITECTURE == "PanopticPANet"
        and "pan_seg_file_name" in first
        and first.get("sem_seg_file_name", first["pan_seg_file_name"]) == first["pan_seg_file_name"]
    ):
        from .data.panoptic_mapper import PanopticDatasetMapper

        return PanopticDatasetMapper(cfg, True)
    return DatasetMapper(cfg, True)


# -------------------------------------------------------------------------------------------------
# Exact resumption
# -------------------------------------------------------------------------------------------------
class ResumableSampler(torchdata.Sampler):
    """
    Wraps the (infinite) training sampler; its stream starts after ``start`` indices, set by
    :meth:`PANetTrainer.resume_or_load` to the number of samples the resumed run already used.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.start = 0

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.start, None)


def get_rng_states():
    """
    The states of Python's, NumPy's and PyTorch's (CPU and CUDA) global random generators, as
    tensors and Python scalars (loadable with ``torch.load(weights_only=True)``).
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    states = {
        "python": [py_version, torch.tensor(py_state, dtype=torch.int64), py_gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore states returned by :func:`get_rng_states`."""
    py_version, py_state, py_gauss = states["python"]
    random.setstate((py_version, tuple(int(x) for x in py_state.tolist()), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = states["numpy"]
    np.random.set_state(
        (np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss)
    )
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def preserved_rng_states():
    """Restores the global random generators on exit (evaluation does not change training)."""
    states = get_rng_states()
    try:
        yield
    finally:
        set_rng_states(states)


class ResumeStateHook(HookBase):
    """
    A checkpointable hook: every checkpoint holds the random generator states at the end of its
    iteration; when a run is resumed (one process), they are restored before the first step.
    """

    def __init__(self):
        self._pending = None

    def state_dict(self):
        return {"rng": get_rng_states()}

    def load_state_dict(self, state_dict):
        self._pending = state_dict.get("rng")

    def before_train(self):
        if self._pending is None:
            return
        states, self._pending = self._pending, None
        if comm.get_world_size() == 1:
            set_rng_states(states)
            logger.info("Restored the random generator states of the resumed checkpoint.")


# -------------------------------------------------------------------------------------------------
# Checkpoints
# -------------------------------------------------------------------------------------------------
def _checkpoint_error(path, e):
    if isinstance(e, CheckpointError):
        return e
    msg = str(e)
    if not isinstance(e, (FileNotFoundError, CheckpointShapeError)) and path not in msg:
        msg = "Cannot load checkpoint {!r}: {}: {}".format(path, type(e).__name__, msg)
    return CheckpointError(msg)


def load_checkpoint(checkpointer, weights, resume):
    """
    ``checkpointer.resume_or_load(weights, resume=resume)`` with every failure raised as
    :class:`CheckpointError` (message: what and which file).
    """
    path = weights
    if resume and checkpointer.has_checkpoint():
        path = checkpointer.get_checkpoint_file()
    try:
        return checkpointer.resume_or_load(weights, resume=resume)
    except Exception as e:
        raise _checkpoint_error(path, e) from e


# -------------------------------------------------------------------------------------------------
# Trainer
# -------------------------------------------------------------------------------------------------
class PANetTrainer(DefaultTrainer):
    """
    Detectron2's :class:`DefaultTrainer` for panet_d2 (see the module docstring).
    """

    def __init__(self, cfg):
        validate_datasets(cfg, train=True)
        _install_short_input_errors()
        super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ created a DetectionCheckpointer just before calling build_hooks:
        # replace it first, so that PeriodicCheckpointer (and resume_or_load) use ours.
        old = self.checkpointer
        self.checkpointer = PANetCheckpointer(
            old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables
        )
        ret = [ResumeStateHook()] + super().build_hooks()
        if self.cfg.TEST.AUG.ENABLED:
            # After training, evaluate once more with test-time augmentation, as Detectron2's
            # tools/train_net.py does; placed before PeriodicWriter, which writes and closes the
            # writers after training, so that the "*_TTA" metrics also reach metrics.json.
            def test_with_TTA_and_save_results():
                self._last_tta_results = self.test_with_TTA(self.cfg, self.model)
                return self._last_tta_results

            at = len(ret) - 1 if isinstance(ret[-1], hooks.PeriodicWriter) else len(ret)
            ret.insert(at, hooks.EvalHook(0, test_with_TTA_and_save_results))
        return ret

    def resume_or_load(self, resume=True):
        load_checkpoint(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume)
        if resume and self.checkpointer.has_checkpoint():
            # the checkpoint stores the iteration that just finished: start at the next one
            self.start_iter = self.iter + 1
        sampler = getattr(self.data_loader, "panet_resumable_sampler", None)
        if sampler is not None and self.start_iter > 0:
            per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            sampler.start = self.start_iter * per_rank
            logger.info(
                "Resuming at iteration {}: the training sampler skips the {} samples already "
                "used.".format(self.start_iter, sampler.start)
            )

    def train(self):
        """
        Run training.

        Returns:
            OrderedDict of the results of the last evaluation (with the "*_TTA" results of
            test-time augmentation when TEST.AUG.ENABLED), or None without evaluation.
        """
        results = super().train()
        if results is None:
            results = getattr(self, "_last_eval_results", None)
        tta = getattr(self, "_last_tta_results", None)
        if tta:
            results = OrderedDict(results or {})
            results.update(tta)
        return results

    @classmethod
    def build_train_loader(cls, cfg):
        dicts = load_dataset_dicts(
            cfg.DATASETS.TRAIN,
            "DATASETS.TRAIN",
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        mapper = MapperWithFileNames(build_train_mapper(cfg, dicts))
        kwargs = build_detection_train_loader.from_config(cfg, mapper, dataset=dicts)
        sampler = kwargs.get("sampler")
        if sampler is not None:
            sampler = kwargs["sampler"] = ResumableSampler(sampler)
        # The torch DataLoader draws the base seed of its workers when its iterator is created,
        # lazily at the first step; give it its own generator so that this draw does not shift
        # the global torch generator (and a resumed run continues the same random stream).
        seed = cfg.SEED if cfg.SEED >= 0 else int(torch.randint(2**31 - 1, ()).item())
        kwargs["seed"] = seed + comm.get_rank()
        loader = build_detection_train_loader(**kwargs)
        loader.panet_resumable_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name)
        proposal_files = None
        if cfg.MODEL.LOAD_PROPOSALS:
            tests = list(cfg.DATASETS.TEST)
            proposal_files = [cfg.DATASETS.PROPOSAL_FILES_TEST[tests.index(n)] for n in names]
        dicts = load_dataset_dicts(
            names, "DATASETS.TEST", filter_empty=False, proposal_files=proposal_files
        )
        return build_detection_test_loader(
            dicts,
            mapper=MapperWithFileNames(DatasetMapper(cfg, False)),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # evaluation draws from the global generators (data loader seeds): keep training's stream
        with preserved_rng_states():
            return super().test(cfg, model, evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluation with test-time augmentation, as in Detectron2's tools/train_net.py."""
        logger = logging.getLogger("detectron2.trainer")
        # In the end of training, run an evaluation with TTA. Only supports some R-CNN models.
        logger.info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
            )
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        res = OrderedDict({k + "_TTA": v for k, v in res.items()})
        return res
