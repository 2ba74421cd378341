# -*- coding: utf-8 -*-
"""
The project's error types and the checks that raise them before a run starts: one line naming
the bad key, value, dataset or file and what is allowed.
"""

import contextlib
import difflib
import inspect
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, PanopticFPN

__all__ = [
    "InputError",
    "ConfigError",
    "DatasetError",
    "ImageLoadError",
    "CheckpointError",
    "check_choice",
    "check_registered",
    "check_dataset_files",
    "check_files",
    "check_num_classes",
    "check_tta",
    "check_inputs",
    "loading_dataset",
    "clean_error_message",
    "OneLineInputErrors",
]


class InputError(Exception):
    """
    An error in the inputs of a run (config, dataset, image, checkpoint) whose message says what
    is wrong and where. ``train_net.py`` and ``demo.py`` print it as one line, without a traceback.
    """


class ConfigError(InputError, ValueError):
    """A config value that is not allowed; the message names the key, the value and the choices."""


class DatasetError(InputError, ValueError):
    """A dataset that is not registered, whose files are missing, or that does not load."""


class ImageLoadError(InputError, OSError):
    """An image (or its segmentation PNG) that is missing or cannot be read."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint that does not exist, cannot be read, or does not fit the model."""


def check_choice(key, value, allowed):
    """
    Returns ``value`` if it is one of ``allowed``; else raises :class:`ConfigError` naming the
    config key, the bad value and the allowed values.
    """
    if value not in allowed:
        raise ConfigError(
            "Invalid config value {}={!r}; allowed values are: {}.".format(
                key, value, ", ".join(repr(a) for a in allowed)
            )
        )
    return value


# Metadata keys that name a dataset's files or folders (Detectron2's builtin registrations).
_PATH_KEYS = ("json_file", "image_root", "panoptic_json", "panoptic_root", "sem_seg_root")
_PATH_KEYS += ("image_dir", "gt_dir")  # Cityscapes


def _local(path):
    return isinstance(path, str) and bool(path) and "://" not in path


def check_registered(name, key):
    """Raises :class:`DatasetError` if dataset ``name`` (of config ``key``) is not registered."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3, cutoff=0.6)
        hint = " Did you mean: {}?".format(", ".join(map(repr, close))) if close else ""
        raise DatasetError(
            "Dataset {!r} in {} is not registered.{} Register it (e.g. with Detectron2's "
            "register_coco_instances) in a module that train_net.py imports, or fix {}.".format(
                name, key, hint, key
            )
        )


def check_dataset_files(name, key):
    """Raises :class:`DatasetError` if a file or folder of ``name``'s metadata does not exist."""
    meta = MetadataCatalog.get(name)
    for k in _PATH_KEYS:
        path = meta.get(k, None)
        if _local(path) and not os.path.exists(path):
            raise DatasetError(
                "The {} {!r} of dataset {!r} ({}) does not exist.".format(k, path, name, key)
            )


def check_files(dicts, name, key):
    """
    Raises :class:`DatasetError` (missing folder) or :class:`ImageLoadError` naming the first
    image or segmentation PNG of the records ``dicts`` (of dataset(s) ``name``, config ``key``)
    that does not exist, and how many more are missing.
    """
    paths = (
        d.get(k) for d in dicts for k in ("file_name", "sem_seg_file_name", "pan_seg_file_name")
    )
    missing = [p for p in paths if _local(p) and not os.path.isfile(p)]
    if not missing:
        return
    what = "of dataset {!r} ({}) does not exist".format(name, key)
    more = " ({} files missing in all)".format(len(missing)) if len(missing) > 1 else ""
    if not os.path.isdir(os.path.dirname(missing[0])):
        raise DatasetError("The folder {!r} {}{}.".format(os.path.dirname(missing[0]), what, more))
    raise ImageLoadError("The file {!r} {}{}.".format(missing[0], what, more))


@contextlib.contextmanager
def loading_dataset(names, key):
    """Raises what fails inside the block (loading ``names``) as :class:`DatasetError`."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        metas = [MetadataCatalog.get(n) for n in names]
        files = ["{}={!r}".format(k, m.get(k)) for m in metas for k in _PATH_KEYS if m.get(k, "")]
        raise DatasetError(
            "Cannot load dataset {} ({}): {}: {}.{}".format(
                ", ".join(map(repr, names)),
                key,
                type(e).__name__,
                e,
                " Its files: " + ", ".join(files) + "." if files else "",
            )
        ) from e


def _meta_arch(cfg):
    try:
        return META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    except KeyError:
        return None  # build_model names an unknown architecture


def _label_space(meta):
    if meta.get("thing_dataset_id_to_contiguous_id", None) is None:
        return None
    if meta.get("stuff_dataset_id_to_contiguous_id", None) is None:
        return None
    from .data import PanopticLabelSpace  # here: the model imports this module, not data

    return PanopticLabelSpace.from_metadata(meta)


def _num_things(meta):
    """(number, what) of a dataset's thing classes, or None; a panoptic dataset's thing_classes
    may list every class (coco_2017_*_panoptic, cityscapes_fine_panoptic_*)."""
    space, classes = _label_space(meta), meta.get("thing_classes", None)
    num = space.num_things if space is not None else len(classes) if classes else None
    return None if num is None else (num, "{} thing classes".format(num))


def _num_sem_classes(meta):
    """(number, what) of a panoptic dataset's semantic classes: stuff + 1 ("things"), or None."""
    space = _label_space(meta)
    if space is None:
        return None
    return space.num_sem_classes, "{} stuff classes + 1 (things)".format(space.num_stuff)


def check_num_classes(cfg, datasets):
    """
    Checks MODEL.ROI_HEADS.NUM_CLASSES against the thing classes, and for a Panoptic FPN model
    (PanopticPANet) MODEL.SEM_SEG_HEAD.NUM_CLASSES against the stuff classes + 1, of every
    dataset in ``datasets`` (pairs of name and config key) whose metadata has them.

    Raises:
        ConfigError: naming the key, its value, the dataset and the right value.
    """
    arch = _meta_arch(cfg)
    if not (isinstance(arch, type) and issubclass(arch, GeneralizedRCNN)):
        return
    checks = [("ROI_HEADS", _num_things)]
    if issubclass(arch, PanopticFPN):
        checks.append(("SEM_SEG_HEAD", _num_sem_classes))
    for name, key in datasets:
        for head, classes_of in checks:
            cfg_key, value = "MODEL.{}.NUM_CLASSES".format(head), cfg.MODEL[head].NUM_CLASSES
            classes = classes_of(MetadataCatalog.get(name))
            if classes is not None and value != classes[0]:
                raise ConfigError(
                    "{}={} does not fit dataset {!r} ({}) with {}: set {} {}.".format(
                        cfg_key, value, name, key, classes[1], cfg_key, classes[0]
                    )
                )


def check_tta(cfg):
    """
    Raises :class:`ConfigError` if TEST.AUG.ENABLED is set for a model that Detectron2's
    ``GeneralizedRCNNWithTTA`` cannot run: it needs a GeneralizedRCNN whose ``inference`` takes
    ``detected_instances`` (PanopticFPN / PanopticPANet do not).
    """
    arch = _meta_arch(cfg)
    if not cfg.TEST.AUG.ENABLED or arch is None:
        return
    if not (
        isinstance(arch, type)
        and issubclass(arch, GeneralizedRCNN)
        and "detected_instances" in inspect.signature(arch.inference).parameters
    ):
        raise ConfigError(
            "TEST.AUG.ENABLED=True: test-time augmentation (Detectron2's GeneralizedRCNNWithTTA) "
            "runs instance models (GeneralizedRCNN) only, not MODEL.META_ARCHITECTURE={!r}. Set "
            "TEST.AUG.ENABLED False.".format(cfg.MODEL.META_ARCHITECTURE)
        )


def check_inputs(cfg, train=True):
    """
    The checks before a training (``train``) or evaluation run, each failing with one line that
    names the dataset, key, file or value: the datasets of DATASETS.TRAIN (when ``train``) and
    DATASETS.TEST are registered and their files exist; the test datasets have a supported
    evaluator_type and load, with all their image files; NUM_CLASSES fits every dataset
    (:func:`check_num_classes`); TEST.AUG.ENABLED only with a model that TTA runs.
    """
    from .evaluation import check_evaluator_type  # here: the model imports this module

    datasets = [(name, "DATASETS.TEST") for name in cfg.DATASETS.TEST]
    if train:
        if not len(cfg.DATASETS.TRAIN):
            raise DatasetError("DATASETS.TRAIN is empty: nothing to train on.")
        datasets = [(name, "DATASETS.TRAIN") for name in cfg.DATASETS.TRAIN] + datasets
    for name, key in datasets:
        check_registered(name, key)
        check_dataset_files(name, key)
    for name in cfg.DATASETS.TEST:
        check_evaluator_type(name)
        with loading_dataset([name], "DATASETS.TEST"):
            check_files(DatasetCatalog.get(name), name, "DATASETS.TEST")
    check_num_classes(cfg, datasets)
    check_tta(cfg)


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


class OneLineInputErrors(logging.Filter):
    """
    A filter for Detectron2's "detectron2.engine.train_loop" logger: an :class:`InputError` that
    stops training ("Exception during training:") is logged as one line, without the traceback.
    """

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, InputError):
            record.msg = "{} {}: {}".format(
                record.getMessage(), type(exc).__name__, clean_error_message(exc)
            )
            record.args, record.exc_info, record.exc_text = (), None, None
        return True
